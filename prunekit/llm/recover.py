"""Recovery fine-tuning of pruned causal language models: LoRA, or distillation from the dense model.

``recover(model, texts_or_batches, method="lora" | "kd", ...)`` trains low-rank adapters (PyPI ``peft``,
Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on every ``nn.Linear`` but the LM
head (the attention and MLP projections) and merges them back, so the result is a plain model of the
pruned shapes that saves with ``save_pretrained`` and reloads through :func:`prunekit.llm.load_causal_lm`. The
two methods differ in the objective:

* ``"lora"``: next-token cross-entropy on the text, as LLM-Pruner (Ma et al. 2023) and the Wanda paper's
  LoRA experiments recover pruned models;
* ``"kd"``: knowledge distillation from a teacher (the dense model, passed by the user), Hinton et al. 2015:
  ``loss = T^2 * mean_t KL(softmax(z_teacher_t / T) || softmax(z_student_t / T))`` over the predicted
  positions, optionally mixed with the cross-entropy (``kd_alpha < 1``).

Masks stay exact. A weight that is pruned (under a prunekit mask, or an exact zero in the weight as after
``squash_masks_`` or a reload) is never filled in: for such a matrix the LoRA update is masked, during
training (``W x + (M * (B A)) x s``) and at the merge (``W + M * (B A) s``), so training optimises the model
that is finally kept and every pruned weight is exactly zero afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.apply.masks import get_mask, original_parameter
from prunekit.calls import restore_modes, training_modes
from prunekit.errors import (
    ConfigError,
    DataError,
    MissingDataError,
    SourceMissingError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.layout import layer_weight
from prunekit.progress import ProgressBar

__all__ = ["RECOVERY_METHODS", "RecoveryReport", "kd_loss", "recover"]

RECOVERY_METHODS = ("kd", "lora")
_ADAPTER = "default"


@dataclass
class RecoveryReport:
    """What a recovery run did.

    ``loss_curve``: the training loss of every step (cross-entropy in nats per token for ``lora``; the
    distillation loss for ``kd``); ``tokens``: predicted tokens seen in training; ``seconds``: wall time of
    the training loop (evaluation excluded); ``perplexity_before`` / ``perplexity_after``:
    :class:`prunekit.llm.data.Perplexity` on ``eval_text`` (``None`` without one); ``masked_matrices``: how
    many adapted matrices had pruned weights kept at zero; ``zeros_kept``: how many weights that is.
    """

    method: str
    steps: int
    tokens: int
    seconds: float
    loss_curve: list[float]
    settings: dict[str, Any]
    trainable_parameters: int
    adapted_matrices: int
    masked_matrices: int
    zeros_kept: int
    data: dict[str, Any] = field(default_factory=dict)
    perplexity_before: Any = None
    perplexity_after: Any = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (perplexities as ``{"ppl", "nll", "tokens", "protocol"}``)."""
        out = asdict(self)
        for key in ("perplexity_before", "perplexity_after"):
            value = getattr(self, key)
            out[key] = (
                None
                if value is None
                else {"ppl": value.ppl, "nll": value.nll, "tokens": value.tokens, "protocol": value.protocol}
            )
        return out

    def __str__(self) -> str:
        k = max(1, min(5, len(self.loss_curve) // 2))
        first = sum(self.loss_curve[:k]) / max(len(self.loss_curve[:k]), 1)
        last = sum(self.loss_curve[-k:]) / max(len(self.loss_curve[-k:]), 1)
        text = (
            f"{self.method} recovery: {self.steps} steps, {self.tokens:,} tokens in {self.seconds:.1f} s; "
            f"loss {first:.3f} -> {last:.3f} (mean of the first / last {k} steps); {self.adapted_matrices} matrices "
            f"adapted, {self.zeros_kept:,} zero weights (pruned, or zero before) kept at zero"
        )
        if self.perplexity_before is not None and self.perplexity_after is not None:
            text += f"; perplexity {self.perplexity_before.ppl:.2f} -> {self.perplexity_after.ppl:.2f}"
        return text


class _MaskedUpdate:
    """A peft LoRA variant whose update is multiplied by a keep-mask: ``y = W x + (M * (B A)) x * s``.

    Installed by :func:`recover` on the adapted matrices that have pruned weights; the merge adds the same
    masked update, so pruned weights stay exactly zero.
    """

    def __init__(self, keep: Tensor):
        self.keep = keep

    def supports_lora_conversion(self) -> bool:
        return False

    def delta(self, module: Any, adapter: str) -> Tensor:
        return module.get_delta_weight(adapter) * self.keep.to(module.lora_B[adapter].weight.dtype)

    def forward(self, module: Any, active_adapter: str, x: Tensor, result: Tensor, **kwargs: Any) -> Tensor:
        dropout = module.lora_dropout[active_adapter]
        return result + nn.functional.linear(dropout(x), self.delta(module, active_adapter))

    def merge_safe(self, module: Any, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight + self.delta(module, active_adapter).to(orig_weight.dtype)

    def merge_unsafe(self, module: Any, active_adapter: str, orig_weight: Tensor) -> None:
        orig_weight.data += self.delta(module, active_adapter).to(orig_weight.dtype)

    def unmerge(self, module: Any, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight - self.delta(module, active_adapter).to(orig_weight.dtype)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise SourceMissingError(
            "recovery fine-tuning needs the PyPI package peft: `pip install peft==0.21.2` (or `pip install "
            "prunekit[llm]`)"
        ) from None
    return peft


def _keep_mask(module: nn.Module) -> Tensor | None:
    """The keep-mask of a Linear: its prunekit mask, else ``weight != 0`` when the weight has exact zeros."""
    mask = get_mask(module, "weight")
    if mask is not None:
        return mask.detach().clone()
    with torch.no_grad():
        keep = layer_weight(module) != 0
    return None if bool(keep.all()) else keep


def _targets(model: nn.Module, target_modules: Sequence[str] | None) -> list[str]:
    """Full names of the Linears to adapt: by default every ``nn.Linear`` except the output embeddings."""
    get_head = getattr(model, "get_output_embeddings", None)  # a Hugging Face model's LM head
    head = get_head() if get_head is not None else None
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head and n]
    if target_modules is not None:
        if isinstance(target_modules, str):
            target_modules = [target_modules]
        wanted = list(target_modules)
        chosen = [n for n in found if any(n == t or n.endswith("." + t) for t in wanted)]
        unmatched = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in found)]
        if unmatched or not chosen:
            endings = sorted({n.rsplit(".", 1)[-1] for n in found})
            raise ConfigError(
                f"target_modules {unmatched or wanted} match no nn.Linear of the model (the LM head excluded); "
                f"pass full names or name endings such as {', '.join(endings[:10]) or '(none)'}"
            )
        return chosen
    if not found:
        conv1d = sum(type(m).__name__ == "Conv1D" for m in model.modules())
        extra = f" (its projections are {conv1d} transformers Conv1D modules)" if conv1d else ""
        raise UnsupportedModuleError(
            f"{type(model).__name__} has no nn.Linear besides its LM head{extra}; LoRA recovery adapts nn.Linear "
            "layers: use a LLaMA-, Mistral-, Qwen-, Gemma- or OPT-style model"
        )
    return found


def _batches_from(
    data: Any, tokenizer: Any, *, steps: int, batch_size: int, seq_len: int, seed: int
) -> tuple[list[tuple[Tensor, Tensor | None]], dict[str, Any]]:
    """(input_ids, attention_mask) pairs, one per step, and a record of where they came from."""
    from prunekit.llm.data import calibration_batches, token_hash

    if isinstance(data, str):
        named: list[tuple[str, str]] | None = [("text", data)]
    elif isinstance(data, Sequence) and data and all(isinstance(t, str) for t in data):
        named = [(f"text{i}", t) for i, t in enumerate(data)]
    elif (
        isinstance(data, Sequence)
        and data
        and all(isinstance(t, tuple) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in data)
    ):
        named = list(data)
    else:
        named = None
    if named is not None:
        if not any(t.strip() for _, t in named):
            raise DataError("the recovery texts are empty; pass the text(s) to train on")
        if tokenizer is None:
            raise MissingDataError("recovering from texts needs their tokenizer: pass tokenizer=...")
        cal = calibration_batches(
            tokenizer, named, n_samples=steps * batch_size, seq_len=seq_len, seed=seed, batch_size=batch_size
        )
        return [(b, None) for b in cal.batches], {"kind": "texts", **cal.protocol}
    batches = getattr(data, "batches", data)  # a CalibrationSet or an iterable of batches
    if isinstance(batches, Tensor):
        batches = [batches]
    if not isinstance(batches, Iterable):
        raise DataError(
            f"texts_or_batches must be a text, a list of texts, [(name, text), ...] or batches of token ids, got "
            f"{type(data).__name__}"
        )
    items: list[tuple[Tensor, Tensor | None]] = []
    for b in batches:
        ids, mask = (b.get("input_ids"), b.get("attention_mask")) if isinstance(b, dict) else (b, None)
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.dim() not in (1, 2):
            raise DataError(
                "each batch must be a LongTensor of token ids shaped (batch, seq) or {'input_ids': ..., "
                f"'attention_mask': ...}}, got {type(ids).__name__}"
                + (f" of dtype {ids.dtype} and shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else "")
            )
        ids = ids.long().reshape(-1, ids.shape[-1])
        if ids.shape[-1] < 2:
            raise DataError(f"a batch needs at least 2 tokens per sequence to predict one, got {ids.shape[-1]}")
        if mask is not None:
            mask = torch.as_tensor(mask).reshape(ids.shape)
        items.append((ids, mask))
    if not items:
        raise DataError("texts_or_batches holds no batches; pass at least one text or batch of token ids")
    digest = token_hash(torch.cat([i.flatten() for i, _ in items]))
    record = {"kind": "batches", "n_batches": len(items), "token_sha256": digest}
    return [items[s % len(items)] for s in range(steps)], record


def _labels(ids: Tensor, mask: Tensor | None) -> Tensor:
    return ids if mask is None else ids.masked_fill(mask == 0, -100)


def kd_loss(student: Tensor, teacher: Tensor, mask: Tensor | None, temperature: float) -> Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
    ``T^2 * KL(p_teacher || p_student)`` at temperature T, averaged over predicted positions; a scalar.

    ``student``, ``teacher``: logits ``(batch, seq, vocab)``; the last position predicts nothing in the text
    and is left out, as are padded positions.
    """
    s = torch.log_softmax(student[:, :-1].float() / temperature, dim=-1)
    t = torch.log_softmax(teacher[:, :-1].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (batch, seq - 1)
    if mask is not None:
        w = mask[:, 1:].to(kl.dtype)
        return temperature**2 * (kl * w).sum() / w.sum().clamp_min(1)
    return temperature**2 * kl.mean()


def _check_options(method: str, teacher: Any, model: nn.Module, **o: Any) -> None:
    if method not in RECOVERY_METHODS:
        raise UnknownNameError("recovery method", method, RECOVERY_METHODS)
    for key in ("steps", "batch_size", "rank"):
        if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < 1:
            raise ConfigError(f"{key} takes a whole number >= 1, got {o[key]!r}")
    if not isinstance(o["seq_len"], int) or o["seq_len"] < 2:
        raise ConfigError(f"seq_len takes a whole number >= 2 (one token predicts the next), got {o['seq_len']!r}")
    if not (isinstance(o["lr"], (int, float)) and o["lr"] > 0 and math.isfinite(o["lr"])):
        raise ConfigError(f"lr takes a positive learning rate such as 3e-4, got {o['lr']!r}")
    if not 0 <= o["lora_dropout"] < 1:
        raise ConfigError(f"lora_dropout takes a probability in [0, 1), got {o['lora_dropout']!r}")
    if o["lora_alpha"] <= 0:
        raise ConfigError(
            f"lora_alpha takes a positive scale (the update is multiplied by alpha / rank), got {o['lora_alpha']!r}"
        )
    if o["warmup_steps"] is not None and not 0 <= o["warmup_steps"] <= o["steps"]:
        raise ConfigError(f"warmup_steps takes a count in [0, steps={o['steps']}], got {o['warmup_steps']!r}")
    if method == "kd":
        if teacher is None:
            raise MissingDataError("method='kd' distils from a teacher: pass teacher=<the dense model>")
        if teacher is model:
            raise ConfigError("the teacher is the model being recovered; pass the dense model as teacher")
        if not (o["temperature"] > 0 and math.isfinite(o["temperature"])):
            raise ConfigError(f"temperature takes a positive number (2.0 is usual), got {o['temperature']!r}")
        if not 0 <= o["kd_alpha"] <= 1:
            raise ConfigError(
                f"kd_alpha weighs the distillation loss against cross-entropy, in [0, 1]; got {o['kd_alpha']!r}"
            )
        tv = getattr(getattr(teacher, "config", None), "vocab_size", None)
        sv = getattr(getattr(model, "config", None), "vocab_size", None)
        if tv is not None and sv is not None and tv != sv:
            raise ConfigError(
                f"teacher vocabulary ({tv} tokens) differs from the model's ({sv}); distillation on logits needs "
                "the same tokenizer: pass the dense model the pruned one came from"
            )
    elif teacher is not None:
        raise ConfigError("teacher= is used by method='kd' only; pass method='kd' or leave teacher out")


def recover(
    model: nn.Module,
    texts_or_batches: Any,
    method: str = "lora",
    *,
    tokenizer: Any = None,
    teacher: nn.Module | None = None,
    steps: int = 200,
    batch_size: int = 4,
    seq_len: int = 256,
    lr: float = 3e-4,
    rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    temperature: float = 2.0,
    kd_alpha: float = 1.0,
    warmup_steps: int | None = None,
    max_grad_norm: float | None = 1.0,
    gradient_checkpointing: bool = False,
    eval_text: str | None = None,
    eval_name: str = "eval",
    eval_tokens: int | None = 4096,
    eval_seq_len: int = 512,
    seed: int = 0,
    progress: bool | None = None,
) -> RecoveryReport:
    """Fine-tune a pruned causal LM in place through LoRA adapters, then merge them; returns a report.

    Args:
        model: a Hugging Face causal LM (LLaMA, Mistral, Qwen, Gemma, OPT families), pruned or not; its
            shapes are kept. Masked (prunekit masks) or zero weights stay exactly zero.
        texts_or_batches: a text, a list of texts, ``[(name, text), ...]`` (then ``tokenizer`` is needed and
            ``steps * batch_size`` windows of ``seq_len`` tokens are drawn, seeded, as in
            :func:`prunekit.llm.calibration_batches`), or batches of token ids ``(batch, seq)`` (tensors,
            ``{"input_ids", "attention_mask"}`` dicts or a ``CalibrationSet``), cycled for ``steps`` steps.
        method: ``"lora"`` (cross-entropy) or ``"kd"`` (distillation from ``teacher``).
        teacher: the dense model for ``"kd"`` (same vocabulary); it is only read, in eval mode, without grad.
        steps, batch_size, seq_len: training length. Memory: the model, the adapters with their AdamW state,
            and one step's activations; the logits take ``batch_size * seq_len * vocab * 4`` bytes per copy
            (``"kd"`` holds about four: student, teacher, their log-softmaxes), so keep batches small.
        lr: AdamW learning rate, linear warmup over ``warmup_steps`` (default 10% of steps) then linear decay.
        rank, lora_alpha, lora_dropout: LoRA's ``r``, ``alpha`` (update scale ``alpha / r``) and dropout.
        target_modules: names or name endings of the Linears to adapt (default: every ``nn.Linear`` but the
            LM head, i.e. the attention and MLP projections of the decoder layers).
        temperature, kd_alpha: distillation temperature ``T`` and the weight of the KD loss
            (``kd_alpha * KD + (1 - kd_alpha) * CE``).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        eval_text: a text whose perplexity is measured before and after (first ``eval_tokens`` tokens,
            windows of ``eval_seq_len``); needs ``tokenizer``.

    Raises:
        UnknownNameError: an unknown ``method``. ConfigError: an option out of range, a teacher for
        ``"lora"``, a teacher with another vocabulary. MissingDataError: no teacher for ``"kd"``, or texts
        without a tokenizer. DataError: empty texts or malformed batches. SourceMissingError: peft is not
        installed. UnsupportedModuleError: no ``nn.Linear`` in the decoder layers. On any error, also one
        raised while training, the model is left as it was (adapters removed, base weights untouched).
    """
    options = dict(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        rank=rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        temperature=temperature,
        kd_alpha=kd_alpha,
        warmup_steps=warmup_steps,
    )
    _check_options(method, teacher, model, **options)
    if eval_text is not None and tokenizer is None:
        raise MissingDataError("eval_text needs the tokenizer: pass tokenizer=...")
    if eval_text is not None and not eval_text.strip():
        raise DataError("eval_text is empty; pass a text to measure perplexity on, or leave eval_text out")
    peft = _peft()
    names = _targets(model, target_modules)
    batches, data_record = _batches_from(
        texts_or_batches, tokenizer, steps=steps, batch_size=batch_size, seq_len=seq_len, seed=seed
    )
    from prunekit.llm.runner import check_token_batches

    check_token_batches(model, [{"input_ids": ids} for ids, _ in batches], "recovery")
    from prunekit.llm.data import perplexity

    modules = dict(model.named_modules())
    keeps = {n: _keep_mask(modules[n]) for n in names}
    device = next(model.parameters()).device
    before = (
        perplexity(model, tokenizer, eval_text, name=eval_name, seq_len=eval_seq_len, max_tokens=eval_tokens)
        if eval_text is not None
        else None
    )
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    hf_model: Any = model  # a Hugging Face PreTrainedModel: gradient checkpointing is its own
    modes = training_modes(model)
    was_checkpointing = bool(
        model.is_activation_checkpointing
        if hasattr(type(model), "is_activation_checkpointing")
        else getattr(model, "is_gradient_checkpointing", False)
    )
    teacher_modes = training_modes(teacher) if teacher is not None else []
    config = peft.LoraConfig(
        r=rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=names, bias="none"
    )
    with torch.random.fork_rng(devices=[]):  # LoRA's A initialisation, seeded, without touching the global RNG
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(model, config)
    try:
        lora_layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and _ADAPTER in m.lora_A}
        for name, layer in lora_layers.items():
            keep = keeps.get(name)
            if keep is not None:
                layer.lora_variant[_ADAPTER] = _MaskedUpdate(keep.to(layer.lora_B[_ADAPTER].weight.device))
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warm = max(1, round(0.1 * steps)) if warmup_steps is None else warmup_steps

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (steps - step) / max(1, steps - warm))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        if gradient_checkpointing:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if teacher is not None:
            teacher.eval()
        model.train()
        curve: list[float] = []
        tokens = 0
        t0 = time.perf_counter()
        with ProgressBar(f"{method} recovery", steps, enabled=progress) as bar:
            for ids, mask in batches:
                ids = ids.to(device)
                mask = mask.to(device) if mask is not None else None
                labels = _labels(ids, mask)
                if method == "lora":
                    out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
                    loss = out.loss
                else:
                    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
                    assert teacher is not None  # _check_options refuses "kd" without one
                    with torch.no_grad():
                        t_dev = _device_of(teacher)
                        t_mask = mask.to(t_dev) if mask is not None else None
                        t_logits = teacher(input_ids=ids.to(t_dev), attention_mask=t_mask, use_cache=False).logits
                    loss = kd_alpha * kd_loss(out.logits, t_logits.to(out.logits.device), mask, temperature)
                    if kd_alpha < 1:
                        ce = nn.functional.cross_entropy(
                            out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
                        )
                        loss = loss + (1 - kd_alpha) * ce
                    del t_logits
                if not torch.isfinite(loss):
                    raise DataError(
                        f"the {method} loss became {float(loss)} at step {len(curve)}; lower lr (now {lr:g}) or "
                        "check the batches"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                curve.append(float(loss.detach()))
                tokens += int((labels[:, 1:] != -100).sum())
                del out, loss
                bar.advance(description=f"{method} recovery, loss {curve[-1]:.3f}")
        seconds = time.perf_counter() - t0
        # merge: W <- W + M * (B A) s, written to the stored weight (under a prunekit mask, its original)
        with torch.no_grad():
            for layer in lora_layers.values():
                variant = layer.lora_variant.get(_ADAPTER)
                delta = variant.delta(layer, _ADAPTER) if variant is not None else layer.get_delta_weight(_ADAPTER)
                base = layer.get_base_layer()
                weight = original_parameter(base, "weight")
                weight.add_(delta.to(weight.dtype))
    finally:
        wrapped.unload()  # adapters out, base layers back in place (weights merged above, or untouched)
        if gradient_checkpointing and not was_checkpointing:
            hf_model.gradient_checkpointing_disable()
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        restore_modes(modes)
        restore_modes(teacher_modes)
    after = (
        perplexity(model, tokenizer, eval_text, name=eval_name, seq_len=eval_seq_len, max_tokens=eval_tokens)
        if eval_text is not None
        else None
    )
    settings = {
        **options,
        "warmup_steps": warm,
        "max_grad_norm": max_grad_norm,
        "gradient_checkpointing": gradient_checkpointing,
        "seed": seed,
        "target_modules": names if target_modules is not None else "every nn.Linear but the LM head",
        "optimizer": "AdamW, weight decay 0, linear warmup then linear decay",
    }
    if method == "lora":
        settings.pop("temperature")
        settings.pop("kd_alpha")
    masked = [k for k in keeps.values() if k is not None]
    return RecoveryReport(
        method=method,
        steps=steps,
        tokens=tokens,
        seconds=seconds,
        loss_curve=curve,
        settings=settings,
        trainable_parameters=trainable,
        adapted_matrices=len(names),
        masked_matrices=len(masked),
        zeros_kept=sum(int((~k).sum()) for k in masked),
        data=data_record,
        perplexity_before=before,
        perplexity_after=after,
    )


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
