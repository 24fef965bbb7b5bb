"""DiffQ (Défossez, Adi & Synnaeve, "Differentiable Model Compression via Pseudo Quantization Noise",
TMLR 2022, arXiv 2104.09987): the baseline the self-compression paper compares against.

Our own implementation (the reference package ``diffq`` is CC-BY-NC and its bit packing drops groups at 15
bits); the tests use that package only as an oracle.

Every compressible layer's weight ``w`` is split into groups of ``group_size`` consecutive weights in
row-major order (the last group may be short: a size the group does not divide still works, unlike the
reference, which asserts). Each group has a learnable logit ``l`` and bit depth
``b = b_min + sigmoid(l) · (b_max - b_min)``. With ``Δ(b) = (max w - min w) / (2^b - 1)`` the quantization
step on the tensor's range:

- training mode: the layer uses ``w + Δ(b) · u``, ``u`` Gaussian with std 1/2 (the reference's default, ours)
  or uniform on [-1/2, 1/2] (the paper's text, ``noise=uniform``), fresh at every forward. No straight-through estimator: ``b`` gets its
  gradient through the noise's scale, ``w`` through both terms (the range included, as in the reference);
- eval mode (``not module.training``): true uniform quantization with ``b`` rounded to an integer in
  [1, b_max], computed exactly as ``benchmarks.compressed.decode_layer`` decodes the exported ``group``
  codes, so the loop's per-epoch test accuracy is the exported model's. DiffQ never prunes.

The loss adds ``lam · S / N``: ``S`` the differentiable size in bits, ``N`` the float model's compressible
weights, so the penalty is in bits per original weight (like self-compression's Q) and ``lam`` is roughly
the task-loss increase the method will trade for one bit per weight. ``S`` counts the same items as the
accounting (``benchmarks.accounting.size``), per quantized tensor:

- Σ over groups of (weights in the group) × b;
- the tensor's range, 2 × 32 bits;
- per group its bit depth, at ``bit_length(b_max - b_min)`` (= the issue's ⌈log2(1 + b_max - b_min)⌉)
  bits. The accounting stores them at ``bit_length(max - min)`` of the layer's actual integer bit depths:
  the same width when those are spread widely enough (with the defaults, max - min >= 8), narrower
  otherwise. So at integer bits ``S`` equals the measured size in the first case and is an upper bound
  always (the reference instead uses its max rounded bits minus b_min, plus an 8-bit header per tensor);
- no header: the packed file's own header (format, shapes, widths) is counted in ``packed_bytes``, never in
  ``bits``, for every method alike;

and a layer smaller than ``min_size`` weights stays float (32 bits per weight in both). BatchNorm and biases
stay float outside the percentages, as for every method.

Choosing λ: per group, the penalty pulls ``b`` down by ``lam · (its weights) / N`` per bit while the noise
costs about ``2 ln 2 · ΔL_g`` per bit (``ΔL_g`` the group's share of the expected loss increase, which
falls fourfold with every bit: ``Δ² ∝ 4^-b``). At equilibrium ``lam ≈ 1.4 · ΔL``: λ is roughly the
training-loss increase the quantization noise is allowed to cost, and each ×4 of λ takes about one bit
off. Hence log-spaced grids from 1e-3 (noise costs ~0.001 of loss: near-float accuracy) to 0.3-1 (the
loss pays ~0.2-0.7: most groups near b_min); tune them on real data.

The logits train with their own constant-rate Adam (no weight decay). Adam moves a logit by at most about
its learning rate a step, and at 8 bits ``db/dl = 13 · σ'(l) ≈ 3.2``: the reference's 1e-3 moves bits by
≤ 0.003 a step (≤ 2.6 bits over the ~800 steps of the cpu preset), while 0.05 lets a group cross the
range in ~100 consistent steps and jitters bits by only ~0.15 a step.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmarks.compressed import CompressedModel, LayerCode, export_layers, full_shapes
from benchmarks.models import ModelSpec, topology
from benchmarks.topology import weight_of
from methods.base import ConfigError, Method, ParamGroup
from methods.registry import register

log = logging.getLogger(__name__)

GROUP_SIZES = (1, 4, 8, 16)
NOISES = ("uniform", "gaussian")
RANGE_BITS = 64  # the tensor's min and max, float32 each


def bits_from_logit(logit: torch.Tensor, b_min: float, b_max: float) -> torch.Tensor:
    """b = b_min + sigmoid(l) · (b_max - b_min): strictly inside (b_min, b_max)."""
    return b_min + torch.sigmoid(logit) * (b_max - b_min)


def logit_for_bits(bits: float, b_min: float, b_max: float) -> float:
    """The logit at which ``bits_from_logit`` gives ``bits`` (which must lie strictly inside the range)."""
    t = (bits - b_min) / (b_max - b_min)
    return math.log(t / (1 - t))


def per_weight(x: torch.Tensor, group_size: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Spread a per-group tensor over the weights of ``shape`` (row-major groups, the last one may be short)."""
    n = math.prod(shape)
    return x[:, None].expand(-1, group_size).reshape(-1)[:n].view(shape)


