"""Learned dynamic channel gating for CNNs, trained with prunekit's trainer: FBS and CGNet.

- FBS (Gao et al. 2019, "Dynamic Channel Pruning: Feature Boosting and Suppression", ICLR): before each
  gated convolution a small predictor reads the input's channel means, ``s = relu(W mean_hw(|x|) + b)``
  ``(B, C_out)``; only the ``k = ceil(density * C_out)`` largest saliencies survive (winner-take-all), and
  the layer's normalised output is ``s_c * BN(conv(x))_c`` for those channels, 0 for the others. The
  suppressed output channels need not be computed, and the next convolution skips them as inputs.
- CGNet (Hua et al. 2019, "Channel Gating Neural Networks", NeurIPS): each gated convolution first computes
  a partial sum over the first ``ceil(base * C_in)`` input channels; an output element whose partial sum,
  normalised by its running standard deviation, stays below a per-channel threshold ``delta`` keeps it,
  the others add the contribution of the remaining input channels. Gates are hard (0/1) in the forward
  pass and use the gradient of ``sigmoid(t (z - delta))`` backwards (straight-through). The thresholds
  are learned; to reach the wanted share of gated-off elements they are moved after each step by a
  proportional controller (the paper uses a target loss on the gate share instead).

:func:`count_macs` counts, for each input of a batch, the multiply-accumulates a gated network needs, from
its layer shapes and its gates' decisions only (activations that happen to be zero save nothing): per
convolution and linear layer, the output channels the gates compute times the input channels no gate
switched off, with CGNet's partial-sum accounting for its layers; with ``skip_zero_weights=True`` also
without the products by zero weights (what a sparse kernel needs at best), so that masked (static) and gated
(run-time) networks can be compared on one count. A dense network costs exactly its dense MACs.

Both methods are registered as :class:`GatingMethod` (``fbs``, ``cgnet``), which can say before training
whether a model has layers to gate (:meth:`GatingMethod.model_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.calls import eval_mode
from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.train.callbacks import Callback
from prunekit.train.methods import TrainingMethod

__all__ = [
    "CGGate",
    "CGNetCallback",
    "FBSCallback",
    "FBSGate",
    "GATES",
    "GatedNetwork",
    "GatingMethod",
    "MacsCount",
    "add_cgnet_",
    "add_fbs_",
    "cgnet_convs",
    "conv_bn_pairs",
    "count_macs",
    "gated_network",
]

_TAG = "_prunekit_gate"


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """``(name, conv, bn)`` for each ungrouped Conv2d directly followed, among its parent's children, by
    a BatchNorm2d over its output channels (the pairs FBS gates), the network's first convolution excluded."""
    pairs: list[tuple[str, nn.Conv2d, nn.BatchNorm2d]] = []
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    for pname, parent in model.named_modules():
        kids = list(parent.named_children())
        for (n1, a), (_, b) in zip(kids, kids[1:]):
            if (
                isinstance(a, nn.Conv2d)
                and isinstance(b, nn.BatchNorm2d)
                and a.groups == 1
                and b.num_features == a.out_channels
                and a is not first
            ):
                pairs.append((f"{pname}.{n1}" if pname else n1, a, b))
    return pairs


class FBSGate(nn.Module):
    """The saliency predictor of one FBS layer: ``(B, C_in, H, W) -> (B, C_out)`` winner-take-all saliencies."""

    def __init__(self, c_in: int, c_out: int, density: float):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.ones_(self.fc.bias)  # start as the identity (all saliencies about 1)
        self.k = max(1, math.ceil(density * c_out))
        self.last: Tensor | None = None  # (B, C_out) saliencies of the last forward pass
        self.last_keep: Tensor | None = None  # (B, C_out) 1.0 for the k channels computed, 0.0 for the others

    def forward(self, x: Tensor) -> Tensor:
        """Saliencies ``(B, C_out)`` for the gated convolution's input ``x`` ``(B, C_in, H, W)``: ``relu(W
        mean_hw(|x|) + b)`` with all but the ``k`` largest per input set to 0 (all ones when ``k = C_out``).
        Records which channels are computed in ``last_keep``."""
        if self.k >= self.fc.out_features:  # nothing to suppress: the dense layer, exactly
            self.last_keep = torch.ones(x.shape[0], self.fc.out_features, dtype=x.dtype, device=x.device)
            return self.last_keep
        s = F.relu(self.fc(x.abs().mean((2, 3))))
        keep = torch.zeros_like(s).scatter_(1, s.topk(self.k, dim=1).indices, 1.0)
        self.last_keep = keep.detach()
        return s * keep


