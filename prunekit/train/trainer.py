"""A small, readable classification trainer with hooks for pruning methods that act during training.

The trainer is deliberately plain: in-memory tensors, SGD or Adam, a per-step learning-rate schedule that
is a pure function of the step (so resuming needs no scheduler state), evaluation each epoch, seeded data
order, optional knowledge distillation from a teacher, and checkpoints that resume mid-epoch to the same
final weights as an uninterrupted run.

Methods plug in as :class:`Callback` objects; the hooks are, in order:
``on_train_begin`` (before the optimizer exists: prune at initialisation here), then per step
``on_after_backward`` (gradients are ready: add regularisers, read dense gradients) and ``on_step_end``
(after the optimizer step: update masks), ``on_epoch_end`` and ``on_train_end``. A callback may ask for
another round of training (iterative pruning with rewinding) through :meth:`Callback.wants_another_round`.

Driving a method from your own loop instead takes three calls: ``cb.on_train_begin(t)`` once,
``cb.on_after_backward(t)`` between ``loss.backward()`` and ``optimizer.step()``, and ``cb.on_step_end(t)``
after it, where ``t`` is any object with ``model``, ``optimizer`` and ``step`` attributes (and, for
data-driven methods, ``calibration_batches(n)``).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.apply.masks import apply_mask_, masked_parameters, masked_sparsity
from prunekit.calls import eval_mode
from prunekit.errors import CheckpointError, ConfigError, DataError
from prunekit.train.callbacks import Callback
from prunekit.train.methods import training_callback

__all__ = ["History", "TrainConfig", "Trainer"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run. ``lr_schedule``: "cosine", "step" (x0.1 at 50% and 75%) or
    "constant". ``checkpoint_every``: steps between checkpoints (also written at every epoch end when a
    checkpoint directory is given). ``kd_alpha`` > 0 distils from the teacher passed to the trainer.

    Raises :class:`~prunekit.errors.ConfigError` for ``epochs`` / ``batch_size`` < 1, ``lr`` <= 0, an unknown
    optimizer or schedule, or ``kd_alpha`` outside [0, 1].
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    seed: int = 0
    eval_batch_size: int = 1000
    checkpoint_every: int | None = None
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    steps_per_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"lr_schedule must be cosine, step or constant, got {self.lr_schedule!r}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")


class _Stop(Exception):
    """Raised by a callback through :meth:`Trainer.stop` to end training early."""


@dataclass
class History:
    """What :meth:`Trainer.fit` recorded: one metrics dict per epoch (round, epoch, step, train_loss, the
    validation loss / accuracy when there is validation data, sparsity of the masked weights) and notes."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics (empty before any epoch)."""
        return self.epochs[-1] if self.epochs else {}


