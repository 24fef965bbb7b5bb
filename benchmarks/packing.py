"""The packed model file: codes at their bit depth, side information, a plain-data header and a checksum.

Format version 1 (little-endian)::

    b"SCNNPACK"                 8 bytes, magic
    version                     uint16
    header length H             uint32
    header                      H bytes of UTF-8 JSON: architecture, topology, per layer its scheme,
                                shapes, side-information widths and stream length, names and shapes of the
                                float tensors
    per layer, one bit stream   (MSB first, zero-padded to a byte):
                                  dead output channels (indices), bit depths, exponents (offsets from the
                                  minimum at the header's widths), float scales (float32), range lo/hi
                                  (float32, group scheme),
                                  then the code of every remaining weight in row-major order at its width
                                  (channel codes offset by 2^(b-1); float weights as their float32 bits)
    codebook                    float32 × K
    float tensors               float32, BatchNorm and biases in header order
    SHA-256                     32 bytes over everything before it

Nothing in a file is executed on load: the header is JSON and every tensor is raw numbers, so opening a
stranger's file is safe. Truncated or altered files fail the checksum and are refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from benchmarks.compressed import CompressedModel, LayerCode, bits_per_weight, dead_outputs, remaining_mask
from benchmarks.models import ModelSpec
from benchmarks.size import entry_width
from benchmarks.topology import Topology

MAGIC = b"SCNNPACK"
VERSION = 1
_PRELUDE = struct.Struct("<8sHI")


class PackedFileError(ValueError):
    """The file is not a valid packed model (wrong magic, version, checksum or layout)."""


def pack_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits each, MSB first."""
    values, widths = np.asarray(values, np.uint64), np.asarray(widths, np.int64)
    if values.size == 0 or widths.max(initial=0) == 0:
        return b""
    w_max = int(widths.max())
    j = np.arange(w_max)
    valid = j[None, :] < widths[:, None]
    shift = np.where(valid, widths[:, None] - 1 - j[None, :], 0).astype(np.uint64)
    bits = ((values[:, None] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits[valid]).tobytes()


def unpack_bits(data: bytes, widths: np.ndarray) -> np.ndarray:
    widths = np.asarray(widths, np.int64)
    if widths.size == 0 or widths.max(initial=0) == 0:
        return np.zeros(widths.size, np.uint64)
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if bits.size < widths.sum():
        raise PackedFileError("bit stream shorter than its header says")
    w_max = int(widths.max())
    j = np.arange(w_max)
    valid = j[None, :] < widths[:, None]
    idx = np.where(valid, (np.cumsum(widths) - widths)[:, None] + j[None, :], 0)
    shift = np.where(valid, widths[:, None] - 1 - j[None, :], 0).astype(np.uint64)
    return ((bits[idx].astype(np.uint64) * valid) << shift).sum(axis=1).astype(np.uint64)


def _offsets(values: torch.Tensor) -> tuple[int, int, np.ndarray]:
    lo = int(values.min()) if values.numel() else 0
    return lo, entry_width(values), (values - lo).numpy().astype(np.uint64)


def _float_bits(x: torch.Tensor) -> np.ndarray:
    return x.float().contiguous().numpy().view(np.uint32).astype(np.uint64)


def _layer_stream(layer: LayerCode, mask: torch.Tensor, dead: torch.Tensor, cb_bits: int) -> tuple[bytes, dict]:
    vals, widths = [], []
    dead_idx = torch.nonzero(dead).flatten()
    dead_w = max(1, (layer.out_channels - 1).bit_length())
    vals.append(dead_idx.numpy().astype(np.uint64))
    widths.append(np.full(len(dead_idx), dead_w))
    meta = {"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "full_shape": list(layer.full_shape),
            "scheme": layer.scheme, "n_dead": len(dead_idx), "group_size": layer.group_size}
    for key in ("bits", "exponents"):
        t = getattr(layer, key)
        if t is not None:
            lo, w, off = _offsets(t)
            meta[key] = {"n": t.numel(), "min": lo, "width": w}
            vals.append(off)
            widths.append(np.full(t.numel(), w))
    if layer.scales is not None:
        meta["n_scales"] = layer.scales.numel()
        vals.append(_float_bits(layer.scales))
        widths.append(np.full(layer.scales.numel(), 32))
    if layer.scheme == "group":
        vals.append(_float_bits(torch.tensor([layer.lo, layer.hi])))
        widths.append(np.full(2, 32))
    w = bits_per_weight(layer, cb_bits)[mask].numpy()
    codes = layer.codes[mask]
    if layer.scheme == "float":
        c = _float_bits(codes)
    else:
        c = codes.long()
        if layer.scheme == "channel":
            c = c + torch.where(torch.from_numpy(w) > 0, 2 ** (torch.from_numpy(w) - 1), 0)
        if bool((c < 0).any()) or bool((c >= 2 ** torch.from_numpy(w)).any()):
            raise ValueError(f"layer {layer.name}: a code does not fit its bit depth")
        c = c.numpy().astype(np.uint64)
    vals.append(c)
    widths.append(w)
    data = pack_bits(np.concatenate(vals), np.concatenate(widths))
    meta["nbytes"] = len(data)
    return data, meta


def to_bytes(cm: CompressedModel) -> bytes:
    dead_out = dead_outputs(cm)
    masks = remaining_mask(cm, dead_out)
    streams, layers = [], []
    for layer in cm.layers:
        data, meta = _layer_stream(layer, masks[layer.name], dead_out[layer.name], cm.codebook_bits)
        streams.append(data)
        layers.append(meta)
    header = {"format": "scnn-bench packed model", "version": VERSION, "arch": cm.arch.as_dict(),
              "topology": cm.topology.as_dict(), "layers": layers,
              "codebook_size": 0 if cm.codebook is None else len(cm.codebook),
              "others": [[k, list(v.shape)] for k, v in cm.others.items()]}
    h = json.dumps(header, separators=(",", ":")).encode()
    body = [_PRELUDE.pack(MAGIC, VERSION, len(h)), h, *streams]
    if cm.codebook is not None:
        body.append(cm.codebook.float().numpy().astype("<f4").tobytes())
    body += [v.float().contiguous().numpy().astype("<f4").tobytes() for v in cm.others.values()]
    blob = b"".join(body)
    return blob + hashlib.sha256(blob).digest()


def save(cm: CompressedModel, path: str | os.PathLike) -> int:
    """Write atomically; returns the file size in bytes."""
    data = to_bytes(cm)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def from_bytes(data: bytes, source: str = "<bytes>") -> CompressedModel:
    if len(data) < _PRELUDE.size + 32:
        raise PackedFileError(f"{source}: too short to be a packed model ({len(data)} bytes)")
    magic, version, hlen = _PRELUDE.unpack_from(data)
    if magic != MAGIC:
        raise PackedFileError(f"{source}: not a scnn-bench packed model (bad magic)")
    if version != VERSION:
        raise PackedFileError(f"{source}: format version {version}; this scnn-bench reads version {VERSION}")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise PackedFileError(f"{source}: checksum mismatch: the file is truncated or altered; refusing to load it")
    try:
        return _parse(data, hlen)
    except PackedFileError:
        raise
    except Exception as e:  # a valid checksum over a malformed body: written by something else
        raise PackedFileError(f"{source}: malformed packed model ({type(e).__name__}: {e})") from None


def _parse(data: bytes, hlen: int) -> CompressedModel:
    pos = _PRELUDE.size
    header = json.loads(data[pos:pos + hlen].decode())
    pos += hlen
    streams = []
    for meta in header["layers"]:
        streams.append(data[pos:pos + meta["nbytes"]])
        pos += meta["nbytes"]
    codebook = None
    if header["codebook_size"]:
        k = header["codebook_size"]
        codebook = torch.from_numpy(np.frombuffer(data, "<f4", k, pos).astype(np.float32))
        pos += 4 * k
    others = {}
    for name, shape in header["others"]:
        n = int(np.prod(shape))
        others[name] = torch.from_numpy(np.frombuffer(data, "<f4", n, pos).astype(np.float32)).reshape(shape)
        pos += 4 * n
    if pos != len(data) - 32:
        raise PackedFileError(f"{len(data) - 32 - pos} unexpected bytes after the float tensors")
    arch = ModelSpec(**header["arch"])
    topo = Topology.from_dict(header["topology"])
    cb_bits = max(1, (header["codebook_size"] - 1).bit_length())
    layers = [_read_layer(meta, s, cb_bits) for meta, s in zip(header["layers"], streams)]
    cm = CompressedModel(arch, topo, layers, others, codebook)
    _fill_codes(cm, streams, cb_bits)
    return cm


def _read_layer(meta: dict, stream: bytes, cb_bits: int) -> LayerCode:
    """Side information of a layer (codes are filled in once the dead channels are known)."""
    widths = [np.full(meta["n_dead"], max(1, (meta["shape"][0] - 1).bit_length()))]
    for key in ("bits", "exponents"):
        if key in meta:
            widths.append(np.full(meta[key]["n"], meta[key]["width"]))
    if "n_scales" in meta:
        widths.append(np.full(meta["n_scales"], 32))
    if meta["scheme"] == "group":
        widths.append(np.full(2, 32))
    side = unpack_bits(stream, np.concatenate(widths)).astype(np.int64)
    pos = meta["n_dead"]
    fields: dict = {}
    for key in ("bits", "exponents"):
        if key in meta:
            n = meta[key]["n"]
            fields[key] = torch.from_numpy(side[pos:pos + n] + meta[key]["min"])
            pos += n
    if "n_scales" in meta:
        n = meta["n_scales"]
        fields["scales"] = torch.from_numpy(side[pos:pos + n].astype(np.uint32).view(np.float32).copy())
        pos += n
    if meta["scheme"] == "group":
        lo, hi = side[pos:pos + 2].astype(np.uint32).view(np.float32)
        fields.update(lo=float(lo), hi=float(hi))
    layer = LayerCode(meta["name"], meta["kind"], tuple(meta["shape"]), tuple(meta["full_shape"]), meta["scheme"],
                      torch.zeros(meta["shape"], dtype=torch.float32 if meta["scheme"] == "float" else torch.int64),
                      group_size=meta["group_size"], **fields)
    layer._side_widths = np.concatenate(widths)  # the codes follow these in the stream
    layer._dead = torch.from_numpy(side[:meta["n_dead"]])
    return layer


def _fill_codes(cm: CompressedModel, streams: list[bytes], cb_bits: int) -> None:
    """Codes are stored only for remaining weights: which those are follows from the dead channels listed."""
    dead_out = {}
    for layer in cm.layers:
        dead_out[layer.name] = torch.zeros(layer.out_channels, dtype=torch.bool)
        dead_out[layer.name][layer._dead] = True
    masks = remaining_mask(cm, dead_out)
    for layer, stream in zip(cm.layers, streams):
        m = masks[layer.name]
        w = bits_per_weight(layer, cb_bits)[m].numpy()
        n_side = len(layer._side_widths)
        vals = unpack_bits(stream, np.concatenate([layer._side_widths, w]))[n_side:]
        if layer.scheme == "float":
            codes = torch.from_numpy(vals.astype(np.uint32).view(np.float32).copy())
        else:
            codes = torch.from_numpy(vals.astype(np.int64))
            if layer.scheme == "channel":
                codes = codes - torch.where(torch.from_numpy(w) > 0, 2 ** (torch.from_numpy(w) - 1), 0)
        layer.codes[m] = codes
        del layer._side_widths, layer._dead


def load(path: str | os.PathLike) -> CompressedModel:
    return from_bytes(Path(path).read_bytes(), str(path))