class CGGate(nn.Module):
    """Channel gating of one convolution: learnable thresholds ``delta`` ``(C_out,)`` and the running
    standard deviation of the partial sums (a buffer)."""

    std: Tensor  # (C_out,), a buffer

    def __init__(self, conv: nn.Conv2d, base: float, temperature: float = 4.0, enabled: bool = True):
        super().__init__()
        self.enabled = enabled  # False: every gate open (the dense layer, exactly)
        self.p = max(1, math.ceil(base * conv.in_channels))
        self.delta = nn.Parameter(torch.zeros(conv.out_channels))
        self.register_buffer("std", torch.ones(conv.out_channels))
        self.temperature = temperature
        self.last_open: Tensor | None = None  # (B,) share of output elements that computed the rest
        self.last_open_channels: Tensor | None = None  # (B, C_out) the same share per output channel

    def gate(self, conv: nn.Conv2d, x: Tensor, full: Tensor) -> Tensor:
        """The gated output of ``conv`` on ``x`` given its dense output ``full`` ``(B, C_out, H', W')``: the
        partial sum over the first ``p`` input channels everywhere, the rest added where the normalised partial
        sum exceeds ``delta`` (straight-through gradient in training). Records the open share per input in
        ``last_open`` (and per input and output channel in ``last_open_channels``); updates the running
        ``std`` in training."""
        if not self.enabled:
            self.last_open = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            self.last_open_channels = torch.ones(x.shape[0], full.shape[1], dtype=x.dtype, device=x.device)
            return full
        w = conv.weight
        partial = F.conv2d(x[:, : self.p], w[:, : self.p], None, conv.stride, conv.padding, conv.dilation)
        if self.training:
            with torch.no_grad():
                self.std.mul_(0.9).add_(0.1 * partial.std((0, 2, 3)).clamp_min(1e-6))
        z = partial / self.std[None, :, None, None] - self.delta[None, :, None, None]
        soft = torch.sigmoid(self.temperature * z)
        hard = (z > 0).to(x.dtype)
        g = hard + soft - soft.detach() if self.training else hard
        self.last_open = hard.mean((1, 2, 3)).detach()
        self.last_open_channels = hard.mean((2, 3)).detach()
        rest = full - partial - (conv.bias[None, :, None, None] if conv.bias is not None else 0)
        return full - rest + g * rest


