"""The calibration runner: one decoder layer at a time, for every post-training method.

1. Capture: the model runs once per calibration batch with every decoder layer replaced by a recorder.
   The recorders keep the hidden states entering layer 0 and the exact extra arguments the model passes to
   each layer (attention mask, rotary embeddings, per-layer sliding-window masks), then stop the forward
   before the final norm and the LM head. No layer computes anything here.
2. For each layer in turn: hooks on its Linears feed their inputs to the visitor's statistics, the layer
   runs on every batch, the visitor solves (prunes) the layer, and the layer runs again with the pruned
   weights; those outputs are the next layer's inputs, so every layer is calibrated on the inputs it
   will really see.

A visitor that is ``sequential`` (true-sequential order, as the ``--true-sequential`` mode of the GPTQ and
SparseGPT reference code: Frantar et al. 2023, Frantar & Alistarh 2023) has each Linear calibrated on inputs
computed with the Linears called before it in the same layer already pruned, still in one forward pass per
batch: each batch's pass runs as a coroutine (a greenlet) that waits at every Linear until all batches have
brought their input to it; the Linear is then pruned and the passes go on (:mod:`prunekit.llm.sequential`).
Equal-length batches are first merged into larger ones up to ``merge_mib`` (larger products run faster).
While they wait, the passes hold one layer's intermediates for the whole calibration set; the inputs they wait
with (all but the layer's own input) wait in a temporary file (``spill_activations``).

Only one layer and the activations of the calibration set are ever live on the execution device: layers
not being worked on may stay on the CPU while a GPU holds the current one (``device="cuda"``). Families
differ only in their :class:`~prunekit.calibration.families.Family`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.calibration.families import Family, family_for, prunable_linears
from prunekit.calls import eval_mode
from prunekit.errors import DataError, MissingDataError, ModelError
from prunekit.llm.memory import HeapTrimmer, release_freed_memory
from prunekit.llm.sequential import ActivationSpill, closing_spill, merge_batches, run_sequential
from prunekit.padding import real_tokens, token_mask
from prunekit.progress import ProgressBar

__all__ = [
    "InputConsumer",
    "LayerJob",
    "LayerStore",
    "LayerVisitor",
    "RunSummary",
    "as_batches",
    "check_token_batches",
    "merge_batches",
    "run_layerwise",
]

InputConsumer = Callable[[Tensor], None]

_HOW_TO_PASS = (
    "pass calibration= a list of token-id tensors [batch, seq_len] (or dicts with 'input_ids'), e.g. "
    "prunekit.llm.data.calibration_batches(tokenizer, text, n_samples=32, seq_len=512)"
)


@dataclass
class LayerJob:
    """One decoder layer being processed: its index, module, dotted name and Linears (by relative name)."""

    index: int
    layer: nn.Module
    prefix: str
    linears: dict[str, nn.Module]

    def full_name(self, relative: str) -> str:
        """The model-level name of a module named ``relative`` inside this layer (``prefix.relative``)."""
        return f"{self.prefix}.{relative}"


class LayerVisitor:
    """What a method plugs into the runner. Override what you need.

    ``modifies`` says whether :meth:`finish` changes the layer; if so the runner recomputes the layer's
    outputs with the new weights before moving on.
    """

    modifies: bool = True
    #: whether :meth:`observe` reads the layer's outputs; a visitor that ``modifies`` the layer and says False
    #: lets the runner stop each statistics forward after the last hooked Linear has seen its input
    wants_outputs: bool = True

    #: True-sequential order: :meth:`solve` prunes each group of Linears as soon as its inputs are gathered,
    #: before any Linear called after it in the layer is fed (see the module docstring); :meth:`observe` is not
    #: called. The runner uses it only for a visitor that ``modifies`` and does not want outputs.
    sequential: bool = False

    #: whether the runner may merge consecutive equal-length calibration batches (``merge_mib``) for this
    #: visitor: its statistics are sums over tokens, the same over any batching up to float rounding. Used only
    #: for a visitor that ``modifies`` and does not want outputs.
    merges_batches: bool = False

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        """Consumers of Linear inputs, keyed by the Linear's name relative to the layer. A consumer sees the
        inputs at real tokens only: [tokens, in] when the batch is padded (``attention_mask == 0``). Linears
        fed the same input tensor in a batch (q/k/v, gate/up) are handed the same tensor object, in the order
        the layer calls them, so a visitor can detect shared inputs with ``is``."""
        return {}

    def observe(self, job: LayerJob, inputs: Tensor, outputs: Tensor) -> None:
        """Called per batch with the layer's input and output hidden states (before :meth:`finish`); when the
        batch is padded, only the real tokens' states, as [tokens, hidden]. Not called for the batches the
        runner cut short (``wants_outputs`` False on a visitor that ``modifies``); the first one always is."""

    def solve(self, job: LayerJob, names: list[str], complete: bool) -> None:
        """(``sequential`` visitors) Prune the Linears ``names`` (relative to the layer) now, from the inputs
        gathered so far (every batch's input to them). ``complete``: no Linear outside ``names`` reads their
        input tensor. The runner passes False: ``names`` are the Linear reached and those that read the same
        tensor in the previous layer, and another one reading it may still follow (then it adopts the
        statistics of the group's first, which must keep them until :meth:`finish`)."""
        raise NotImplementedError

    def finish(self, job: LayerJob) -> None:
        """Solve: prune the layer in place from the statistics gathered (for a ``sequential`` visitor, what
        :meth:`solve` has not pruned yet)."""


class LayerStore:
    """Where decoder layers' weights live while the runner is not working on them (streaming from files).

    :func:`run_layerwise` calls :meth:`load` before it works on a layer and :meth:`release` after, with
    ``modified`` True when the visitor changed the layer (then a store that writes keeps the new weights).
    The default does nothing: the layers stay in memory."""

    def load(self, index: int, layer: nn.Module) -> None:
        """Give ``layer`` (decoder layer ``index``) its weights."""

    def release(self, index: int, layer: nn.Module, modified: bool) -> None:
        """Done with ``layer``: keep (``modified``) and free its weights as the store does."""


@dataclass
class RunSummary:
    """What a layer-wise pass did."""

    layers: int
    batches: int
    tokens: int
    seconds: float
    per_layer_seconds: list[float] = field(default_factory=list)


@dataclass
class _Record:
    hidden: Tensor
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    tokens: Tensor | None = None  # [batch, seq_len] True at real tokens; None when nothing is padding


class _StopForward(Exception):
    pass


def as_batches(calibration: Any) -> list[dict[str, Tensor]]:
    """Normalise calibration data into a list of ``{"input_ids": [B, T], ("attention_mask": [B, T])}``.

    Accepts one tensor [N, T] (each row becomes a batch of one), an iterable of tensors [B, T] or [T], or
    of dicts / tokenizer outputs holding ``input_ids`` (and ``attention_mask``: padded positions are fed to
    the model but enter no statistic).

    Raises :class:`~prunekit.errors.MissingDataError` for no data, no batch, or batches that are all padding,
    and :class:`~prunekit.errors.DataError` for a batch that is not integer token ids ``[batch, seq_len]`` (or
    a dict without ``input_ids``, or a mask of the wrong shape or values).
    """
    if calibration is None:
        raise MissingDataError(f"this method needs calibration data; {_HOW_TO_PASS}")
    if isinstance(calibration, Tensor):
        items: Iterable[Any] = (
            list(calibration.reshape(-1, calibration.shape[-1]).split(1)) if calibration.numel() else []
        )
    elif isinstance(calibration, Mapping):
        items = [calibration]
    elif isinstance(calibration, Iterable):
        items = calibration
    else:
        raise DataError(
            f"this method reads token batches and cannot use calibration of type {type(calibration).__name__} "
            f"(a loss callable only serves gradient criteria); {_HOW_TO_PASS}"
        )
    batches: list[dict[str, Tensor]] = []
    for item in items:
        if isinstance(item, Mapping):
            if "input_ids" not in item:
                raise DataError(f"a calibration batch is a dict without 'input_ids'; {_HOW_TO_PASS}")
            ids, mask = item["input_ids"], item.get("attention_mask")
        elif isinstance(item, Tensor):
            ids, mask = item, None
        elif isinstance(item, (list, tuple)) and item and isinstance(item[0], Tensor):
            ids, mask = item[0], None
        else:
            raise DataError(f"cannot read a calibration batch of type {type(item).__name__}; {_HOW_TO_PASS}")
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise DataError(f"calibration input_ids must be an integer tensor; {_HOW_TO_PASS}")
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.numel() == 0:
            raise DataError(f"calibration input_ids must be [batch, seq_len] and non-empty; {_HOW_TO_PASS}")
        batch = {"input_ids": ids}
        if mask is not None:
            token_mask(ids, mask)  # refuses a mask of the wrong shape or values
            batch["attention_mask"] = mask.unsqueeze(0) if mask.dim() == 1 else mask
        batches.append(batch)
    if not batches:
        raise MissingDataError(f"the calibration data is empty; {_HOW_TO_PASS}")
    if sum(_token_count(b) for b in batches) == 0:
        raise MissingDataError(
            f"every position of the calibration data is padding (attention_mask == 0); {_HOW_TO_PASS}"
        )
    return batches


def check_token_batches(model: nn.Module, batches: list[dict[str, Tensor]], what: str = "calibration") -> None:
    """Refuse token ids the model's input embedding has no row for (text tokenized for another model), and
    sequences longer than the model's context (``config.max_position_embeddings`` or ``n_positions``), with a
    :class:`~prunekit.errors.DataError` that calls the data ``what``. ``batches``: as :func:`as_batches`
    returns them."""
    get = getattr(model, "get_input_embeddings", None)
    found = getattr(get() if callable(get) else None, "num_embeddings", None)
    size: int = found if isinstance(found, int) else 0
    for b in batches if size else []:
        ids = b["input_ids"]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise DataError(
                f"{what} token id {bad} is outside the model's vocabulary (ids 0 to {size - 1}); tokenize "
                f"the {what} text with the model's own tokenizer (load_causal_lm returns it with the model)"
            )
    config = getattr(model, "config", None)
    field, limit = next(
        ((k, v) for k in ("max_position_embeddings", "n_positions") if isinstance(v := getattr(config, k, None), int)),
        (None, None),
    )
    longest = max((int(b["input_ids"].shape[-1]) for b in batches), default=0)
    if limit is not None and longest > limit:
        raise DataError(
            f"{what} sequences of {longest} tokens are longer than the model's context ({limit} positions, "
            f"config.{field}); pass shorter windows (seq_len <= {limit}; prunekit prune-llm: --seq-len {limit} or "
            "less)"
        )


def _token_count(batch: dict[str, Tensor]) -> int:
    mask = token_mask(batch["input_ids"], batch.get("attention_mask"))
    return int(batch["input_ids"].numel()) if mask is None else int(mask.sum())


def _unwrap(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_move(o, device) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def _outside_layers(model: nn.Module, layers: nn.ModuleList) -> list[nn.Module]:
    inside = {id(m) for m in layers.modules()}
    return [m for m in model.modules() if id(m) not in inside]


def _move_outside_layers(model: nn.Module, layers: nn.ModuleList, device: torch.device) -> dict[int, torch.device]:
    """Move parameters and buffers that are not in a decoder layer; returns where each one was."""
    before: dict[int, torch.device] = {}
    for module in _outside_layers(model, layers):
        for tensors in (module._parameters, module._buffers):
            for _key, t in tensors.items():
                if t is not None and t.device != device:
                    before[id(t)] = t.device
                    t.data = t.data.to(device)
    return before


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _capture_inputs(
    model: nn.Module, batches: list[dict[str, Tensor]], adapter: Family, device: torch.device, store: torch.device
) -> list[_Record]:
    """Hidden states entering layer 0 and each layer's extra call arguments, per calibration batch."""
    layers = adapter.layer_list(model)
    n = len(layers)
    if n == 0:
        raise ModelError("the model has no decoder layers")
    records: list[_Record] = []
    originals = {id(t): t.device for t in model.parameters()}
    moved = _move_outside_layers(model, layers, device) if any(d != device for d in originals.values()) else {}
    try:
        for batch in batches:
            calls: list[tuple[tuple[Any, ...], dict[str, Any]] | None] = [None] * n
            first: list[Tensor] = []

            def recorder(
                i: int, calls: list[tuple[tuple[Any, ...], dict[str, Any]] | None], first: list[Tensor]
            ) -> Callable[..., Tensor]:
                def forward(*args: Any, **kwargs: Any) -> Tensor:
                    if args:
                        hidden, rest = args[0], tuple(args[1:])
                    else:
                        hidden, rest = kwargs.pop("hidden_states"), ()
                    calls[i] = (rest, kwargs)
                    if i == 0:
                        first.append(hidden.detach().to(store))
                    if i == n - 1:
                        raise _StopForward
                    return hidden

                return forward

            # an instance-level forward (e.g. accelerate's device hooks) is put back afterwards
            own_forward = [layer.__dict__.get("forward") for layer in layers]
            for i, layer in enumerate(layers):
                layer.forward = recorder(i, calls, first)
            try:
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            except _StopForward:
                pass
            finally:
                for layer, own in zip(layers, own_forward):
                    if own is None:
                        del layer.forward
                    else:
                        layer.forward = own
            if not first or any(c is None for c in calls):
                raise ModelError(
                    f"{type(model).__name__} did not call all of its {n} decoder layers during the forward pass"
                )
            tokens = token_mask(batch["input_ids"], batch.get("attention_mask"))
            records.append(
                _Record(first[0], [c for c in calls if c is not None], None if tokens is None else tokens.to(device))
            )
    finally:
        if moved:
            _restore(model, layers, moved)
    return records


def _restore(model: nn.Module, layers: nn.ModuleList, before: dict[int, torch.device]) -> None:
    for module in _outside_layers(model, layers):
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None and id(t) in before:
                    t.data = t.data.to(before[id(t)])


class _BatchState:
    """What the Linear hooks of the layer being run need to know about the current batch.

    ``views`` maps a raw input tensor (by id, the tensor kept alive beside it) to the real-token view handed
    to consumers, so Linears fed the same tensor (q/k/v, gate/up) receive the same view object.
    ``stop_after``: when set, the layer's forward is cut short once that many hooked calls have fed their
    inputs and every one of the ``consumers`` hooked Linears has been fed (the statistics pass of a visitor
    that needs no layer outputs skips the rest of the layer; a layer whose calls vary by batch, such as a
    mixture of experts, simply runs in full when they do not add up).
    """

    def __init__(self) -> None:
        self.tokens: Tensor | None = None
        self.views: dict[int, tuple[Tensor, Tensor]] = {}
        self.calls = 0
        self.fed: set[str] = set()
        self.consumers = 0
        self.stop_after: int | None = None

    def begin(self, tokens: Tensor | None) -> None:
        self.tokens = tokens
        self.views = {}
        self.calls = 0
        self.fed = set()


def _token_hook(consume: InputConsumer, state: _BatchState, where: str) -> Callable[..., None]:
    """A forward pre-hook feeding ``consume`` a Linear's inputs at the real tokens of the current batch."""

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        raw = inputs[0]
        seen = state.views.get(id(raw))
        if seen is None or seen[0] is not raw:
            seen = (raw, real_tokens(raw.detach(), state.tokens, where))
            state.views[id(raw)] = seen
        consume(seen[1])
        state.calls += 1
        state.fed.add(where)
        if state.stop_after is not None and state.calls >= state.stop_after and len(state.fed) == state.consumers:
            raise _StopForward

    return hook


def _run_two_pass(
    job: LayerJob,
    index: int,
    records: list[_Record],
    consumers: Mapping[str, InputConsumer],
    visitor: LayerVisitor,
    device: torch.device,
    store: torch.device,
) -> list[Tensor]:
    """A statistics pass over every record (hooks feed ``consumers``, :meth:`LayerVisitor.observe` sees the
    outputs), the visitor's :meth:`~LayerVisitor.finish`, then, for a visitor that ``modifies``, an output
    pass with the new weights (each record then holds its output at once); returns the layer's outputs, one
    per record."""
    layer, i, exec_device = job.layer, index, device
    handles = []
    state = _BatchState()
    state.consumers = len(consumers)
    for rel, consume in consumers.items():
        module = layer.get_submodule(rel)
        handles.append(module.register_forward_pre_hook(_token_hook(consume, state, job.full_name(rel))))
    # a visitor that changes the layer and reads no layer outputs needs the forward only up to the
    # last hooked Linear: the first batch runs in full and counts the hooked calls, the others stop there
    cut_short = visitor.modifies and not visitor.wants_outputs and bool(consumers)
    outputs: list[Tensor] = []
    try:
        for b, rec in enumerate(records):
            x = rec.hidden.to(exec_device)
            args, kwargs = rec.calls[i]
            state.begin(rec.tokens)
            try:
                out = _unwrap(layer(x, *args, **kwargs))
            except _StopForward:
                continue
            finally:
                state.views = {}
            if cut_short and b == 0:
                state.stop_after = state.calls
            visitor.observe(job, real_tokens(x, rec.tokens, job.prefix), real_tokens(out, rec.tokens, job.prefix))
            if not visitor.modifies:
                outputs.append(out.to(store))
            del out, x
    finally:
        for h in handles:
            h.remove()
    visitor.finish(job)
    if visitor.modifies:
        for rec in records:
            args, kwargs = rec.calls[i]
            out = _unwrap(layer(rec.hidden.to(exec_device), *args, **kwargs)).to(store)
            rec.hidden = out  # the batch's input is not needed any more: hold its output alone
            outputs.append(out)
    return outputs


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    calibration: Any,
    visitor: LayerVisitor,
    *,
    device: str | torch.device | None = None,
    offload_activations: bool = False,
    progress: bool | None = None,
    description: str = "layers",
    layer_store: LayerStore | None = None,
    merge_mib: float = 32.0,
    spill_activations: bool = True,
) -> RunSummary:
    """Run ``visitor`` over every decoder layer of ``model`` (see the module docstring).

    ``device``: where the current layer and the activations are computed (default: where the model is);
    a model kept on the CPU is moved there one layer at a time. ``offload_activations`` keeps the hidden
    states of the calibration set on the CPU between layers. ``progress``: None shows a bar on a terminal and
    logs otherwise (see :mod:`prunekit.progress`), True forces the bar, False is silent. ``layer_store``: a
    :class:`LayerStore` that gives each layer its weights before it is worked on and takes them back after
    (:mod:`prunekit.llm.streaming`); None: the layers are in memory. ``merge_mib``: for a ``sequential``
    visitor, consecutive equal-length calibration batches are merged while a layer's forward on the merged
    batch is estimated to need at most this many MiB (:func:`~prunekit.llm.sequential.merge_batches`); 0 never
    merges. ``spill_activations`` (``sequential`` visitors, CPU): a pass waiting at a Linear keeps the input it
    waits with (unless it is the layer's own input, or the layer's first pause) in a temporary file until it
    goes on, which bounds the
    waiting passes' memory near the two-pass order's (read back exactly; about 0.1 s per 100 MB).

    Raises :class:`~prunekit.errors.UnsupportedModuleError` for a model of no known causal-LM family, what
    :func:`as_batches` raises for the calibration data, :class:`~prunekit.errors.DataError` for token ids
    outside the model's vocabulary and :class:`~prunekit.errors.ModelError` when the forward pass does not
    call every decoder layer.
    """
    adapter = family_for(model)
    batches = as_batches(calibration)
    check_token_batches(model, batches)
    sequential = visitor.sequential and visitor.modifies and not visitor.wants_outputs
    if (sequential or visitor.merges_batches) and visitor.modifies and not visitor.wants_outputs:
        batches = merge_batches(model, batches, merge_mib)
    exec_device = torch.device(device) if device is not None else _model_device(model)
    store = torch.device("cpu") if offload_activations else exec_device
    start = time.perf_counter()
    layers = adapter.layer_list(model)
    per_layer: list[float] = []
    carried: dict[str, list[str]] = {}  # groups of Linears reading one tensor, learned layer to layer
    spill = ActivationSpill() if sequential and spill_activations else None
    trimmer = HeapTrimmer()
    # every module's own train/eval flag comes back afterwards, also when a layer fails
    with eval_mode(model), ProgressBar(description, len(layers), enabled=progress) as bar, closing_spill(spill):
        records = _capture_inputs(model, batches, adapter, exec_device, store)
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            if layer_store is not None:
                layer_store.load(i, layer)
            home = _model_device(layer)
            if home != exec_device:
                layer.to(exec_device)
            job = LayerJob(i, layer, f"{adapter.layers}.{i}", prunable_linears(layer))
            consumers = visitor.start(job)
            if sequential and consumers:
                outputs = run_sequential(
                    job, i, records, consumers, visitor, exec_device, store, carried, spill, trimmer
                )
                if len(outputs) != len(records):
                    raise ModelError(f"{job.prefix} returned no output for some calibration batches")
                visitor.finish(job)
            else:
                outputs = _run_two_pass(job, i, records, consumers, visitor, exec_device, store)
            for rec, out in zip(records, outputs):
                rec.hidden = out
            del outputs
            if home != exec_device:
                layer.to(home)
            if layer_store is not None:
                layer_store.release(i, layer, visitor.modifies)
            release_freed_memory()
            per_layer.append(time.perf_counter() - t0)
            bar.advance(description=f"{description} {i + 1}/{len(layers)}")
    tokens = sum(_token_count(b) for b in batches)
    return RunSummary(len(layers), len(batches), tokens, time.perf_counter() - start, per_layer)
