"""Self-compression (Cséfalvay & Imber, "Self-Compressing Neural Networks", arXiv 2301.13142).

Every compressible layer gets, per output channel, a learnable bit depth ``b`` and exponent ``e``; its
weights are used as ``q(w, b, e) = 2^e · round(clamp(2^-e · w, -2^(b-1), 2^(b-1) - 1))`` with ``b`` taken
as ``relu(b)`` and only the rounding straight-through. The loss adds ``γ · Q``, Q the average bits per
original weight, so bit depths fall; a channel at 0 bits is physically removed from the network (and the
matching inputs of its consumers) at the next step boundary, with the optimizer state following.

A channel at 0 bits still sends its BatchNorm shift through the activation; we zero a dead channel's
output after its BatchNorm, so that removing it later is exact (the network's function is unchanged by
surgery) and the decoded artifact computes exactly what was trained. The zero is made by zeroing the
channel's BatchNorm scale and shift before each forward pass (its convolution output is already zero), a
per-channel operation instead of a multiply over every activation (which cost 13% of a step).

Whether a channel died is asked every ``PRUNE_EVERY`` steps, not every step (the answer needs the device
to stop and report). In between a dead channel is already silent, and it stays dead: its ``b`` has no
gradient below zero and Adam keeps moving it down, so the delay changes when compute is saved, not what
the network computes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmarks.compressed import CompressedModel, LayerCode, export_layers, full_shapes
from benchmarks.models import ModelSpec, topology
from benchmarks.topology import dead_space_channels, prune_, slice_param_, weight_of
from methods.base import ConfigError, Method, ParamGroup
from methods.registry import register

PRUNE_EVERY = 16  # steps between checks for channels at 0 bits (each check synchronises with the device)
GRACE_BITS = 1.0  # during the grace period no bit depth falls below this
COSTS = ("bits", "bitops")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def clamped(w: torch.Tensor, b: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w / 2^e clamped to the signed range of ``b`` bits, 2^e), per output channel: rounded, the first is
    the integer code the export stores; training rounds it with the straight-through estimator."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    b = torch.relu(b).view(shape)
    scale = torch.pow(2.0, e).view(shape)
    half = torch.pow(2.0, b - 1)
    return torch.minimum(torch.maximum(w / scale, -half), half - 1), scale


def quantize(w: torch.Tensor, b: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """q(w, b, e) with per-output-channel ``b`` and ``e``; gradients reach ``b`` and ``e`` through the
    clamp bounds and ``2^e``, and ``w`` inside the clamp range."""
    x, scale = clamped(w, b, e)
    return scale * round_ste(x)


#: the largest penalty weight accepted: the size term Q is bits per original weight (8 at the start), so
#: beyond this it swamps the task loss (about 2) by three orders of magnitude and training only diverges
MAX_GAMMA = 100.0


class ChannelQuantizer(nn.Module):
    """A weight parametrization holding the layer's bit depths and exponents.

    Two notions of a dead channel: at ``b <= 0`` it is gone for good and removed from the network
    (``alive``); a channel whose codes all round to zero while ``b > 0`` (weight decay shrinks weights
    relative to 2^e) is silent: the export drops it, so training zeroes its output too (``sounding``), but it
    may speak again once a weight rounds away from zero."""

    def __init__(self, weight: torch.Tensor, bits_init: float):
        super().__init__()
        out = weight.shape[0]
        self.b = nn.Parameter(torch.full((out,), float(bits_init), device=weight.device))
        self.e = nn.Parameter(initial_exponents(weight, bits_init))
        self._nonzero: torch.Tensor | None = None  # per channel: any code nonzero, at the last forward

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = quantize(w, self.b, self.e)
        self._nonzero = (q.detach() != 0).reshape(q.shape[0], -1).any(dim=1)
        return q

    def alive(self) -> torch.Tensor:
        return self.b.detach() > 0

    def sounding(self) -> torch.Tensor:
        """Channels whose output counts: alive with at least one nonzero code (as in the export)."""
        a = self.alive()
        return a if self._nonzero is None or self._nonzero.shape != a.shape else a & self._nonzero


def initial_exponents(weight: torch.Tensor, bits: float) -> torch.Tensor:
    """The smallest integer ``e`` per channel at which the channel's largest weight is not clipped."""
    top = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).clamp(min=1e-8)
    return torch.ceil(torch.log2(top / (2 ** (bits - 1) - 1)))


@torch.no_grad()
def output_positions(model: nn.Module, topo, image_size: int = 32) -> dict[str, int]:
    """Per compressible layer, the positions its output is computed at for one image (H·W of a
    convolution's output, 1 for a linear layer): how often each of its weights is applied."""
    modules = dict(model.named_modules())
    found: dict[str, int] = {}
    hooks = [modules[n.name].register_forward_hook(
        lambda m, i, o, name=n.name: found.__setitem__(name, math.prod(o.shape[2:]))) for n in topo.nodes]
    was = model.training
    try:
        model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return found