def dequantize(codes: torch.Tensor, bits: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Float32 weights of the ``group`` codes (``bits`` per weight): the same arithmetic as
    ``decode_layer``, so the eval-mode model and the decoded export agree bit for bit."""
    step = (hi - lo) / (torch.pow(2.0, bits.double()) - 1)
    return (lo + codes.double() * step).float()


def quantize_codes(w: torch.Tensor, bits: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Nearest level of each weight on the uniform grid of 2^bits levels over [lo, hi] (int64)."""
    levels = torch.pow(2.0, bits.double()) - 1
    if hi == lo:
        return torch.zeros_like(w, dtype=torch.int64)
    x = (w.double() - lo) / (hi - lo) * levels
    return torch.minimum(torch.round(x).clamp(min=0), levels).long()


class GroupQuantizer(nn.Module):
    """A weight parametrization holding one bit-depth logit per group of the layer's weights."""

    def __init__(self, weight: torch.Tensor, group_size: int, b_min: int, b_max: int, bits_init: float,
                 noise: str):
        super().__init__()
        self.group_size, self.b_min, self.b_max, self.noise = group_size, b_min, b_max, noise
        self.numel = weight.numel()
        self.n_groups = math.ceil(self.numel / group_size)
        self.field_width = (b_max - b_min).bit_length()
        init = logit_for_bits(bits_init, b_min, b_max)
        self.logit = nn.Parameter(torch.full((self.n_groups,), init, device=weight.device))

    def bits(self) -> torch.Tensor:
        """Continuous bit depth per group."""
        return bits_from_logit(self.logit, self.b_min, self.b_max)

    def int_bits(self) -> torch.Tensor:
        """Bit depth per group used in eval mode and in the export: rounded into [1, b_max]."""
        return torch.round(self.bits().detach()).clamp(1, self.b_max).long()

    def noise_like(self, w: torch.Tensor) -> torch.Tensor:
        """Pseudo quantization noise: per weight Δ(b) times uniform [-1/2, 1/2] or N(0, 1/4)."""
        delta = (w.max() - w.min()) / (torch.pow(2.0, self.bits()) - 1)
        delta = per_weight(delta, self.group_size, w.shape)
        if self.noise == "uniform":
            return delta * (torch.rand_like(delta) - 0.5)
        return delta * torch.randn_like(delta) / 2

    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(codes of ``w``'s shape, integer bits per group, lo, hi): exactly what the export stores."""
        w = w.detach()
        lo, hi = float(w.min()), float(w.max())
        bits = self.int_bits().to(w.device)
        return quantize_codes(w, per_weight(bits, self.group_size, w.shape), lo, hi), bits, lo, hi

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            return w + self.noise_like(w)
        codes, bits, lo, hi = self.encode(w)
        return dequantize(codes, per_weight(bits, self.group_size, w.shape), lo, hi).to(w.dtype)

    def code_bits(self, rounded: bool = False) -> torch.Tensor:
        """Σ over groups of (weights in the group) × b; differentiable unless ``rounded``."""
        b = self.int_bits().to(self.logit.dtype) if rounded else self.bits()
        pad = self.n_groups * self.group_size - self.numel  # the short last group has this many fewer
        return self.group_size * b.sum() - pad * b[-1]

    def size_bits(self, rounded: bool = False) -> torch.Tensor:
        """Bits of this tensor: codes, range and the per-group bit-depth field."""
        return self.code_bits(rounded) + RANGE_BITS + self.n_groups * self.field_width


@register("diffq")
class DiffQ(Method):
    @dataclass(frozen=True)
    class Config:
        lam: float = 0.01  # λ: weight of the size penalty in bits per original weight: the size/accuracy knob
        group_size: int = 8  # weights sharing one bit depth (reference: class default 1, paper's LM runs 16)
        b_min: int = 2
        b_max: int = 15
        bits_init: float = 8.0
        # "gaussian" (std Δ/2): the reference code's default and, by its authors' revision notes, what they
        # used in practice; "uniform" (±Δ/2) is the paper's text, and this suite's default until 2026-11-24
        noise: str = "gaussian"
        lr_logits: float = 0.05  # constant Adam rate of the logits (module doc; the reference's is 1e-3)
        min_size: int = 0  # layers with fewer weights stay float; 0: quantize every layer, as self_compression
        from_float: bool = False  # fine-tune the cached float model instead of training from scratch

        def validate(self) -> None:
            if not (0 <= self.lam <= 100):  # NaN fails this too
                raise ConfigError(f"diffq.lam must be a finite number in [0, 100] (the grid's lie in 0.003-0.3), "
                                  f"got {self.lam}")
            if self.group_size not in GROUP_SIZES:
                raise ConfigError(f"diffq.group_size must be one of {GROUP_SIZES}, got {self.group_size}")
            if not (1 <= self.b_min < self.b_max <= 24):
                raise ConfigError(f"diffq needs 1 <= b_min < b_max <= 24, got b_min={self.b_min}, "
                                  f"b_max={self.b_max}")
            if not (self.b_min < self.bits_init < self.b_max):
                raise ConfigError(f"diffq.bits_init must lie strictly between b_min and b_max, got "
                                  f"{self.bits_init}")
            if self.noise not in NOISES:
                raise ConfigError(f"diffq.noise must be one of {NOISES}, got {self.noise!r}")
            if not (0 < self.lr_logits <= 10):
                raise ConfigError(f"diffq.lr_logits must lie in (0, 10], got {self.lr_logits}")
            if self.min_size < 0:
                raise ConfigError(f"diffq.min_size must be >= 0, got {self.min_size}")

    # λ ≈ 1.4 × the loss increase the noise may cost, one bit less per ×4 (module doc)
    knob = "lam"
    default_grid = {
        "smoke": {"lam": [0.01, 1.0]},
        "cpu": {"lam": [0.003, 0.01, 0.03, 0.1, 0.3], "from_float": [True]},  # as self_compression's
        "paper": {"lam": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]},
    }

    @property
    def needs_float_model(self) -> bool:
        return self.config.from_float

    def prepare(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        self.topo = topology(model)
        self.modules = dict(model.named_modules())
        self.n_weights = sum(weight_of(self.modules[n.name]).numel() for n in self.topo.nodes)
        self.quantizers: dict[str, GroupQuantizer] = {}
        self.float_weights = 0
        for n in self.topo.nodes:
            m = self.modules[n.name]
            if m.weight.numel() < cfg.min_size:
                self.float_weights += m.weight.numel()
                continue
            q = GroupQuantizer(m.weight, cfg.group_size, cfg.b_min, cfg.b_max, cfg.bits_init, cfg.noise)
            parametrize.register_parametrization(m, "weight", q)
            self.quantizers[n.name] = q
        log.debug("diffq: %d quantized layers, %d float weights", len(self.quantizers), self.float_weights)
        return model

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        if not self.quantizers:  # every layer below min_size: nothing to learn
            return []
        return [ParamGroup([q.logit for q in self.quantizers.values()], lr=self.config.lr_logits,
                           optimizer="adam", weight_decay=0.0)]

    def size_bits(self, rounded: bool = False) -> torch.Tensor:
        """The model's estimated size in bits, the same items as ``size_report(export).bits`` (module doc)."""
        total = torch.tensor(32.0 * self.float_weights)
        for q in self.quantizers.values():
            total = total.to(q.logit.device) + q.size_bits(rounded)
        return total

    def penalty(self, model: nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
        return self.config.lam * self.size_bits() / self.n_weights

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            est, est_int = float(self.size_bits()), float(self.size_bits(rounded=True))
            n_q = sum(q.numel for q in self.quantizers.values())
            coded = sum(float(q.code_bits()) for q in self.quantizers.values())
            coded_int = sum(float(q.code_bits(rounded=True)) for q in self.quantizers.values())
            hist: Counter[int] = Counter()
            for q in self.quantizers.values():
                hist.update(q.int_bits().tolist())
        full = 32.0 * self.n_weights
        return {"est_bits": est, "est_bits_pct": 100.0 * est / full, "est_bits_rounded": est_int,
                "est_bits_rounded_pct": 100.0 * est_int / full,
                "mean_bits": coded / max(1, n_q), "mean_bits_rounded": coded_int / max(1, n_q),
                "bits_hist": dict(sorted(hist.items())), "noise": self.config.noise}

    @torch.no_grad()
    def export(self, model: nn.Module, spec: ModelSpec) -> CompressedModel:
        shapes = full_shapes(spec)
        layers = []
        for n in self.topo.nodes:
            w = weight_of(self.modules[n.name]).detach().float().cpu()
            shape = tuple(w.shape)
            if n.name not in self.quantizers:
                layers.append(LayerCode(n.name, n.kind, shape, shapes[n.name], "float", w.contiguous().clone()))
                continue
            codes, bits, lo, hi = self.quantizers[n.name].encode(w)
            layers.append(LayerCode(n.name, n.kind, shape, shapes[n.name], "group", codes.contiguous(),
                                    bits=bits.cpu(), lo=lo, hi=hi, group_size=self.config.group_size))
        return export_layers(model, spec, layers)
