"""Pruning a causal LM checkpoint larger than memory: one decoder layer at a time, from its safetensors files.

:func:`prune_checkpoint` builds the model without weights (``accelerate.init_empty_weights``), loads only the
tensors outside the decoder layers (embeddings, final norm, LM head), and runs the calibration runner
(:func:`prunekit.llm.runner.run_layerwise`) with a :class:`ShardStore`: before the runner works on decoder
layer ``i`` the store reads that layer's tensors from the checkpoint's shards (``safetensors.safe_open``, one
tensor at a time), and after it writes the pruned layer to its own output shard and frees it. Live at any
time: the tensors outside the layers, one decoder layer (two while one is written), and the calibration
set's hidden states. The output folder is a ``save_pretrained``-style checkpoint (sharded safetensors with an
index, the config and the tokenizer files) that ``transformers`` and :func:`prunekit.llm.load_causal_lm`
load; its weights equal those of the same pruning run on the model in memory.

Supported: the layer-wise methods (magnitude, Wanda, SparseGPT) with any pattern, allocation ``uniform`` or
the score-based and OWL allocations (their read-only first pass streams the layers too). Structured methods
change shapes and are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.calibration.families import family_for
from prunekit.errors import CheckpointError, ConfigError
from prunekit.llm.prune import LLMPruneResult, prune_causal_lm
from prunekit.llm.runner import LayerStore

__all__ = ["RECORD", "ShardStore", "checkpoint_tensors", "prune_checkpoint", "read_tensor"]

#: the layer-wise solvers :func:`prune_checkpoint` runs
STREAMING_METHODS = ("magnitude", "wanda", "sparsegpt")
INDEX = "model.safetensors.index.json"
#: the file, in a pruned checkpoint's folder, that records how it was pruned
RECORD = "prunekit_llm.json"


def checkpoint_tensors(directory: str | os.PathLike) -> dict[str, Path]:
    """Every tensor name of a safetensors checkpoint folder and the file that holds it (``model.safetensors``,
    or the shards its ``model.safetensors.index.json`` names). Raises
    :class:`~prunekit.errors.CheckpointError` when the folder has neither."""
    folder = Path(directory)
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map): {e}") from None
        return {k: folder / f for k, f in weight_map.items()}
    single = folder / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single for k in f.keys()}  # noqa: SIM118  (safe_open has keys(), not iteration)
    raise CheckpointError(
        f"{folder} holds no safetensors checkpoint (model.safetensors or {INDEX}); pass a folder written by "
        "save_pretrained (pickled .bin checkpoints are not read)"
    )


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HEADERS: dict[Path, tuple[tuple[int, int], int, dict[str, Any]]] = {}  # file -> (size, mtime), data start, header


def _header(file: Path) -> tuple[int, dict[str, Any]]:
    key = file.resolve()
    stat = key.stat()
    version = (stat.st_size, stat.st_mtime_ns)
    cached = _HEADERS.get(key)
    if cached is None or cached[0] != version:
        with open(key, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            cached = (version, 8 + size, json.loads(f.read(size)))
        _HEADERS[key] = cached
    return cached[1], cached[2]


def read_tensor(file: str | os.PathLike, name: str) -> Tensor:
    """Tensor ``name`` of the safetensors ``file``, read with plain file reads into memory of its own.

    ``safetensors.safe_open`` maps the whole file and copies the tensor out of the mapping, so each tensor
    read also counts the mapped pages it touched in the process's resident memory until the file is closed;
    reading the bytes directly keeps the peak at the tensor itself, which is the point of streaming. The
    format (an 8-byte little-endian header length, a JSON header of dtype, shape and byte offsets, then the
    data) is read, never executed. Raises :class:`~prunekit.errors.CheckpointError` for an unknown name or
    dtype."""
    path = Path(file)
    start, header = _header(path)
    entry = header.get(name)
    if entry is None:
        raise CheckpointError(f"{path} holds no tensor {name!r}")
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which prunekit does not read")
    begin, end = entry["data_offsets"]
    buf = bytearray(end - begin)
    with open(path, "rb") as f:
        f.seek(start + begin)
        f.readinto(buf)
    flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    return flat.reshape(entry["shape"])


class ShardStore(LayerStore):
    """Decoder layers read from a safetensors checkpoint and, pruned, written to one shard each.

    ``files``: tensor name -> file (:func:`checkpoint_tensors`); ``prefix``: the decoder layers' container
    (``model.layers``); ``out``: the folder the pruned layers go to (None: read-only); ``dtype``: the dtype
    the layers are computed and written in.
    """

    def __init__(self, files: dict[str, Path], prefix: str, out: Path | None, dtype: torch.dtype):
        self.files = files
        self.prefix = prefix
        self.out = out
        self.dtype = dtype
        self.written: dict[int, str] = {}  # layer index -> shard file name
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def _read(self, names: list[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for n in names:
            if n not in self.files:
                raise CheckpointError(f"the checkpoint has no tensor {n!r}, which the model's config needs")
            out[n] = read_tensor(self.files[n], n).to(self.dtype)
        return out

    def load(self, index: int, layer: nn.Module) -> None:
        """Read decoder layer ``index``'s parameters from the checkpoint into ``layer`` (on the CPU)."""
        from accelerate.utils import set_module_tensor_to_device

        names = [n for n, _ in layer.named_parameters()]
        tensors = self._read([f"{self.prefix}.{index}.{n}" for n in names])
        for n in names:
            set_module_tensor_to_device(layer, n, "cpu", value=tensors[f"{self.prefix}.{index}.{n}"])

    def release(self, index: int, layer: nn.Module, modified: bool) -> None:
        """Write the layer to its shard when it was modified and this store writes; then free its weights."""
        if modified and self.out is not None:
            from safetensors.torch import save_file

            name = f"model-layer-{index:05d}.safetensors"
            tensors = {f"{self.prefix}.{index}.{n}": p.detach().contiguous() for n, p in layer.named_parameters()}
            save_file(tensors, str(self.out / name), metadata={"format": "pt"})
            self.written[index] = name
            for k, t in tensors.items():
                self.weight_map[k] = name
                self.total_size += t.numel() * t.element_size()
        layer.to("meta")

    def write_rest(self) -> None:
        """Write every checkpoint tensor outside the decoder layers, unchanged (cast to ``dtype``), as the
        source names it, to one shard."""
        from safetensors.torch import save_file

        if self.out is None:
            return
        rest = [k for k in self.files if not k.startswith(f"{self.prefix}.")]
        tensors = {k: t.contiguous() for k, t in self._read(rest).items()}  # as large as the embeddings, once more
        name = "model-rest.safetensors"
        save_file(tensors, str(self.out / name), metadata={"format": "pt"})
        for k, t in tensors.items():
            self.weight_map[k] = name
            self.total_size += t.numel() * t.element_size()