def _as_tensors(data: Any, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
    else:
        raise DataError(f"{what} must be a pair of tensors (inputs, labels) or a TensorDataset")
    if len(x) == 0 or len(x) != len(y):
        raise DataError(f"{what} is empty or its inputs and labels differ in length ({len(x)} vs {len(y)})")
    return x, y


class Trainer:
    """Train ``model`` on ``train`` (inputs, labels) and evaluate on ``val`` each epoch.

    ``method``: a training-time pruning method name (see ``prunekit methods``) or a :class:`Callback`;
    ``sparsity`` and ``method_options`` configure it. ``teacher``: a model to distil from when
    ``config.kd_alpha > 0`` (soft targets at ``kd_temperature``, Hinton et al. 2015, "Distilling the
    Knowledge in a Neural Network").

    Raises :class:`~prunekit.errors.DataError` when ``train`` / ``val`` are not (inputs, labels) tensors of
    equal length, :class:`~prunekit.errors.ConfigError` for ``kd_alpha > 0`` without a teacher, and what
    :func:`~prunekit.train.methods.training_callback` raises for ``method``.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Any,
        val: Any = None,
        config: TrainConfig | None = None,
        *,
        method: str | Callback | None = None,
        sparsity: float | None = None,
        method_options: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        teacher: nn.Module | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.model = model
        self.config = config or TrainConfig()
        self.x, self.y = _as_tensors(train, "train")
        self.val = _as_tensors(val, "val") if val is not None else None
        self.callbacks: list[Callback] = list(callbacks)
        if method is not None:
            self.callbacks.insert(0, training_callback(method, sparsity, **(method_options or {})))
        if self.config.kd_alpha > 0 and teacher is None:
            raise ConfigError("kd_alpha > 0 needs a teacher model: Trainer(..., teacher=dense_model)")
        self.teacher = teacher.eval() if teacher is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 0
        self.step = 0  # optimizer steps taken in this round
        self.total_steps_done = 0  # over all rounds
        self.batch_in_epoch = 0
        self.round = 0
        self.history = History()
        self._stop = False

    # ---- helpers methods use ---------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ``ceil(len(train) / batch_size)``, capped by ``config.steps_per_epoch``."""
        full = math.ceil(len(self.x) / self.config.batch_size)
        return min(full, self.config.steps_per_epoch) if self.config.steps_per_epoch else full

    @property
    def total_steps(self) -> int:
        """Optimizer steps in one round of training."""
        return self.steps_per_epoch * self.config.epochs

    def calibration_batches(self, n: int = 1, batch_size: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``n`` fixed batches from the training data (seeded), for data-driven methods."""
        bs = batch_size or self.config.batch_size
        g = torch.Generator().manual_seed(self.config.seed + 12345)
        idx = torch.randperm(len(self.x), generator=g)[: n * bs]
        return [(self.x[idx[i : i + bs]], self.y[idx[i : i + bs]]) for i in range(0, len(idx), bs)]

    def stop(self) -> None:
        """End training after the current step (a callback's way to stop early)."""
        self._stop = True

    def make_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer. Parameters are listed in a canonical order (module order, then name) that
        does not depend on which of them are masked, so a checkpoint's optimizer state always lines up."""
        c = self.config
        params, seen = [], set()
        for _, module in self.model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if parametrize.is_parametrized(module):
                for pname, plist in module.parametrizations.items():
                    own[pname] = plist.original
            for k in sorted(own):
                if own[k].requires_grad and id(own[k]) not in seen:
                    seen.add(id(own[k]))
                    params.append(own[k])
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def lr_at(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` of a round: cosine from ``lr`` to 0, step (x0.1 at 50%
        and 75% of the round) or constant."""
        c, total = self.config, max(1, self.total_steps)
        if c.lr_schedule == "cosine":
            return 0.5 * c.lr * (1 + math.cos(math.pi * min(step, total) / total))
        if c.lr_schedule == "step":
            return c.lr * (0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total)))
        return c.lr

    # ---- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """``{"loss", "accuracy"}`` (mean cross entropy, share of correct top-1) on ``data`` (inputs, labels),
        default the validation data, in eval mode. Raises :class:`~prunekit.errors.DataError` for data that
        is not a pair of tensors of equal length."""
        x, y = _as_tensors(data, "data") if data is not None else self.val  # type: ignore[misc]
        loss, correct = 0.0, 0
        with eval_mode(self.model):
            for i in range(0, len(x), self.config.eval_batch_size):
                out = self.model(x[i : i + self.config.eval_batch_size])
                t = y[i : i + self.config.eval_batch_size]
                loss += F.cross_entropy(out, t, reduction="sum").item()
                correct += (out.argmax(1) == t).sum().item()
        return {"loss": loss / len(x), "accuracy": correct / len(x)}

    # ---- training --------------------------------------------------------------------------------

    def _loss(self, out: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        loss = F.cross_entropy(out, yb)
        if self.teacher is not None and self.config.kd_alpha > 0:
            T = self.config.kd_temperature
            with torch.no_grad():
                soft = F.softmax(self.teacher(xb) / T, dim=1)
            kd = F.kl_div(F.log_softmax(out / T, dim=1), soft, reduction="batchmean") * T * T
            loss = (1 - self.config.kd_alpha) * loss + self.config.kd_alpha * kd
        return loss

    def _order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 100003 + self.round * 1009 + epoch)
        return torch.randperm(len(self.x), generator=g)

    def fit(self, *, resume: bool = False) -> History:
        """Train (and evaluate each epoch when ``val`` was given). ``resume=True`` continues from the
        latest checkpoint in ``checkpoint_dir`` (same final weights as an uninterrupted run). Returns the
        :class:`History`. Raises :class:`~prunekit.errors.DataError` when the loss stops being finite,
        :class:`~prunekit.errors.ConfigError` for ``resume`` without ``checkpoint_dir`` and
        :class:`~prunekit.errors.CheckpointError` for a checkpoint that cannot be read or does not fit."""
        c = self.config
        resumed = False
        if resume:
            resumed = self._load_checkpoint()
        if not resumed:
            torch.manual_seed(c.seed)
            random.seed(c.seed)
            np.random.seed(c.seed % (2**32))
            for cb in self.callbacks:
                cb.on_train_begin(self)
            self.optimizer = self.make_optimizer()
        assert self.optimizer is not None
        self.model.train()
        try:
            while True:
                if self.epoch == self.step == self.batch_in_epoch == 0:
                    for cb in self.callbacks:
                        cb.on_round_begin(self)
                self._run_round()
                if self._stop:
                    break
                if not any(cb.wants_another_round(self) for cb in self.callbacks):
                    break
                self.round += 1
                self.epoch = self.step = self.batch_in_epoch = 0
                self.optimizer = self.make_optimizer()
        except _Stop:
            pass
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _run_round(self) -> None:
        c = self.config
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not c.progress,
            transient=True,
        ) as progress:
            while self.epoch < c.epochs:
                task = progress.add_task(
                    f"round {self.round} epoch {self.epoch + 1}/{c.epochs}",
                    total=self.steps_per_epoch,
                    completed=self.batch_in_epoch,
                    info="",
                )
                order = self._order(self.epoch)
                while self.batch_in_epoch < self.steps_per_epoch:
                    b = self.batch_in_epoch
                    idx = order[b * c.batch_size : (b + 1) * c.batch_size]
                    loss = self._train_step(self.x[idx], self.y[idx])
                    self.batch_in_epoch += 1
                    progress.update(task, advance=1, info=f"loss {loss:.4f}")
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self._stop:
                        return
                metrics = {"round": self.round, "epoch": self.epoch + 1, "step": self.step, "train_loss": loss}
                if self.val is not None:
                    metrics.update({f"val_{k}": v for k, v in self.evaluate().items()})
                metrics["sparsity"] = masked_sparsity(self.model)
                self.history.epochs.append(metrics)
                self.epoch += 1
                self.batch_in_epoch = 0
                for cb in self.callbacks:
                    cb.on_epoch_end(self, metrics)
                if self.checkpoint_dir is not None:
                    self.save_checkpoint()
                progress.remove_task(task)
                if self._stop:
                    return

    def _train_step(self, xb: Tensor, yb: Tensor) -> float:
        assert self.optimizer is not None
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.model(xb), xb, yb)
        if not torch.isfinite(loss):
            raise DataError(f"the training loss became {loss.item()} at step {self.step}; lower the learning rate")
        loss.backward()
        self.last_batch = (xb, yb)
        for cb in self.callbacks:
            cb.on_after_backward(self)
        self.optimizer.step()
        self.step += 1
        self.total_steps_done += 1
        for cb in self.callbacks:
            cb.on_step_end(self)
        return loss.item()

    # ---- checkpoints -----------------------------------------------------------------------------

    def _checkpoint_path(self) -> Path:
        assert self.checkpoint_dir is not None
        return self.checkpoint_dir / "checkpoint.pt"

    def save_checkpoint(self) -> Path | None:
        """Write everything needed to resume exactly (atomically: a crash never leaves a broken file)."""
        if self.checkpoint_dir is None or self.optimizer is None:
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "masks": {f"{m}.{p}" if m else p: mask.clone() for m, _, p, mask in masked_parameters(self.model)},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "total_steps_done": self.total_steps_done,
            "batch_in_epoch": self.batch_in_epoch,
            "round": self.round,
            "history": [dict(e) for e in self.history.epochs],
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "rng_torch": torch.get_rng_state(),
            "config": asdict(self.config),
        }
        path = self._checkpoint_path()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _load_checkpoint(self) -> bool:
        if self.checkpoint_dir is None:
            raise ConfigError("resume=True needs checkpoint_dir")
        path = self._checkpoint_path()
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path} ({e}); delete it to start afresh") from None
        modules = dict(self.model.named_modules())
        for key, mask in state["masks"].items():
            mname, _, pname = key.rpartition(".")
            if mname not in modules:
                raise CheckpointError(f"checkpoint {path} masks {key}, which this model does not have")
            apply_mask_(modules[mname], mask, pname)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None
        self.epoch, self.step = state["epoch"], state["step"]
        self.total_steps_done, self.batch_in_epoch = state["total_steps_done"], state["batch_in_epoch"]
        self.round = state["round"]
        self.history.epochs = list(state["history"])
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        torch.set_rng_state(state["rng_torch"])
        self.optimizer = self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        return True
