"""Evaluation: accuracy, the metric a pruned classifier is judged by (:func:`accuracy`)."""

from prunekit.eval.accuracy import accuracy

__all__ = ["accuracy"]
