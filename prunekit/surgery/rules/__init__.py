"""The tracer's rules, one module per family, each registering itself into
:mod:`prunekit.surgery.graph.registry` by decorator (``@op_rule("aten.view", ...)``, ``@module_rule(nn.LSTM)``).

- :mod:`~prunekit.surgery.rules.pointwise`: elementwise operations, pass-through, constants, writes;
- :mod:`~prunekit.surgery.rules.shape`: views, permutations, slicing, split / cat / stack;
- :mod:`~prunekit.surgery.rules.reduce`: reductions, pooling, resampling, padding;
- :mod:`~prunekit.surgery.rules.indexing`: advanced indexing, ``index_select``, gather / sort;
- :mod:`~prunekit.surgery.rules.linear`: convolution, matrix products, attention, embeddings;
- :mod:`~prunekit.surgery.rules.norm`: batch, layer and group norm, PReLU;
- :mod:`~prunekit.surgery.rules.modules`: modules traced as a whole (kept whole by ``ignore=``, recurrent layers).

Importing this package registers every rule.
"""

from prunekit.surgery.rules import indexing, linear, modules, norm, pointwise, reduce, shape

__all__ = ["indexing", "linear", "modules", "norm", "pointwise", "reduce", "shape"]
