"""One layer's bit stream in a packed file, written and read: dead output channels, the scheme's side
information, then its codes, fixed-length or as ANS frequency tables with the words after the stream.

``packing`` frames these streams into a file (prelude, header, codebook, float tensors, checksum); this module
holds what is specific to one layer, so that the writer and the reader of a layer sit side by side and every
check the reader makes mirrors a choice the writer made. docs/packed-format.md describes the bits.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.accounting import entropy_coding
from benchmarks.accounting.bitstream import BitReader, PackedFileError, pack_bits
from benchmarks.accounting.packed_header import MAX_DEPTH
from benchmarks.accounting.size import entry_width
from benchmarks.compressed import (CompressedModel, LayerCode, bits_per_weight, decode_layer,
                                   group_bits_per_weight)

__all__ = ["encode_layer", "read_side", "read_codes", "check_dead"]


def _float_bits(x: torch.Tensor) -> np.ndarray:
    return x.float().contiguous().numpy().view(np.uint32).astype(np.uint64)


def _symbols(layer: LayerCode, mask: torch.Tensor, cm: CompressedModel) -> tuple[np.ndarray, np.ndarray]:
    """The stored code of every remaining weight (channel codes offset by 2^(b-1)) and its width."""
    w = bits_per_weight(layer, cm.codebook_bits)[mask]
    codes = layer.codes[mask]
    if layer.scheme == "float":
        return _float_bits(codes), w.numpy()
    c = codes.long() + (torch.where(w > 0, 2 ** (w - 1), 0) if layer.scheme == "channel" else 0)
    if bool((c < 0).any()) or bool((c >= 2 ** w).any()):
        raise ValueError(f"layer {layer.name}: a code does not fit its bit depth")
    return c.numpy().astype(np.uint64), w.numpy()


def _side(layer: LayerCode, dead: torch.Tensor) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    dead_idx = torch.nonzero(dead).flatten().numpy().astype(np.uint64)
    vals, widths = [dead_idx], [np.full(len(dead_idx), max(1, (layer.out_channels - 1).bit_length()))]
    meta = {"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "full_shape": list(layer.full_shape),
            "scheme": layer.scheme, "n_dead": len(dead_idx), "group_size": layer.group_size}
    for key in ("bits", "exponents"):
        t = getattr(layer, key)
        if t is not None:
            lo = int(t.min())
            meta[key] = {"n": t.numel(), "min": lo, "width": entry_width(t)}
            vals.append((t - lo).numpy().astype(np.uint64))
            widths.append(np.full(t.numel(), entry_width(t)))
    floats = [layer.scales] if layer.scales is not None else []
    if layer.scales is not None:
        meta["n_scales"] = layer.scales.numel()
    if layer.scheme == "group":
        floats.append(torch.tensor([layer.lo, layer.hi]))
    for f in floats:
        vals.append(_float_bits(f))
        widths.append(np.full(f.numel(), 32))
    return meta, vals, widths


def encode_layer(layer: LayerCode, mask: torch.Tensor, dead: torch.Tensor, cm: CompressedModel,
                 coding: str) -> tuple[bytes, dict]:
    """The layer's bytes in the file: fixed-length, or ANS-coded when asked for or shorter."""
    meta, vals, widths = _side(layer, dead)
    sym, w = _symbols(layer, mask, cm)
    fixed = pack_bits(np.concatenate(vals + [sym]), np.concatenate(widths + [w]))
    if coding == "fixed" or layer.scheme == "float" or not entropy_coding.available():
        return fixed, {**meta, "coding": "fixed", "nbytes": len(fixed)}
    tv, tw, words = entropy_coding.encode(sym, w)
    stream = pack_bits(np.concatenate(vals + [tv]), np.concatenate(widths + [tw]))
    if coding == "auto" and len(stream) + 4 * len(words) >= len(fixed):
        return fixed, {**meta, "coding": "fixed", "nbytes": len(fixed)}
    return stream + words.astype("<u4").tobytes(), {**meta, "coding": "ans", "nbytes": len(stream),
                                                    "ans_words": len(words)}