def _skeleton(source: Path, files: dict[str, Path], dtype: torch.dtype) -> tuple[nn.Module, str]:
    """The model built from ``source``'s config without weights, with every tensor outside its decoder layers
    loaded; and the layers' container name."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunekit.surgery.hf import HF_CONFIG_KEY, apply_hf_structure

    config = AutoConfig.from_pretrained(str(source))
    record = getattr(config, HF_CONFIG_KEY, None)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if isinstance(record, dict) and record.get("error"):
            raise CheckpointError(f"{source}: the pruned model cannot be rebuilt from its config: {record['error']}")
        if record:  # widths the config cannot state (a structurally pruned checkpoint): reshaped on meta
            apply_hf_structure(model, record)
    prefix = family_for(model).layers
    params = dict(model.named_parameters())
    store = ShardStore(files, prefix, None, dtype)
    for k in [k for k in files if not k.startswith(f"{prefix}.") and k in params]:  # one tensor live at a time
        set_module_tensor_to_device(model, k, "cpu", value=store._read([k])[k])
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(f"{prefix}.")]
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint has no tensors for {missing[:4]} (outside the decoder layers); its names do "
            "not match the model's (a checkpoint saved under legacy names cannot be streamed: load it in memory)"
        )
    return model.eval(), prefix


def prune_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    method: str,
    *,
    sparsity: float | None = None,
    pattern: str | None = None,
    calibration: Any = None,
    allocation: str = "uniform",
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: bool | None = None,
    true_sequential: bool | None = None,
    merge_mib: float | None = None,
    spill_activations: bool | None = None,
    blocksize: int | None = None,
    percdamp: float | None = None,
    targets: Iterable[str] | None = None,
    record: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> LLMPruneResult:
    """Prune the causal LM checkpoint in folder ``source`` into folder ``out`` without loading it whole.

    ``method``: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"`` (Wanda: Sun et al. 2023; SparseGPT: Frantar &
    Alistarh 2023), ``sparsity`` / ``pattern`` / ``allocation`` as in :func:`prunekit.llm.prune_causal_lm`;
    ``calibration``: token batches ``[batch, seq_len]`` made with the checkpoint's tokenizer. ``dtype``: the
    dtype the layers are computed in and written in (float32 by default, as :func:`load_causal_lm` loads).
    ``out`` is written whole or not at all (a non-empty folder is refused unless ``overwrite``). Returns the
    :class:`~prunekit.llm.prune.LLMPruneResult`. Peak memory: the tensors outside the decoder layers, about
    two decoder layers and the calibration set's hidden states ``[tokens, hidden]`` (see the module docstring),
    plus, in true-sequential order, the intermediates every batch holds while it waits at a Linear (the
    largest in a temporary file with ``spill_activations``), and one merged batch's forward (estimated at most
    ``merge_mib`` MiB); ``true_sequential``, ``merge_mib``, ``spill_activations``, SparseGPT's ``blocksize`` and
    ``percdamp``, and ``targets`` (the decoder-layer Linears to prune, by full name) are
    :func:`prunekit.llm.prune_causal_lm`'s, with the same defaults, so the weights equal the in-memory run's.

    ``device``: where each decoder layer and the calibration activations are computed (e.g. ``"cuda"``; default:
    the CPU): a layer is read to the CPU, moved there, pruned, moved back and written, as
    :func:`prunekit.llm.prune_causal_lm` does with ``device=`` for a model kept on the CPU; the tensors outside
    the layers go there for the capture of the first layer's inputs only. The activations then stay on that
    device (nothing is spilled to a file there). Refused (:class:`~prunekit.errors.ConfigError`) before
    anything is read when this machine has no such device.

    ``record``: fields to keep with the pruned checkpoint, written with the run's own (pattern, allocation,
    notes, prune seconds; these take precedence over a field of the same name) to ``out/prunekit_llm.json``
    inside the folder before it takes the place of ``out``; None writes no record.

    Raises :class:`~prunekit.errors.ConfigError` for a method other than the layer-wise ones,
    :class:`~prunekit.errors.CheckpointError` for a folder without a safetensors checkpoint or with tensors
    the model's config does not name, and what :func:`prunekit.llm.prune_causal_lm` raises; ``source`` is
    never modified.
    """
    from prunekit.serialization import atomic_directory, check_output_directory

    if isinstance(method, str) and method.startswith("owl-") and method[4:] in STREAMING_METHODS:
        if allocation not in ("uniform", "owl"):
            raise ConfigError(
                f"{method} is {method[4:]} with allocation='owl'; it cannot take allocation={allocation!r}"
            )
        method, allocation = method[4:], "owl"  # the registered alias: the solver with OWL's allocation
    if method not in STREAMING_METHODS:
        raise ConfigError(
            f"prune_checkpoint streams the layer-wise methods {', '.join(STREAMING_METHODS)} (and their owl- "
            f"aliases); {method!r} is not one of them: load the model with load_causal_lm and use pk.prune"
        )
    if device is not None:
        from prunekit.calls import check_device

        check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype is a floating torch.dtype such as torch.float32 or torch.bfloat16, got {dtype!r}")
    src = Path(source)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not a saved language model (no config.json)")
    dst = Path(out)
    s_res, d_res = src.resolve(), dst.resolve()
    if d_res == s_res or s_res in d_res.parents or d_res in s_res.parents:
        raise CheckpointError(
            f"out {dst} is the source checkpoint {src}, inside it or a folder holding it (replacing it would delete "
            "the source); write the pruned model to a folder of its own"
        )
    check_output_directory(dst, overwrite=overwrite)
    files = checkpoint_tensors(src)
    model, prefix = _skeleton(src, files, dtype)
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        store = ShardStore(files, prefix, tmp, dtype)
        start = time.perf_counter()
        result = prune_causal_lm(
            model,
            method,
            sparsity=sparsity,
            pattern=pattern,
            calibration=calibration,
            allocation=allocation,
            progress=progress,
            store=store,
            true_sequential=true_sequential,
            merge_mib=merge_mib,
            spill_activations=spill_activations,
            blocksize=blocksize,
            percdamp=percdamp,
            targets=targets,
            device=device,
        )
        n_layers = len(family_for(model).layer_list(model))
        if sorted(store.written) != list(range(n_layers)):
            raise CheckpointError(f"only layers {sorted(store.written)} of {n_layers} were written")
        model.to("meta")  # the tensors outside the layers are written from the files: free the model's copies first
        store.write_rest()
        (tmp / INDEX).write_text(
            json.dumps({"metadata": {"total_size": store.total_size}, "weight_map": store.weight_map}, indent=2)
        )
        for f in src.iterdir():  # config, generation config, tokenizer files: everything but the weights
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != INDEX:
                shutil.copy2(f, tmp / f.name)
        config = json.loads((tmp / "config.json").read_text())
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / RECORD).unlink(missing_ok=True)  # a pruned source's record is not this run's
        if record is not None:
            mine = {"pattern": result.pattern, "allocation": result.allocation, "streamed": True}
            mine |= {"prune_seconds": time.perf_counter() - start, "notes": result.notes}
            (tmp / RECORD).write_text(json.dumps({**record, **mine}, indent=2, default=str))
    result.notes.append(f"streamed from {src} one decoder layer at a time; written to {dst}")
    return result
