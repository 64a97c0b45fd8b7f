"""Saving and loading whole models: the weights as safetensors (dense, or bitmask + values), a JSON record
of the architecture's source and the structural changes. Loading never unpickles and never runs code from
the directory: the architecture is rebuilt by a registered builder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from prunekit.apply.masks import apply_mask_, effective_state_dict, masked_parameters
from prunekit.errors import CheckpointError, ConfigError, UnknownNameError
from prunekit.models.builders import build_from_spec, source_of
from prunekit.serialization import (
    DENSE_FILE,
    FORMAT_VERSION,
    RECORD,
    SAVED_METADATA,
    SPARSE_FILE,
    atomic_write,
    export_sparse,
    load_state,
    make_folder,
    read_record,
    untie,
)
from prunekit.surgery import apply_structure_record, structure_record

__all__ = ["load_model", "save_model"]


#: the report file save_model writes beside the weights when given ``report=``
REPORT = "report.json"


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    sparse: bool = False,
    source: str | None = None,
    report: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (masks folded in) to ``directory``; :func:`load_model` rebuilds it.

    ``source`` is the registered spec that builds the architecture (defaults to the one recorded when the
    model was built by :func:`prunekit.models.build_model`). Without a source the weights are still saved,
    and :func:`load_model` needs the architecture passed in as ``model=``. ``extra`` adds JSON-able fields
    to the record (e.g. the example input shape). A folder that already holds a saved model is refused
    unless ``overwrite=True``; then the new files replace the old ones and the previous save's other files
    (its weights in the other format, its report) are removed, so that the folder holds one model. Returns
    ``directory``. Raises :class:`~prunekit.errors.CheckpointError` when ``model`` is not a module,
    ``directory`` is a file, or it holds a saved model and ``overwrite`` is False (nothing written then).
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save_model takes a torch.nn.Module, got {type(model).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file, not a folder; choose another folder for save_model (it writes "
            f"{DENSE_FILE} and {RECORD} into it)"
        )
    held = [n for n in (RECORD, DENSE_FILE, SPARSE_FILE, REPORT) if (directory / n).exists()]
    if held and not overwrite:
        raise CheckpointError(
            f"{directory} already holds a saved model ({', '.join(held)}); pass overwrite=True to replace it "
            "(on the command line: --overwrite), or choose another folder"
        )
    state = effective_state_dict(model)
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source or source_of(model),
        "weights": SPARSE_FILE if sparse else DENSE_FILE,
        "masked": [f"{m}.{p}" if m else p for m, _, p, _ in masked_parameters(model)],
        "structure": structure_record(model),
        "dtype": str(next((p.dtype for p in model.parameters()), torch.float32)).removeprefix("torch."),
        "module_versions": _module_versions(model),
        **(extra or {}),
    }
    make_folder(directory)
    if sparse:
        export_sparse(state, directory / SPARSE_FILE)
    else:
        tensors = untie(state)
        atomic_write(directory / DENSE_FILE, lambda tmp: save_file(tensors, tmp, metadata=SAVED_METADATA))
    if report is not None:
        atomic_write(directory / REPORT, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    atomic_write(directory / RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    # the record names the new weights: only now can the previous save's other files go
    for stale in [SPARSE_FILE if not sparse else DENSE_FILE] + ([REPORT] if report is None else []):
        (directory / stale).unlink(missing_ok=True)
    return directory


def load_model(
    directory: str | os.PathLike, *, model: nn.Module | None = None, attach_masks: bool = False
) -> nn.Module:
    """Load a model saved by :func:`save_model`, in eval mode.

    The architecture comes from ``model`` if given, else from the recorded source spec (only registered
    builders are used; no code is loaded from the directory). Weights load strictly. With
    ``attach_masks=True`` the masks of the pruned parameters are attached again (keep-mask = non-zero),
    so that fine-tuning keeps the zeros. A tensor the architecture computes through a parametrization of its
    own (``weight_norm``, ...) is saved as the tensor it computes and set back through the parametrization's
    ``right_inverse``: equal to within float rounding, not bit for bit. Raises
    :class:`~prunekit.errors.CheckpointError` when the record or weights are missing or corrupt, no
    architecture is known, or the weights do not fit it.
    """
    directory = Path(directory)
    record = read_record(directory)
    state = load_state(directory)
    if model is None:
        if not record.get("source"):
            raise CheckpointError(
                f"{directory} records no architecture source; pass the architecture: load_model(dir, model=MyNet())"
            )
        model = _build_recorded(directory, record["source"])
    if record.get("structure"):
        apply_structure_record(model, record["structure"])
    _load_weights(model, state, record.get("module_versions"), directory)
    if attach_masks:
        modules = dict(model.named_modules())
        for key in record.get("masked", []):
            mname, _, pname = key.rpartition(".")
            apply_mask_(modules[mname], getattr(modules[mname], pname) != 0, pname)
    return model.eval()


def _module_versions(model: nn.Module) -> dict[str, int]:
    """The ``_version`` of every module that states one (by prefix, "" for the root): what a state dict's
    ``_metadata`` carries and some modules' loading reads (torchvision's MNASNet refuses a state without it)."""
    meta = getattr(model.state_dict(), "_metadata", None) or {}
    return {k: int(v["version"]) for k, v in meta.items() if isinstance(v, dict) and v.get("version") is not None}


def _load_weights(model: nn.Module, state: dict[str, Any], versions: Any, directory: Path) -> None:
    """``model.load_state_dict(state, strict=True)``, with the module versions the save recorded (or, for a
    save that recorded none, the architecture's own). A tensor that ``model`` computes through a
    parametrization of its own (``weight_norm``, ...) is saved as the tensor it computes (``c1.weight``) and
    set here through the parametrization's ``right_inverse``. Raises CheckpointError when the weights do not fit."""
    from collections import OrderedDict

    from torch.nn.utils import parametrize

    if not isinstance(versions, dict):
        versions = _module_versions(model)
    computed: dict[str, tuple[nn.Module, str, Any]] = {}
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations.keys():
                key = f"{mname}.{pname}" if mname else pname
                if key in state:
                    computed[key] = (module, pname, state[key])
    ordered: OrderedDict[str, Any] = OrderedDict((k, v) for k, v in state.items() if k not in computed)
    ordered._metadata = OrderedDict((k, {"version": v}) for k, v in versions.items())  # type: ignore[attr-defined]
    try:
        result = model.load_state_dict(ordered, strict=not computed)
        if computed:
            fed = tuple(f"{k.rpartition('.')[0]}.parametrizations.{k.rpartition('.')[2]}." for k in computed)
            fed = tuple(f.removeprefix(".") for f in fed)
            missing = [k for k in result.missing_keys if not k.startswith(fed)]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"missing keys {missing}, unexpected keys {result.unexpected_keys}")
            with torch.no_grad():
                for module, pname, value in computed.values():
                    setattr(module, pname, value)  # the parametrization's right_inverse sets its own tensors
    except (RuntimeError, ValueError, KeyError, NotImplementedError) as e:
        raise CheckpointError(f"the weights in {directory} do not fit the architecture: {e}") from None


def _build_recorded(directory: Path, source: Any) -> nn.Module:
    """The architecture a saved record names, built by a registered builder (never from files on disk)."""
    advice = "pass the architecture: load_model(dir, model=MyNet())"
    if not isinstance(source, str) or not source.startswith(("torchvision:", "timm:", "prunekit:")):
        raise CheckpointError(
            f"{directory / RECORD} names the source {source!r}, which is not a registered builder "
            f"(torchvision:NAME, timm:NAME, prunekit:NAME); {advice}"
        )
    try:
        return build_from_spec(source, pretrained=False)
    except (UnknownNameError, ConfigError) as e:
        raise CheckpointError(
            f"{directory / RECORD} names the source {source!r}, which cannot be built ({e}); {advice}"
        ) from None