def read_side(meta: dict, reader: BitReader) -> tuple[dict, torch.Tensor]:
    """Dead output channels and the scheme's side information, each checked against what it may hold."""
    c = meta["shape"][0]
    dead = reader.read_uniform(meta["n_dead"], max(1, (c - 1).bit_length()), "dead channels").astype(np.int64)
    if bool((dead >= c).any()) or bool((np.diff(dead) <= 0).any()):
        raise PackedFileError(f"{reader.what}: dead channel indices must be increasing and below {c}")
    fields: dict = {}
    for key in ("bits", "exponents"):
        if key in meta:
            f = meta[key]
            off = reader.read_uniform(f["n"], f["width"], key)
            if int(off.min()) != 0 or int(off.max()).bit_length() != f["width"]:
                raise PackedFileError(f"{reader.what}: {key} not stored as offsets from their minimum at the fewest bits")
            fields[key] = torch.from_numpy(off.astype(np.int64) + np.int64(f["min"]))
    if "bits" in fields:
        lo = 1 if meta["scheme"] == "group" else 0
        if int(fields["bits"].min()) < lo or int(fields["bits"].max()) > MAX_DEPTH:
            raise PackedFileError(f"{reader.what}: bit depths outside {lo}..{MAX_DEPTH}")
    if "n_scales" in meta:
        fields["scales"] = torch.from_numpy(reader.read_uniform(meta["n_scales"], 32, "scales").astype(np.uint32)
                                            .view(np.float32).copy())
    if meta["scheme"] == "group":
        lo, hi = reader.read_uniform(2, 32, "range").astype(np.uint32).view(np.float32)
        fields.update(lo=float(lo), hi=float(hi))
    return fields, torch.from_numpy(dead)


def read_codes(layer: LayerCode, meta: dict, reader: BitReader, words: np.ndarray, mask: torch.Tensor,
               cm: CompressedModel) -> None:
    """Fill the codes of the remaining weights; the others get a code decoding to zero (a placeholder)."""
    widths = bits_per_weight(layer, cm.codebook_bits)[mask].numpy()
    if meta["coding"] == "fixed":
        sym = reader.read(widths)
        reader.finish()
    else:
        buckets = [(b, int((widths == b).sum())) for b in entropy_coding.bucket_widths(widths)]
        tables = entropy_coding.read_tables(reader, buckets)
        reader.finish()
        sym = np.zeros(widths.size, np.uint64)
        for (b, _), part in zip(buckets, entropy_coding.decode(words, tables, reader.what)):
            sym[widths == b] = part
    layer.codes = _zero_codes(layer, cm.codebook)
    if layer.scheme == "float":
        layer.codes[mask] = torch.from_numpy(sym.astype(np.uint32).view(np.float32).copy())
        return
    codes = torch.from_numpy(sym.astype(np.int64))
    if layer.scheme == "channel":
        w = torch.from_numpy(widths)
        codes = codes - torch.where(w > 0, 2 ** (w - 1), 0)
    if layer.scheme == "codebook" and codes.numel() and int(codes.max()) >= len(cm.codebook):
        raise PackedFileError(f"{reader.what}: codebook index {int(codes.max())} >= codebook size {len(cm.codebook)}")
    layer.codes[mask] = codes


def _zero_codes(layer: LayerCode, codebook: torch.Tensor | None) -> torch.Tensor:
    """Codes that decode to zero where the scheme has one (unstored weights are absent from the model)."""
    if layer.scheme == "group":
        b = group_bits_per_weight(layer).view(layer.shape).double()
        top = torch.pow(2.0, b) - 1
        c = torch.nan_to_num(torch.round(-layer.lo * top / (layer.hi - layer.lo)), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.minimum(torch.maximum(c, torch.zeros(())), top).long()
    if layer.scheme == "codebook":
        zero = torch.nonzero(codebook == 0).flatten()
        return torch.full(layer.shape, int(zero[0]) if len(zero) else 0, dtype=torch.int64)
    return torch.zeros_like(layer.codes)


def check_dead(cm: CompressedModel, masks: dict[str, torch.Tensor]) -> None:
    """The dead channels listed must be exactly those a writer would list: the ones decoding to zero."""
    for layer in cm.layers:
        c = layer.out_channels
        zero = (decode_layer(layer, cm.codebook).reshape(c, -1) == 0).all(dim=1)
        listed = cm.dead[layer.name]
        whole = masks[layer.name].reshape(c, -1).all(dim=1)  # every weight of the channel is stored
        wrong = torch.nonzero((listed & ~zero) | (~listed & zero & whole)).flatten()
        if len(wrong):
            raise PackedFileError(f"layer {layer.name}: channel {int(wrong[0])} is listed dead but does not decode "
                                  "to zero, or decodes to zero but is not listed dead")