@dataclass
class GatedNetwork:
    """What :func:`add_fbs_` / :func:`add_cgnet_` installed (hooks and gate modules) and can remove."""

    kind: str
    model: nn.Module
    layers: list[str]
    handles: list[Any] = field(default_factory=list)
    gates: dict[str, nn.Module] = field(default_factory=dict)
    target: float = 0.0

    def skipped_share(self) -> float | None:
        """The share of the gated layers' output computations skipped in the last forward pass: the mean, over
        the gated layers (unweighted) and the inputs of that pass, of the share of output channels suppressed
        (FBS: ``1 - k / C_out``) or of output elements that skipped their remaining input channels (CGNet).
        None before the first forward pass."""
        shares = []
        for gate in self.gates.values():
            if isinstance(gate, FBSGate) and gate.last_keep is not None:
                shares.append(1.0 - float(gate.last_keep.mean()))
            elif isinstance(gate, CGGate) and gate.last_open is not None:
                shares.append(1.0 - float(gate.last_open.mean()))
        return sum(shares) / len(shares) if shares else None

    def remove(self) -> None:
        """Remove the hooks and gate modules (the network computes densely again)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.model._modules.pop(GATES, None)
        self.model.__dict__.pop(_TAG, None)


GATES = "prunekit_gates"  # the ModuleDict on the model that holds the gates (saved with its state_dict)


def _gate_key(layer: str) -> str:
    return layer.replace(".", "__")


def _gate_holder(model: nn.Module) -> nn.ModuleDict:
    problem = _container_problem(model)
    if problem:
        raise UnsupportedModuleError(problem)
    holder = model._modules.get(GATES)
    if holder is None:
        holder = nn.ModuleDict()
        model.add_module(GATES, holder)
    return cast(nn.ModuleDict, holder)  # only this function puts a module under that name


def _check_fresh(model: nn.Module) -> None:
    if _TAG in model.__dict__:
        raise ConfigError(f"the model already has {model.__dict__[_TAG].kind} gates; call .remove() on them first")


def gated_network(model: nn.Module) -> GatedNetwork | None:
    """The gates :func:`add_fbs_` / :func:`add_cgnet_` (or the trainer's ``fbs`` / ``cgnet`` methods) installed on
    ``model``, or None when it has none."""
    net = model.__dict__.get(_TAG)
    return net if isinstance(net, GatedNetwork) else None


def cgnet_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """``(name, conv)`` for each ungrouped Conv2d with at least 4 input channels: the layers CGNet gates."""
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels >= 4
    ]


def _container_problem(model: nn.Module) -> str | None:
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return (
            f"run-time gates are kept in a submodule of the model; a {type(model).__name__} at the top would call "
            "it in its forward pass. Wrap the network in a module with its own forward"
        )
    return None


def _fbs_problem(model: nn.Module) -> str | None:
    if not conv_bn_pairs(model):
        return (
            "FBS gates a Conv2d directly followed by a BatchNorm2d over its channels; this model has no such pair "
            "(besides its first convolution). Use a CNN with batch norm, e.g. prunekit:resnet-small"
        )
    return _container_problem(model)


def _cgnet_problem(model: nn.Module) -> str | None:
    if not cgnet_convs(model):
        return "CGNet gates ungrouped Conv2d layers with at least 4 input channels; this model has none"
    return _container_problem(model)


def add_fbs_(model: nn.Module, density: float) -> GatedNetwork:
    """Install FBS gates on every conv-BN pair (:func:`conv_bn_pairs`) of ``model``, in place.

    ``density``: the share of output channels each gated layer computes per input, in (0, 1] (1: the dense
    network, exactly). Adds a :class:`FBSGate` (trainable) per gated convolution to the model's
    ``prunekit_gates`` ModuleDict, and two hooks.
    Raises :class:`~prunekit.errors.UnsupportedModuleError` when the model has no gateable pair or is a bare
    container (``nn.Sequential``), and :class:`~prunekit.errors.ConfigError` for a density outside (0, 1] or a
    model that is already gated.
    """
    if not 0 < density <= 1:
        raise ConfigError(f"density is the share of channels computed per input, in (0, 1], got {density}")
    _check_fresh(model)
    problem = _fbs_problem(model)
    if problem:
        raise UnsupportedModuleError(problem)
    pairs = conv_bn_pairs(model)
    holder = _gate_holder(model)
    net = GatedNetwork("fbs", model, [n for n, _, _ in pairs], target=1 - density)
    for name, conv, bn in pairs:
        gate = FBSGate(conv.in_channels, conv.out_channels, density).to(conv.weight.device)
        holder[_gate_key(name)] = gate
        net.gates[name] = gate

        def pre(module: nn.Module, args: tuple, gate: FBSGate = gate) -> None:
            gate.last = gate(args[0])

        def post(module: nn.Module, args: tuple, out: Tensor, gate: FBSGate = gate) -> Tensor:
            assert gate.last is not None  # set by the pre-hook on the convolution of the same forward pass
            return out * gate.last[:, :, None, None]

        net.handles += [conv.register_forward_pre_hook(pre), bn.register_forward_hook(post)]
    model.__dict__[_TAG] = net
    return net


def add_cgnet_(model: nn.Module, gated_share: float, base: float = 0.25) -> GatedNetwork:
    """Install channel gates (CGNet) on every ungrouped Conv2d with at least 4 input channels, in place.

    ``gated_share``: the share of output elements whose remaining input channels are skipped, the target
    of the threshold controller (:class:`CGNetCallback`); ``base``: the share of input channels of the
    partial sum. Adds a :class:`CGGate` per gated convolution to the model's ``prunekit_gates`` ModuleDict,
    and one hook. ``gated_share = 0`` keeps every gate open: the dense network, exactly.

    Raises :class:`~prunekit.errors.ConfigError` for ``gated_share`` outside [0, 1), ``base`` outside (0, 1) or
    a model that is already gated, and :class:`~prunekit.errors.UnsupportedModuleError` when no convolution
    qualifies or the model is a bare container.
    """
    if not 0 <= gated_share < 1 or not 0 < base < 1:
        raise ConfigError(f"cgnet takes gated_share in [0, 1) and base in (0, 1), got {gated_share}, {base}")
    _check_fresh(model)
    problem = _cgnet_problem(model)
    if problem:
        raise UnsupportedModuleError(problem)
    convs = cgnet_convs(model)
    holder = _gate_holder(model)
    net = GatedNetwork("cgnet", model, [n for n, _ in convs], target=gated_share)
    for name, conv in convs:
        gate = CGGate(conv, base, enabled=gated_share > 0).to(conv.weight.device)
        holder[_gate_key(name)] = gate
        net.gates[name] = gate

        def post(module: nn.Conv2d, args: tuple, out: Tensor, gate: CGGate = gate) -> Tensor:
            return gate.gate(module, args[0], out)

        net.handles.append(conv.register_forward_hook(post))
    model.__dict__[_TAG] = net
    return net


@dataclass
class MacsCount:
    """MACs of a forward pass: ``per_input`` ``(B,)`` what each input really needed (gates included),
    ``dense`` what one input needs in the same network without gates."""

    per_input: Tensor
    dense: float

    @property
    def mean_share(self) -> float:
        """Mean MACs per input over dense MACs per input."""
        return float(self.per_input.mean()) / self.dense if self.dense else 0.0


def _weight_counts(module: nn.Conv2d | nn.Linear, skip_zero_weights: bool) -> Tensor:
    """``(C_out, C_in)``: the products one output position of output channel ``o`` takes from input channel
    ``i`` (every weight, or the non-zero ones; 0 where a grouped convolution does not connect them)."""
    w: Tensor = module.weight
    taps = (w != 0) if skip_zero_weights else torch.ones_like(w, dtype=torch.bool)
    per = taps.flatten(2).sum(2).double() if w.dim() > 2 else taps.double()  # (C_out, C_in / groups)
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    if groups == 1:
        return per
    c_out, c_in_g = per.shape
    out_g = c_out // groups
    full = torch.zeros(c_out, c_in_g * groups, dtype=torch.float64)
    for g in range(groups):
        full[g * out_g : (g + 1) * out_g, g * c_in_g : (g + 1) * c_in_g] = per[g * out_g : (g + 1) * out_g]
    return full


@dataclass
class _Call:
    """One call of a Conv2d / Linear in the counted pass, with the gates' decisions for it."""

    module: nn.Conv2d | nn.Linear
    positions: int  # output positions per input and output channel
    keep: Tensor | None  # (B, C_out) output channels computed (an FBS gate's top-k); None: all
    open_channels: Tensor | None  # (B, C_out) a CGNet gate's open share per output channel
    p: int  # a CGNet gate's partial-sum input channels
    predictor: bool  # an FBS predictor (not part of the dense network)


def _channels_on(module: nn.Module, inp: Tensor) -> Tensor:
    """``(B, C_in)`` of a probe pass's input to ``module``: True for the channels no gate switched off (the
    probe writes NaN everywhere and exact zeros only where a gate suppressed a channel)."""
    if isinstance(module, nn.Conv2d):
        return ~(inp == 0).flatten(2).all(2)
    return ~(inp.reshape(inp.shape[0], -1, inp.shape[-1]) == 0).all(1)


def _gate_state(gates: list[nn.Module]) -> list[dict[str, Any]]:
    keys = ("last", "last_keep", "last_open", "last_open_channels")
    return [{k: getattr(g, k) for k in keys if hasattr(g, k)} for g in gates]


def _run(model: nn.Module, x: Tensor, hooks: list[tuple[nn.Module, Callable[..., Any]]]) -> None:
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def count_macs(model: nn.Module, x: Tensor, *, skip_zero_weights: bool = False) -> MacsCount:
    """Multiply-accumulates each input of ``x`` ``(B, ...)`` needs in ``model`` (gated or not).

    What counts as saved is decided by the network's structure and its gates, never by the data: an
    activation that happens to be zero (a ReLU zero, a blank pixel) is multiplied like any other.

    - Every Conv2d / Linear costs its layer shape: ``positions x C_out x C_in x taps`` (``/ groups``), so a
      channel removed structurally (a smaller layer) saves.
    - An FBS layer computes only its ``k`` kept output channels for an input (its predictor's MACs are
      counted too), and a layer that reads those channels, through any number of element-wise layers,
      skips the suppressed ones as inputs. Which input channels a gate switched off is found by a probe pass:
      the same gate decisions on an input of NaNs, where a channel is exactly zero only if the gates made it
      so (a channel mixed with anything else, e.g. a residual sum, stays on).
    - A CGNet layer costs its partial sum over the first ``p`` input channels for every output element,
      plus the remaining input channels for the share of output elements whose gate opened.

    With ``skip_zero_weights=False`` (the default) every weight of those products counts: what a dense kernel
    executes. ``skip_zero_weights=True`` counts only the products with a non-zero weight (masked weights are
    zeros): at best what a kernel that skips zero weights needs. ``dense`` is the same in both: every weight,
    no gates. Runs the model once in eval mode (twice with FBS gates: the probe).
    """
    net = gated_network(model)
    gate_list = list(net.gates.values()) if net else []
    gates = net.gates.items() if net else []
    fbs = {id(model.get_submodule(n)): g for n, g in gates if isinstance(g, FBSGate)}
    cg = {id(model.get_submodule(n)): g for n, g in gates if isinstance(g, CGGate)}
    gate_fcs = {id(g.fc) for g in fbs.values()}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    calls: list[_Call] = []

    def record(module: nn.Module, args: tuple, out: Tensor) -> None:
        inp = args[0]
        lin = isinstance(module, nn.Linear)
        positions = inp.reshape(inp.shape[0], -1, inp.shape[-1]).shape[1] if lin else out.shape[2] * out.shape[3]
        g, gg = fbs.get(id(module)), cg.get(id(module))
        keep = g.last_keep if g is not None else None
        open_ch = gg.last_open_channels if gg is not None else None
        mod = cast("nn.Conv2d | nn.Linear", module)
        calls.append(_Call(mod, positions, keep, open_ch, gg.p if gg else 0, id(module) in gate_fcs))

    _run(model, x, [(m, record) for m in layers])
    on: list[Tensor | None] = [None] * len(calls)
    if fbs:  # which input channels the FBS gates switched off, per input
        state = _gate_state(gate_list)
        keeps = {id(model.get_submodule(n)): g.last_keep for n, g in gates if isinstance(g, FBSGate)}
        bns = {id(bn): keeps[id(conv)] for _, conv, bn in conv_bn_pairs(model) if id(conv) in keeps}
        seen: list[Tensor] = []

        def probe(module: nn.Module, args: tuple, out: Tensor) -> None:
            seen.append(_channels_on(module, args[0]))

        def suppress(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            keep = bns[id(module)]
            assert keep is not None  # set by the counted pass
            return torch.where(keep[:, :, None, None] > 0, out, torch.zeros_like(out))

        modules = dict(model.named_modules())
        hooks: list[tuple[nn.Module, Callable[..., Any]]] = [(m, probe) for m in layers]
        hooks += [(m, suppress) for m in modules.values() if id(m) in bns]
        try:
            _run(model, torch.full_like(x, float("nan")), hooks)
        finally:
            for gate, saved in zip(gate_list, state):
                for k, v in saved.items():
                    setattr(gate, k, v)
        if len(seen) != len(calls):
            raise UnsupportedModuleError("the model's layers ran differently on the probe pass; cannot count MACs")
        on = list(seen)

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    dense = 0.0
    for c, ch_on in zip(calls, on):
        full = _weight_counts(c.module, False)
        if not c.predictor:
            dense += c.positions * float(full.sum())
        cnt = _weight_counts(c.module, True) if skip_zero_weights else full
        b = x.shape[0]
        inp = torch.ones(b, cnt.shape[1], dtype=torch.float64) if ch_on is None else ch_on.double()
        keep = torch.ones(b, cnt.shape[0], dtype=torch.float64) if c.keep is None else c.keep.double()
        if c.open_channels is not None:
            first = inp.clone()
            first[:, c.p :] = 0  # the partial sum reads the first p input channels
            per_channel = first @ cnt.T + c.open_channels.double() * ((inp - first) @ cnt.T)
        else:
            per_channel = inp @ cnt.T
        total.add_(c.positions * (keep * per_channel).sum(1))
    return MacsCount(total, dense)


# ---- training-time methods: trainer callbacks, registered as `fbs` and `cgnet` ------------------------


class FBSCallback(Callback):
    """Trainer callback of ``method="fbs"``: installs the gates before the optimizer is made, so the
    predictors train with the network. ``sparsity``: the share of channels suppressed per input."""

    def __init__(self, sparsity: float):
        self.sparsity = sparsity
        self.net: GatedNetwork | None = None

    def on_train_begin(self, trainer: Any) -> None:
        """Install the FBS gates on ``trainer.model`` (once) before the optimizer is built."""
        if self.net is None:
            self.net = add_fbs_(trainer.model, density=1 - self.sparsity)


class CGNetCallback(Callback):
    """Trainer callback of ``method="cgnet"``: installs the gates, then after every step moves each
    layer's thresholds towards the target share of gated-off elements (``sparsity``):
    ``delta += rate * (target - closed_share)``."""

    def __init__(self, sparsity: float, base: float = 0.25, rate: float = 0.05):
        self.sparsity, self.base, self.rate = sparsity, base, rate
        self.net: GatedNetwork | None = None

    def on_train_begin(self, trainer: Any) -> None:
        """Install the channel gates on ``trainer.model`` (once) before the optimizer is built."""
        if self.net is None:
            self.net = add_cgnet_(trainer.model, gated_share=self.sparsity, base=self.base)

    def on_step_end(self, trainer: Any) -> None:
        """Move every gate's thresholds by ``rate * (target - closed share)`` after the optimizer step."""
        assert self.net is not None
        with torch.no_grad():
            for gate in self.net.gates.values():
                if isinstance(gate, CGGate) and gate.last_open is not None:
                    closed = 1 - float(gate.last_open.mean())
                    gate.delta.add_(self.rate * (self.sparsity - closed))


@dataclass
class GatingMethod(TrainingMethod):
    """A run-time gating method (``fbs``, ``cgnet``): trained by the trainer like any training-time method,
    it decides per input what is computed. ``sparsity`` means, per method: ``fbs``, the share of each gated
    layer's output channels suppressed per input (``k = ceil((1 - sparsity) C_out)`` are computed);
    ``cgnet``, the share of gated output elements that skip their remaining input channels, the target of
    the threshold controller (the share reached is measured, not guaranteed)."""

    problem: Callable[[nn.Module], str | None] | None = None

    def model_problem(self, model: nn.Module) -> str | None:
        """Why the gates cannot go on ``model`` (no layer of the kind the method gates, or a bare container
        at the top); None when they can."""
        return self.problem(model) if self.problem is not None else None


def _register() -> None:
    from prunekit.methods.base import METHODS

    for name, factory, desc, paper, problem in (
        (
            "fbs",
            FBSCallback,
            "run-time channel pruning: per-input saliency predictors keep the top-k channels "
            "(Gao et al. 2019); sparsity = share of channels suppressed per input",
            "Dynamic Channel Pruning: Feature Boosting and Suppression",
            _fbs_problem,
        ),
        (
            "cgnet",
            CGNetCallback,
            "run-time channel gating: a partial sum over some input channels decides "
            "where the rest is computed (Hua et al. 2019); sparsity = share of output elements gated off",
            "Channel Gating Neural Networks",
            _cgnet_problem,
        ),
    ):
        if name not in METHODS:
            # trained during training (the trainer runs it), decides per input at run time
            METHODS.add(name, GatingMethod(name, desc, factory, paper, problem=problem), desc)


_register()
