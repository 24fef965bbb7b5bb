"""The size report: every figure measured from the exported form alone (no method code is imported).

``bits`` is fixed-length storage of the remaining weights (Σ bit depth × weights coded at it) plus the side
information a decoder needs, each item counted at the width the packed file stores it:

- per layer: bit depths and power-of-two exponents, each at ``bit_length(max - min)`` bits per entry (the
  offset and width go in the file header); float scales (32 bits each); the group scheme's range
  (2 × 32 bits); the index of every dead
  output channel the file lists (``bit_length(C - 1)`` bits each);
- once: the shared codebook (32 bits per value).

BatchNorm and biases are float32 in ``other_bits``, outside the percentages, for every method alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from tabulate import tabulate

from benchmarks.compressed import CompressedModel, LayerCode, bits_per_weight, dead_outputs, decode_layer, remaining_mask


def entry_width(values: torch.Tensor | None) -> int:
    """Bits per entry of a side-information array stored as offsets from its minimum."""
    if values is None or values.numel() == 0:
        return 0
    return int(values.max() - values.min()).bit_length()


def layer_side_bits(layer: LayerCode, n_dead: int) -> int:
    bits = n_dead * max(1, (layer.out_channels - 1).bit_length())
    if layer.scheme in ("channel", "group"):
        bits += layer.bits.numel() * entry_width(layer.bits)
    if layer.exponents is not None:
        bits += layer.exponents.numel() * entry_width(layer.exponents)
    if layer.scales is not None:
        bits += 32 * layer.scales.numel()
    if layer.scheme == "group":
        bits += 64
    return bits


def entropy(values: torch.Tensor) -> float:
    """Empirical entropy in bits per value."""
    if values.numel() == 0:
        return 0.0
    _, counts = torch.unique(values, return_counts=True)
    p = counts.double() / values.numel()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # never -0.0


@dataclass
class LayerSize:
    layer: str
    scheme: str
    weights_total: int
    weights_remaining: int
    nonzero_weights: int
    code_bits: int
    side_bits: int
    entropy_bits: float
    mean_bits: float  # per remaining weight


@dataclass
class SizeReport:
    layers: list[LayerSize]
    weights_total: int
    weights_remaining: int
    nonzero_weights: int
    unique_values: int
    entropy_bits: float  # Σ over layers of (remaining weights × entropy of its codes)
    entropy_per_weight: float  # entropy of the whole network's weight values, bits per weight
    entropy_per_weight_nonzero: float  # the same over the nonzero weights only
    code_bits: int
    side_bits: int
    bits: int  # code_bits + side_bits
    other_bits: int
    bits_remaining_pct: float
    weights_remaining_pct: float
    packed_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [[r.layer, r.scheme, r.weights_total, r.weights_remaining, r.nonzero_weights, f"{r.mean_bits:.2f}",
                 r.code_bits, r.side_bits, f"{r.entropy_bits:.0f}"] for r in self.layers]
        rows.append(["total", "", self.weights_total, self.weights_remaining, self.nonzero_weights,
                     f"{self.code_bits / max(1, self.weights_remaining):.2f}", self.code_bits, self.side_bits,
                     f"{self.entropy_bits:.0f}"])
        head = ["layer", "scheme", "weights", "remaining", "nonzero", "bits/w", "code bits", "side bits",
                "entropy bits"]
        summary = (f"bits remaining {self.bits_remaining_pct:.3f}%  weights remaining {self.weights_remaining_pct:.3f}%"
                   f"  unique values {self.unique_values}  entropy {self.entropy_per_weight:.3f} bits/weight"
                   f" ({self.entropy_per_weight_nonzero:.3f} without zero)  other (BN, biases) {self.other_bits} bits")
        if self.packed_bytes is not None:
            summary += f"  packed file {self.packed_bytes} bytes"
        return tabulate(rows, head, tablefmt="github") + "\n" + summary


def size_report(cm: CompressedModel, packed_bytes: int | None = None) -> SizeReport:
    dead_out = dead_outputs(cm)
    masks = remaining_mask(cm, dead_out)
    rows, values = [], []
    cb_bits = cm.codebook_bits
    for layer in cm.layers:
        m = masks[layer.name]
        w = decode_layer(layer, cm.codebook)[m]
        codes = layer.codes[m]
        values.append(w)
        remaining = int(m.sum())
        code_bits = int(bits_per_weight(layer, cb_bits)[m].sum())
        rows.append(LayerSize(layer.name, layer.scheme, math.prod(layer.full_shape), remaining,
                              int((w != 0).sum()), code_bits, layer_side_bits(layer, int(dead_out[layer.name].sum())),
                              remaining * entropy(codes), code_bits / max(1, remaining)))
    side = sum(r.side_bits for r in rows) + (32 * len(cm.codebook) if cm.codebook is not None else 0)
    code = sum(r.code_bits for r in rows)
    allw = torch.cat(values) if values else torch.zeros(0)
    total = sum(r.weights_total for r in rows)
    remaining = sum(r.weights_remaining for r in rows)
    return SizeReport(
        layers=rows, weights_total=total, weights_remaining=remaining, nonzero_weights=int((allw != 0).sum()),
        unique_values=int(torch.unique(allw).numel()), entropy_bits=sum(r.entropy_bits for r in rows),
        entropy_per_weight=entropy(allw), entropy_per_weight_nonzero=entropy(allw[allw != 0]),
        code_bits=code, side_bits=side, bits=code + side,
        other_bits=32 * sum(t.numel() for t in cm.others.values()),
        bits_remaining_pct=100.0 * (code + side) / (32 * total), weights_remaining_pct=100.0 * remaining / total,
        packed_bytes=packed_bytes)
