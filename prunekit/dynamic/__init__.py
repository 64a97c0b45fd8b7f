"""Run-time (dynamic) pruning: the network decides per input what it computes.

- :func:`merge_tokens_` (ToMe) and :func:`prune_tokens_` (EViT): fewer tokens in later transformer blocks.
- :func:`skip_layers_`: a language model skips decoder layers per token, with a rule from calibration.
- :func:`restore_`: undo any of them; each also returns a context manager that restores on exit.
- :func:`add_fbs_` (FBS) and :func:`add_cgnet_` (CGNet): learned per-input channel gating for CNNs, trained
  with :class:`prunekit.train.Trainer` (``method="fbs"`` / ``"cgnet"``); :func:`count_macs` counts the MACs
  each input really used.

All patch the model in place (trailing ``_``) without touching its parameters: ``state_dict`` is unchanged.
"""

from prunekit.dynamic.depth import LayerRouter, LayerSkipping, calibrate_router, skip_layers_
from prunekit.dynamic.gating import GatedNetwork, MacsCount, add_cgnet_, add_fbs_, count_macs
from prunekit.dynamic.patching import Patch, find_patch, restore_
from prunekit.dynamic.token_reduction import TokenReduction, default_prune_layers, merge_tokens_, prune_tokens_

__all__ = [
    "GatedNetwork",
    "LayerRouter",
    "LayerSkipping",
    "MacsCount",
    "Patch",
    "TokenReduction",
    "add_cgnet_",
    "add_fbs_",
    "calibrate_router",
    "count_macs",
    "default_prune_layers",
    "find_patch",
    "merge_tokens_",
    "prune_tokens_",
    "restore_",
    "skip_layers_",
]
