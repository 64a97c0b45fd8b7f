"""Calibration: one batch adapter (:class:`Calibration`) and one statistics collector (:func:`collect`).

The layer-wise runner for language models (:mod:`prunekit.llm.runner`) feeds the same per-layer
accumulators one decoder layer at a time, so that memory stays bounded on large models.
"""

from prunekit.calibration.batches import FORMS, Calibration, current_token_mask, next_token_loss
from prunekit.calibration.collect import STATISTICS, LayerStats, collect, im2col_rows, input_rows, output_rows

__all__ = [
    "Calibration",
    "FORMS",
    "LayerStats",
    "STATISTICS",
    "collect",
    "current_token_mask",
    "im2col_rows",
    "input_rows",
    "next_token_loss",
    "output_rows",
]