def integer_bits(codes: torch.Tensor) -> torch.Tensor:
    """Per output channel, the fewest whole bits holding its signed codes (0 when they are all zero)."""
    c = codes.reshape(codes.shape[0], -1)
    hi, lo = c.max(dim=1).values, c.min(dim=1).values
    need_hi = torch.where(hi > 0, torch.floor(torch.log2(hi.double().clamp(min=1))) + 2, 0)
    need_lo = torch.where(lo < 0, torch.ceil(torch.log2((-lo).double())) + 1, 0)
    return torch.maximum(need_hi, need_lo).long()


def collapsed_layers(topo, alive: dict[str, int]) -> list[str]:
    """Layers that lost every output channel: the network then passes nothing through them, and its output
    no longer depends on the input beyond that point (the run records it; the tables mark it)."""
    return [n.name for n in topo.nodes if alive[n.name] == 0]


@register("self_compression")
class SelfCompression(Method):
    @dataclass(frozen=True)
    class Config:
        gamma: float = 0.01  # weight of Q (bits per original weight) in the loss: the size/accuracy knob
        bits_init: float = 8.0  # initial bit depth of every channel
        lr_bits: float = 0.5  # Adam learning rate of b and e: the paper's (README: 0.05 wins near-lossless)
        from_float: bool = False  # fine-tune the cached float model instead of training from scratch
        eps_bits: float = 1e-8  # Adam epsilon of b and e: 1e-8 makes each step ~lr_bits long (sign-like)
        bits_schedule: str = "scheduled"  # b/e learning rate: "scheduled" (the weights' warm-up and decay) or "constant"
        gamma_warmup: float = 0.0  # share of training over which γ ramps linearly from 0
        grace: float = 0.0  # share of training before a channel may die: b is held at >= GRACE_BITS till then
        cost: str = "bits"  # what Q counts: "bits" (the paper) or "bitops" (each layer's bits × its output positions)

        def validate(self) -> None:
            if not (0 <= self.gamma <= MAX_GAMMA):  # NaN fails this too
                raise ConfigError(f"self_compression.gamma must be a finite number in [0, {MAX_GAMMA:g}] (the paper's "
                                  f"lie in 0.001-1), got {self.gamma}")
            if not (1 <= self.bits_init <= 32):
                raise ConfigError(f"self_compression.bits_init must lie in [1, 32], got {self.bits_init}")
            if not 0 < self.lr_bits <= 10:
                raise ConfigError(f"self_compression.lr_bits must lie in (0, 10], got {self.lr_bits}")
            if not 0 < self.eps_bits <= 1:
                raise ConfigError(f"self_compression.eps_bits must lie in (0, 1], got {self.eps_bits}")
            if self.bits_schedule not in ("scheduled", "constant"):
                raise ConfigError(f"self_compression.bits_schedule must be 'scheduled' or 'constant', "
                                  f"got {self.bits_schedule!r}")
            for k in ("gamma_warmup", "grace"):
                if not 0 <= getattr(self, k) <= 1:
                    raise ConfigError(f"self_compression.{k} is a share of training in [0, 1], got {getattr(self, k)}")
            if self.cost not in COSTS:
                raise ConfigError(f"self_compression.cost must be one of {', '.join(COSTS)}, got {self.cost!r}")

    knob = "gamma"
    default_grid = {
        "smoke": {"gamma": [0.003, 0.3]},
        # 8 epochs from scratch lose ~3 points to the short schedule alone: the CPU preset fine-tunes
        "cpu": {"gamma": [0.001, 0.003, 0.01, 0.03, 0.1], "from_float": [True]},
        "paper": {"gamma": [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]},
    }

    @property
    def needs_float_model(self) -> bool:
        return self.config.from_float

    def prepare(self, model: nn.Module) -> nn.Module:
        self.topo = topology(model)
        self.modules = dict(model.named_modules())
        # what one weight of a layer costs in Q: 1 (bits), or the output positions it is applied at (bitops)
        self.positions = (output_positions(model, self.topo) if self.config.cost == "bitops"
                          else {n.name: 1 for n in self.topo.nodes})
        self.full_weights = {n.name: weight_of(self.modules[n.name]).numel() for n in self.topo.nodes}
        self.n_weights = sum(self.positions[k] * v for k, v in self.full_weights.items())  # Q's denominator
        self.quantizers: dict[str, ChannelQuantizer] = {}
        for n in self.topo.nodes:
            m = self.modules[n.name]
            q = ChannelQuantizer(m.weight, self.config.bits_init)
            parametrize.register_parametrization(m, "weight", q)
            self.quantizers[n.name] = q
            if n.bn is not None:
                self.modules[n.bn].register_forward_pre_hook(self._silence_hook(q))
        self.steps = 0
        self.progress = 0.0
        return model

    @staticmethod
    def _silence_hook(q: ChannelQuantizer):
        # runs after the layer's own forward, so ``sounding`` reflects the codes this very forward used; the
        # layer's output is zero in a silent channel, so zero scale and shift make the BatchNorm output zero
        def hook(bn: nn.Module, _inp: Any) -> None:
            with torch.no_grad():
                keep = q.sounding().to(bn.weight.dtype)
                bn.weight.mul_(keep)
                bn.bias.mul_(keep)
        return hook

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        params = [p for q in self.quantizers.values() for p in (q.b, q.e)]
        return [ParamGroup(params, lr=self.config.lr_bits, optimizer="adam", eps=self.config.eps_bits,
                           scheduled=self.config.bits_schedule == "scheduled")]

    def _alive_inputs(self) -> dict[str, torch.Tensor]:
        alive_out = {name: q.alive() for name, q in self.quantizers.items()}
        # a space channel is alive while any producer has b > 0 (surgery keeps one channel of a fully dead
        # space for the module's sake; Q must still count it as dead); device ops only, no synchronisation
        return {s: torch.stack([alive_out[n.name] for n in self.topo.producers(s)]).any(0) for s in self.topo.spaces}

    def size_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, weights remaining) from the real b: bits per original weight, or with ``cost="bitops"`` bits
        per original weight-application (each layer's weights counted once per output position), and the
        share of weights still alive."""
        alive_in = self._alive_inputs()
        q_sum, weights = 0.0, 0.0
        for n in self.topo.nodes:
            q = self.quantizers[n.name]
            w = weight_of(self.modules[n.name])
            per_in = math.prod(w.shape[2:]) * n.in_factor
            n_in = per_in * (alive_in[n.in_space].sum() if n.in_space in alive_in else w.shape[1] // n.in_factor)
            q_sum = q_sum + self.positions[n.name] * n_in * torch.relu(q.b).sum()
            weights = weights + n_in * q.alive().sum()
        return (q_sum / self.n_weights,
                torch.as_tensor(weights, dtype=torch.float32) / sum(self.full_weights.values()))

    def before_step(self, model: nn.Module, progress: float) -> None:
        self.progress = progress

    def gamma_now(self) -> float:
        """γ, ramped up linearly over the first ``gamma_warmup`` of training."""
        warm = self.config.gamma_warmup
        return self.config.gamma * (min(1.0, self.progress / warm) if warm > 0 else 1.0)

    def penalty(self, model: nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
        return self.gamma_now() * self.size_terms()[0]

    def after_step(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.steps += 1
        if self.progress < self.config.grace:  # no channel may die yet
            with torch.no_grad():
                for q in self.quantizers.values():
                    q.b.clamp_(min=GRACE_BITS)
        if self.steps % PRUNE_EVERY == 0:
            self.prune(model, optimizers)

    def prune(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Remove every channel at 0 bits now (and the matching inputs of its consumers)."""
        dead_out = {name: ~q.alive() for name, q in self.quantizers.items()}
        if not bool(torch.stack([d.any() for d in dead_out.values()]).any()):  # one synchronisation
            return
        keep = prune_(model, self.topo, dead_space_channels(self.topo, dead_out), optimizers)
        for space, idx in keep.items():
            for n in self.topo.producers(space):
                q = self.quantizers[n.name]
                slice_param_(q.b, 0, idx, optimizers)
                slice_param_(q.e, 0, idx, optimizers)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            q, w = self.size_terms()
        alive = {n: int(q_.alive().sum()) for n, q_ in self.quantizers.items()}
        return {"Q": float(q), "est_bits_pct": 100.0 * float(q) / 32, "est_weights_pct": 100.0 * float(w),
                "channels_alive": alive, "collapsed_layers": collapsed_layers(self.topo, alive)}

    @torch.no_grad()
    def export(self, model: nn.Module, spec: ModelSpec) -> CompressedModel:
        shapes = full_shapes(spec)
        layers = []
        zero_bn: dict[str, torch.Tensor] = {}
        for n in self.topo.nodes:
            q = self.quantizers[n.name]
            w = weight_of(self.modules[n.name]).detach().float()
            x, scale = clamped(w, q.b.detach(), q.e.detach())
            codes = torch.round(x).long().cpu()
            codes[~q.alive().cpu()] = 0
            layers.append(LayerCode(n.name, n.kind, tuple(w.shape), shapes[n.name], "channel", codes,
                                    bits=integer_bits(codes), scales=scale.flatten().float().cpu()))
            if n.bn is not None:  # dead or silent: every code zero, output masked in training
                zero_bn[n.bn] = (codes.reshape(codes.shape[0], -1) == 0).all(dim=1)
        cm = export_layers(model, spec, layers)
        for bn, dead in zero_bn.items():  # masked channels output exactly zero in the decoded model too
            for k in ("weight", "bias"):
                cm.others[f"{bn}.{k}"][dead] = 0.0
        return cm
