"""The size report: every figure measured from the exported form alone (no method code is imported).

``bits`` is fixed-length storage of the remaining weights (Σ bit depth × weights coded at it) plus the side
information a decoder needs, each item counted at the width the packed file stores it:

- per layer: bit depths and power-of-two exponents, each at ``bit_length(max - min)`` bits per entry (the
  offset and width go in the file header); float scales (32 bits each); the group scheme's range
  (2 × 32 bits); the index of every dead
  output channel the file lists (``bit_length(C - 1)`` bits each);
- once: the shared codebook (32 bits per value).

``coded_bits`` is what a packed file really takes for the same items, measured from its streams (each layer
fixed-length or entropy-coded, frequency tables and padding included; ``packing.FileLayout``). It is known
only for a model read from a file.

Two entropies, each named for what it is:

- ``code_entropy_bits``: Σ over layers and bit depths of n·H(codes stored at that depth in that layer), the
  size an ideal coder of this model's codes approaches (bit depths respected: a code means something else
  at another depth), without side information; never more than ``code_bits``;
- ``value_entropy_per_weight`` (``_nonzero``): the entropy of the decoded weight values over the whole
  network's remaining weights (without the zeros), per weight: what weight fixing optimises.

BatchNorm and biases are float32 in ``other_bits``, outside the percentages, for every method alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from tabulate import tabulate

from benchmarks.compressed import CompressedModel, LayerCode, bits_per_weight, dead_outputs, decode_layer, remaining_mask

if TYPE_CHECKING:
    from benchmarks.accounting.packing import FileLayout


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


def code_entropy_bits(codes: torch.Tensor, widths: torch.Tensor) -> float:
    """Σ over stored widths w > 0 of n_w · H(codes stored at w): the ideal size of these codes given their depths.

    Computed in one pass as Σ_w n_w·log2 n_w − Σ_(w, code) n·log2 n over (width, code) pairs; float codes count
    by their bit pattern, the code a file stores.
    """
    keep = widths > 0
    codes, widths = codes[keep], widths[keep].long()
    if codes.numel() == 0:
        return 0.0
    c = codes.view(torch.int32).long() & 0xFFFFFFFF if codes.is_floating_point() else codes.long() - codes.min()
    pairs = torch.unique((widths << 40) | c, return_counts=True)[1].double()  # codes span < 2^33 at depths <= 32
    per_width = torch.unique(widths, return_counts=True)[1].double()
    return float((per_width * torch.log2(per_width)).sum() - (pairs * torch.log2(pairs)).sum()) + 0.0


@dataclass
class LayerSize:
    layer: str
    scheme: str
    weights_total: int
    weights_remaining: int
    nonzero_weights: int
    code_bits: int
    side_bits: int
    code_entropy_bits: float
    mean_bits: float  # per remaining weight
    coding: str | None = None  # as stored in the file: "fixed" or "ans"
    coded_bits: int | None = None  # the layer's streams in the file (side information and tables included)


@dataclass
class SizeReport:
    layers: list[LayerSize]
    weights_total: int
    weights_remaining: int
    nonzero_weights: int
    unique_values: int
    code_entropy_bits: float  # Σ over layers and bit depths of n × entropy of the codes at that depth
    value_entropy_per_weight: float  # entropy of the whole network's decoded weight values, bits per weight
    value_entropy_per_weight_nonzero: float  # the same over the nonzero weights only
    code_bits: int
    side_bits: int
    bits: int  # code_bits + side_bits: fixed-length storage
    other_bits: int
    bits_remaining_pct: float
    weights_remaining_pct: float
    packed_bytes: int | None = None
    coded_bits: int | None = None  # the weights as the packed file stores them (from a file only)
    coded_bits_pct: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [[r.layer, r.scheme, r.weights_total, r.weights_remaining, r.nonzero_weights, f"{r.mean_bits:.2f}",
                 r.code_bits, r.side_bits, f"{r.code_entropy_bits:.0f}", r.coding or "", "" if r.coded_bits is None else r.coded_bits]
                for r in self.layers]
        rows.append(["total", "", self.weights_total, self.weights_remaining, self.nonzero_weights,
                     f"{self.code_bits / max(1, self.weights_remaining):.2f}", self.code_bits, self.side_bits,
                     f"{self.code_entropy_bits:.0f}", "", "" if self.coded_bits is None else self.coded_bits])
        head = ["layer", "scheme", "weights", "remaining", "nonzero", "bits/w", "code bits", "side bits",
                "code entropy bits", "coding", "coded bits"]
        summary = (f"bits remaining {self.bits_remaining_pct:.3f}%  weights remaining {self.weights_remaining_pct:.3f}%"
                   f"  unique values {self.unique_values}  value entropy {self.value_entropy_per_weight:.3f} bits/weight"
                   f" ({self.value_entropy_per_weight_nonzero:.3f} without zero)  other (BN, biases) {self.other_bits} bits")
        if self.coded_bits is not None:
            summary += f"\ncoded bits remaining {self.coded_bits_pct:.3f}% ({self.coded_bits} bits as stored)"
        if self.packed_bytes is not None:
            summary += f"  packed file {self.packed_bytes} bytes"
        return tabulate(rows, head, tablefmt="github") + "\n" + summary


def size_report(cm: CompressedModel, layout: FileLayout | None = None) -> SizeReport:
    """Sizes of the exported form; with the ``layout`` of the file it was read from, also what the file takes."""
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
        widths = bits_per_weight(layer, cb_bits)[m]
        code_bits = int(widths.sum())
        rows.append(LayerSize(layer.name, layer.scheme, math.prod(layer.full_shape), remaining,
                              int((w != 0).sum()), code_bits, layer_side_bits(layer, int(dead_out[layer.name].sum())),
                              code_entropy_bits(codes, widths), code_bits / max(1, remaining)))
    if layout is not None:
        for r, stored in zip(rows, layout.layers):
            r.coding, r.coded_bits = stored.coding, stored.coded_bits
    side = sum(r.side_bits for r in rows) + (32 * len(cm.codebook) if cm.codebook is not None else 0)
    code = sum(r.code_bits for r in rows)
    allw = torch.cat(values) if values else torch.zeros(0)
    total = sum(r.weights_total for r in rows)
    remaining = sum(r.weights_remaining for r in rows)
    return SizeReport(
        layers=rows, weights_total=total, weights_remaining=remaining, nonzero_weights=int((allw != 0).sum()),
        unique_values=int(torch.unique(allw).numel()), code_entropy_bits=sum(r.code_entropy_bits for r in rows),
        value_entropy_per_weight=entropy(allw), value_entropy_per_weight_nonzero=entropy(allw[allw != 0]),
        code_bits=code, side_bits=side, bits=code + side,
        other_bits=32 * sum(t.numel() for t in cm.others.values()),
        bits_remaining_pct=100.0 * (code + side) / (32 * total), weights_remaining_pct=100.0 * remaining / total,
        packed_bytes=None if layout is None else layout.file_bytes,
        coded_bits=None if layout is None else layout.coded_bits,
        coded_bits_pct=None if layout is None else 100.0 * layout.coded_bits / (32 * total))
