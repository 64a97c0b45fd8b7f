"""Module rules: modules traced as a whole, whose inner operations are not looked at.

:func:`keep_whole` is the rule of the modules ``ignore=`` names (the tracer applies it by name);
:func:`rnn_rule` is registered for ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``, whose fused kernels hide how
hidden units flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from prunekit.surgery.graph.coupling import couple_consumer
from prunekit.surgery.graph.labels import axis_label, const_label
from prunekit.surgery.graph.registry import module_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__ = ["keep_whole", "rnn_rule"]


def keep_whole(tr: Tracer, name: str, mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """A module kept whole (named by ``ignore=``): its inputs and outputs keep their sizes."""
    for a in tree_flatten((args, kwargs))[0]:
        if isinstance(a, Tensor):
            tr.pin(tr.label(a))
    for o in tree_flatten(output)[0]:
        if isinstance(o, Tensor):
            tr.set_label(o, const_label(o.dim()))
    tr.notes.append(
        f"module '{name}' ({type(mod).__name__}) is ignored: kept whole, its inputs and outputs keep their sizes"
    )


def _rnn_data(x: Any) -> Tensor | None:
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return x.data
    return x if isinstance(x, Tensor) else None


@module_rule(nn.RNNBase)
def rnn_rule(tr: Tracer, name: str, mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """nn.RNN / nn.LSTM / nn.GRU (any depth, either direction). Hidden unit ``j`` is rows ``g*H + j`` of
    every gate in ``weight_ih`` / ``weight_hh`` / biases, column ``j`` of ``weight_hh``, columns ``d*H + j``
    of the next layer's ``weight_ih`` and index ``j`` (of each direction) of the outputs. All layers share
    ``hidden_size``, so unit ``j`` is one unit across layers and directions. The input features are the
    columns of the first layer's ``weight_ih``. An LSTM with ``proj_size`` is kept whole."""
    x = _rnn_data(args[0] if args else kwargs.get("input"))
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    outs = [o for o in tree_flatten(output)[0] if isinstance(o, Tensor)]
    gates = {"LSTM": 4, "GRU": 3}.get(getattr(mod, "mode", ""), 1)
    rnn = cast(nn.RNNBase, mod)  # the rule is registered for nn.RNNBase only
    nd = 2 if rnn.bidirectional else 1
    layers = int(rnn.num_layers)
    sfx = ["", "_reverse"][:nd]

    def atoms(pname: str, dim: int, *, producer: bool = False) -> np.ndarray | None:
        t = getattr(mod, pname, None)
        if not isinstance(t, Tensor):
            return None
        pv = tr.view_of(t)
        if pv is None or pv.dim_map() is None or pv.param.shape != t.shape:
            return None
        return tr.pdim(pv.key, pv.param, dim, producer=producer)

    hid = atoms("weight_hh_l0", 1, producer=True)
    if getattr(mod, "proj_size", 0) or hid is None or x is None:
        why = "it has proj_size" if getattr(mod, "proj_size", 0) else "its weights are not plain parameters"
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, Tensor):
                tr.pin(tr.label(a))
        for _pname, p in mod.named_parameters():
            if (pv := tr.view_of(p)) is not None:
                for d in range(p.dim()):
                    tr.pin(tr.pdim(pv.key, pv.param, d))
        for o in outs:
            tr.set_label(o, const_label(o.dim()))
        tr.notes.append(f"module '{name}' ({type(mod).__name__}) is kept whole: {why}")
        return
    rows = np.tile(hid, gates)  # row g*H + j of every gate matrix is unit j
    for layer in range(layers):
        for s in sfx:
            for pname, dim, unit in (
                (f"weight_ih_l{layer}{s}", 0, rows),
                (f"weight_hh_l{layer}{s}", 0, rows),
                (f"weight_hh_l{layer}{s}", 1, hid),
                (f"bias_ih_l{layer}{s}", 0, rows),
                (f"bias_hh_l{layer}{s}", 0, rows),
            ):
                a = atoms(pname, dim)
                if a is not None:
                    tr.union_pairs(a, unit)
            cols = atoms(f"weight_ih_l{layer}{s}", 1)
            if cols is None:
                continue
            if layer == 0:
                couple_consumer(tr, tr.label(x), x.dim() - 1, x.shape[-1], cols)
            else:
                tr.union_pairs(cols, np.tile(hid, nd))
    for h in tree_flatten(hx)[0]:  # initial states: their last axis is the hidden units
        if isinstance(h, Tensor):
            couple_consumer(tr, tr.label(h), h.dim() - 1, h.shape[-1], hid)
    for o in outs:
        tr.set_label(o, const_label(o.dim()))
    seq = _rnn_data(output[0] if isinstance(output, tuple) else output)
    states = [
        h
        for h in tree_flatten(output[1] if isinstance(output, tuple) and len(output) > 1 else ())[0]
        if isinstance(h, Tensor)
    ]
    tails: list[tuple[Tensor | None, np.ndarray]] = [(seq, np.tile(hid, nd)), *((h, hid) for h in states)]
    for tail, unit in tails:
        if isinstance(tail, Tensor) and tail.shape[-1] == unit.size:
            tr.set_label(tail, axis_label(tail.dim() - 1, tail.dim(), unit))
