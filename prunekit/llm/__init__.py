"""Post-training pruning of causal language models.

* :mod:`~prunekit.llm.runner`: one calibration runner, layer by layer, for every method and family;
  :mod:`~prunekit.calibration.families`: where each family keeps its layers (shared with the
  structural engine's head / layer paths).
* :mod:`~prunekit.apply.solvers` and :mod:`~prunekit.criteria.formulas`: magnitude, Wanda, SparseGPT, OWL.
* :mod:`~prunekit.llm.prune`: unstructured and N:M pruning; :mod:`~prunekit.llm.structured`: physical
  removal of heads, MLP channels and layers with the same widths in every layer; :mod:`~prunekit.llm.flap`:
  FLAP's adaptive structure (per-layer widths from one global ranking), :mod:`~prunekit.llm.llm_pruner`:
  LLM-Pruner's gradient-scored coupled groups, :mod:`~prunekit.llm.removal`: the cuts they share.
* :mod:`~prunekit.llm.data`: calibration draws and perplexity with a recorded protocol;
  :mod:`~prunekit.llm.models`: real pretrained models from offline GGUF packages.
* :func:`recover` (:mod:`prunekit.llm.recover`): LoRA or distillation recovery, masks kept exact;
  :func:`evaluate_tasks` (:mod:`prunekit.llm.tasks`): zero-shot lm-eval tasks, two of them offline;
  :func:`throughput` (:mod:`prunekit.llm.throughput`): prefill / decode tokens per second, interleaved.
* :mod:`~prunekit.methods.llm`: registers the methods with :func:`prunekit.prune`.

Importing this package needs only torch; transformers is imported where a model is loaded.
"""

from prunekit.apply.solvers import MagnitudeSolver, Solver, SparseGPTSolver, WandaSolver
from prunekit.calibration.families import FAMILIES, Family, family_for
from prunekit.llm.data import CalibrationSet, Perplexity, calibration_batches, perplexity, token_hash
from prunekit.llm.flap import FlapResult, prune_flap
from prunekit.llm.llm_pruner import LLMPrunerResult, prune_llm_pruner
from prunekit.llm.memory import AllocationMeter
from prunekit.llm.models import OFFLINE_MODELS, cached_model_dir, load_causal_lm
from prunekit.llm.prune import OWL, LLMPruneResult, prune_causal_lm
from prunekit.llm.recover import RecoveryReport, recover  # the function shadows the module's name
from prunekit.llm.runner import LayerJob, LayerVisitor, RunSummary, run_layerwise
from prunekit.llm.streaming import prune_checkpoint
from prunekit.llm.structured import StructuredResult, prune_structured, remove_layers_
from prunekit.llm.tasks import TaskResults, evaluate_tasks
from prunekit.llm.throughput import Throughput, throughput  # likewise

__all__ = [
    "AllocationMeter",
    "CalibrationSet",
    "FAMILIES",
    "Family",
    "FlapResult",
    "LLMPruneResult",
    "LLMPrunerResult",
    "LayerJob",
    "LayerVisitor",
    "MagnitudeSolver",
    "OFFLINE_MODELS",
    "OWL",
    "Perplexity",
    "RecoveryReport",
    "RunSummary",
    "Solver",
    "SparseGPTSolver",
    "StructuredResult",
    "TaskResults",
    "Throughput",
    "WandaSolver",
    "cached_model_dir",
    "calibration_batches",
    "evaluate_tasks",
    "family_for",
    "load_causal_lm",
    "perplexity",
    "prune_causal_lm",
    "prune_checkpoint",
    "prune_flap",
    "prune_llm_pruner",
    "prune_structured",
    "recover",
    "remove_layers_",
    "run_layerwise",
    "throughput",
    "token_hash",
]
