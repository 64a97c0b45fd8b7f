"""True-sequential calibration of one decoder layer in one forward pass (see :mod:`prunekit.llm.runner`).

Every calibration batch's pass through the layer runs as a coroutine (:class:`_Worker`, a greenlet on the
calling thread) that waits at each Linear until all batches have fed it; the Linear is then pruned and the
passes go on with the pruned weights (:func:`run_sequential`). :func:`merge_batches` first merges
neighbouring equal-length batches up to an estimated working memory (:func:`layer_workspace`). The order is
the ``--true-sequential`` order of the SparseGPT and GPTQ reference code (Frantar & Alistarh 2023).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.errors import ModelError
from prunekit.padding import real_tokens

if TYPE_CHECKING:
    from prunekit.llm.runner import InputConsumer, LayerJob, LayerVisitor

__all__ = ["layer_workspace", "merge_batches", "run_sequential"]


def _unwrap(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Abort(BaseException):
    """Raised inside a worker whose layer pass is abandoned (another batch failed)."""


class _Worker:
    """One calibration batch's pass through a decoder layer, run as a coroutine (a greenlet, on the calling
    thread).

    :meth:`resume` runs the pass until it pauses at a Linear's forward pre-hook (:meth:`pause`) or ends; only
    one worker runs at a time, so the computation is the same, in the same order, as running the batches one
    after another, while each pass can wait at a Linear until every batch's input to it has been gathered.
    """

    def __init__(self, index: int, run: Callable[[], Tensor]):
        import greenlet

        self.index = index
        self._run_pass = run
        self._greenlet = greenlet.greenlet(self._main)
        self.at: tuple[str, Tensor] | None = None  # (relative name, raw input) where the pass is paused
        self.result: Tensor | None = None
        self.error: BaseException | None = None
        self.done = False
        self.abort = False

    def _main(self) -> None:
        try:
            if not self.abort:
                self.result = self._run_pass()
        except _Abort:
            pass
        except BaseException as e:  # handed to the coordinating code
            self.error = e
        self.done = True
        self.at = None

    def resume(self) -> None:
        """Run the pass until it pauses or ends."""
        self._greenlet.switch()

    def pause(self, rel: str, raw: Tensor) -> None:
        """Called inside the pass: hand control back, waiting at Linear ``rel`` with input ``raw``."""
        self.at = (rel, raw)
        parent = self._greenlet.parent
        assert parent is not None
        parent.switch()
        self.at = None
        if self.abort:
            raise _Abort

    def close(self) -> None:
        """Abandon a paused pass (it unwinds with :class:`_Abort`)."""
        if not self.done:
            self.abort = True
            self.resume()


def run_sequential(
    job: LayerJob,
    index: int,
    records: list[Any],
    consumers: Mapping[str, InputConsumer],
    visitor: LayerVisitor,
    device: torch.device,
    store: torch.device,
    groups: dict[str, list[str]],
) -> list[Tensor]:
    """Calibrate and prune ``job``'s layer in true-sequential order with one forward pass per batch; returns
    the pruned layer's outputs, one per record.

    Every batch's pass runs as a :class:`_Worker`. A pass pauses at the pre-hook of each Linear not yet
    pruned; once every batch waits at the same Linear, the inputs are fed to its consumer (batch order) and
    the visitor prunes it, then the passes go on with the pruned weights. Linears that read the same tensor
    (q/k/v, gate/up) are fed and pruned together when the first is reached: ``groups`` holds, per first
    Linear, the group found in the previous layer (decoder layers share their structure), and is updated
    with this layer's; each member is checked to be called on that very tensor.
    """
    layer = job.layer
    solved: set[str] = set()
    # weak references only: the passes hold their tensors; nothing here may keep a batch's input alive
    fed_with: list[dict[str, weakref.ref[Tensor]]] = [{} for _ in records]
    readers: list[tuple[weakref.ref[Tensor], list[str]]] = []  # batch 0: Linears by the tensor they read
    views: list[tuple[weakref.ref[Tensor], Tensor] | None] = [None] * len(records)  # the latest pause's
    active: list[_Worker] = []  # the worker whose pass is running

    def view(b: int, raw: Tensor, where: str) -> Tensor:
        seen = views[b]
        if seen is None or seen[0]() is not raw:
            seen = (weakref.ref(raw), real_tokens(raw.detach(), records[b].tokens, where))
            views[b] = seen
        return seen[1]

    def hook_for(rel: str) -> Callable[..., None]:
        where = job.full_name(rel)

        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if not active:
                return
            worker = active[0]
            raw = inputs[0]
            if worker.index == 0:
                entry = next((e for e in readers if e[0]() is raw), None)
                if entry is None:
                    readers.append((weakref.ref(raw), [rel]))
                else:
                    entry[1].append(rel)
            if rel in solved:
                fed = fed_with[worker.index].get(rel)
                if fed is not None and fed() is not raw:
                    raise ModelError(
                        f"{where} did not read the same input as the Linears it was grouped with (those that "
                        "read one tensor in the previous decoder layer); pass true_sequential=False"
                    )
                return
            worker.pause(rel, raw)

        return hook

    def pass_for(b: int) -> Callable[[], Tensor]:
        rec = records[b]
        args, kwargs = rec.calls[index]

        def run() -> Tensor:
            return _unwrap(layer(rec.hidden.to(device), *args, **kwargs)).to(store)

        return run

    def resume(w: _Worker) -> None:
        active[:] = [w]
        try:
            w.resume()
        finally:
            active.clear()

    handles = [layer.get_submodule(rel).register_forward_pre_hook(hook_for(rel)) for rel in consumers]
    workers: list[_Worker] = []
    try:
        workers = [_Worker(b, pass_for(b)) for b in range(len(records))]
        while True:
            for w in workers:
                if not w.done:
                    resume(w)
                if w.error is not None:
                    raise w.error
            waiting = [w for w in workers if not w.done]
            if not waiting:
                break
            at = {w.at[0] for w in waiting if w.at is not None}
            if len(at) != 1 or len(waiting) != len(workers):
                raise ModelError(
                    f"the calibration batches took different paths through {job.prefix} (Linears reached: "
                    f"{sorted(at)}); true-sequential calibration needs the same calls in every batch: pass "
                    "true_sequential=False"
                )
            rel = at.pop()
            group = [r for r in groups.get(rel, [rel]) if r in consumers and r not in solved]
            if rel not in group:
                group = [rel]
            for w in workers:
                assert w.at is not None
                raw = w.at[1]
                x = view(w.index, raw, job.full_name(rel))
                for member in group:
                    consumers[member](x)
                    fed_with[w.index][member] = weakref.ref(raw)
            visitor.solve(job, group, False)
            solved.update(group)
    finally:
        for h in handles:
            h.remove()
        for w in workers:
            if not w.done:
                active[:] = [w]
                w.close()
                active.clear()
    for _ref, rels in readers:  # the groups of this layer: the guess for the next one
        groups[rels[0]] = rels
    return [w.result for w in workers if w.result is not None]


def layer_workspace(model: nn.Module, batch: int, seq_len: int) -> int:
    """Bytes a decoder layer's forward may hold at once for a batch [batch, seq_len], estimated from the
    config: three MLP-wide activations and six hidden-wide ones per token, plus one attention score matrix."""
    config = getattr(model, "config", None)

    def field(*names: str) -> int | None:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    hidden = field("hidden_size", "n_embd", "d_model") or 4096
    wide = field("intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    heads = field("num_attention_heads", "n_head") or 1
    size = next(model.parameters()).element_size()
    tokens = batch * seq_len
    return size * (tokens * (3 * wide + 6 * hidden) + batch * heads * seq_len * seq_len)


def merge_batches(model: nn.Module, batches: list[dict[str, Tensor]], merge_mib: float) -> list[dict[str, Tensor]]:
    """Consecutive ``batches`` of the same length merged into larger batches, each one's layer forward
    estimated to need at most ``merge_mib`` MiB (:func:`layer_workspace`); a batch over the budget on its
    own stays as it is, and ``merge_mib=0`` merges nothing. Merging changes no statistic: every token is still
    seen once, padding (``attention_mask``) stays masked; larger batches make larger, faster matrix products.
    """
    if len(batches) < 2 or merge_mib <= 0:
        return batches
    budget = merge_mib * 2**20
    out: list[dict[str, Tensor]] = []
    chunk: list[dict[str, Tensor]] = []

    def flush() -> None:
        if len(chunk) == 1:
            out.append(chunk[0])
        elif chunk:
            ids = torch.cat([c["input_ids"] for c in chunk])
            merged = {"input_ids": ids}
            if any("attention_mask" in c for c in chunk):
                masks = [c.get("attention_mask", torch.ones_like(c["input_ids"])) for c in chunk]
                merged["attention_mask"] = torch.cat([m.to(masks[0].dtype) for m in masks])
            out.append(merged)
        chunk.clear()

    for batch in batches:
        if chunk:
            rows = sum(int(c["input_ids"].shape[0]) for c in chunk) + int(batch["input_ids"].shape[0])
            seq = int(batch["input_ids"].shape[1])
            if seq != int(chunk[0]["input_ids"].shape[1]) or layer_workspace(model, rows, seq) > budget:
                flush()
        chunk.append(batch)
    flush()
    return out
