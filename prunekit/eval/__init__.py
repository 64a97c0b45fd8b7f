"""Evaluation: accuracy (:func:`accuracy`), what pruning did to a model, measured (:mod:`.report`), and
latency you can trust (:mod:`.latency`).
"""

from prunekit.eval.accuracy import accuracy

__all__ = ["accuracy"]
