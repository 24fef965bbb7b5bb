"""The packed model file: codes fixed-length or entropy-coded, side information, a plain-data header, a checksum.

Format version 2 (docs/packed-format.md is the complete description)::

    b"SCNNPACK", version uint16, header length H uint32    (little-endian)
    header          H bytes of UTF-8 JSON: architecture, topology, per layer its scheme, shapes, coding,
                    side-information widths and stream lengths, names and shapes of the float tensors
    per layer       one bit stream (MSB first, zero-padded to a byte): dead output channels, bit depths,
                    exponents, float scales, group range, then either every remaining weight's code at its
                    width (coding "fixed", as in version 1) or the frequency tables of its codes
                    (coding "ans"), in which case the ANS words follow (uint32, ``entropy_coding``)
    codebook        float32 x K
    float tensors   float32, BatchNorm and biases in header order
    SHA-256         32 bytes over everything before it

The writer stores each layer in whichever coding is shorter (``layer_stream`` writes and reads one layer's
stream; this module frames them into a file). Version 1 files (every layer fixed) still load.
Nothing in a file is executed on load, and nothing is allocated before the header has been checked against
the architecture and the file's length (``packed_header``); every stream must be consumed exactly, so a file
whose header contradicts its streams is refused with one ``PackedFileError`` line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.accounting import entropy_coding
from benchmarks.accounting.bitstream import BitReader, PackedFileError
from benchmarks.accounting.layer_stream import check_dead, encode_layer, read_codes, read_side
from benchmarks.accounting.packed_header import FORMAT, check_header
from benchmarks.compressed import CompressedModel, LayerCode, dead_outputs, remaining_mask
from benchmarks.files import replacing

__all__ = ["PackedFileError", "FileLayout", "StoredLayer", "to_bytes", "save", "read", "read_file", "from_bytes",
           "load", "verify"]
log = logging.getLogger(__name__)
MAGIC = b"SCNNPACK"
VERSION = 2
_PRELUDE = struct.Struct("<8sHI")


@dataclass(frozen=True)
class StoredLayer:
    """How one layer is stored, measured from the file."""

    name: str
    coding: str  # "fixed" or "ans"
    stream_bytes: int  # the layer's bit stream
    ans_words: int  # 32-bit ANS words after it (0 for fixed)
    side_bits: int  # side information at the start of the bit stream
    table_bits: int  # frequency tables after it (0 for fixed)

    @property
    def coded_bits(self) -> int:
        return 8 * self.stream_bytes + 32 * self.ans_words


@dataclass(frozen=True)
class FileLayout:
    """Where a packed file's bytes go: the measured storage behind ``coded_bits``."""

    version: int
    file_bytes: int
    header_bytes: int  # prelude and JSON header: in the file size only, like the checksum
    layers: tuple[StoredLayer, ...]
    codebook_bytes: int

    @property
    def coded_bits(self) -> int:
        """The weights as stored: every layer's streams (side information and tables included) and codebook."""
        return sum(s.coded_bits for s in self.layers) + 8 * self.codebook_bytes


def to_bytes(cm: CompressedModel, coding: str = "auto") -> bytes:
    """The packed file. ``coding``: "auto" (per layer the shorter), "fixed" (as version 1 stored codes) or
    "ans" (entropy-coded wherever the scheme allows); without constriction every layer is fixed-length."""
    if coding not in ("auto", "fixed", "ans"):
        raise ValueError(f"coding must be auto, fixed or ans, not {coding!r}")
    if coding != "fixed" and not entropy_coding.available():
        log.warning("constriction is not installed: writing fixed-length codes only (%s)", entropy_coding.INSTALL_HINT)
    dead_out = dead_outputs(cm)
    masks = remaining_mask(cm, dead_out)
    streams, layers = [], []
    for layer in cm.layers:
        data, meta = encode_layer(layer, masks[layer.name], dead_out[layer.name], cm, coding)
        streams.append(data)
        layers.append(meta)
    header = {"format": FORMAT, "version": VERSION, "arch": cm.arch.as_dict(), "topology": cm.topology.as_dict(),
              "layers": layers, "codebook_size": 0 if cm.codebook is None else len(cm.codebook),
              "others": [[k, list(v.shape)] for k, v in cm.others.items()]}
    h = json.dumps(header, separators=(",", ":")).encode()
    body = [_PRELUDE.pack(MAGIC, VERSION, len(h)), h, *streams]
    if cm.codebook is not None:
        body.append(cm.codebook.float().numpy().astype("<f4").tobytes())
    body += [v.float().contiguous().numpy().astype("<f4").tobytes() for v in cm.others.values()]
    blob = b"".join(body)
    return blob + hashlib.sha256(blob).digest()


def save(cm: CompressedModel, path: str | os.PathLike, coding: str = "auto") -> int:
    """Write atomically; returns the file size in bytes."""
    data = to_bytes(cm, coding)
    with replacing(Path(path)) as tmp:
        tmp.write_bytes(data)
    return len(data)


MAX_HEADER_BYTES = 1 << 24  # a header lists shapes and names: kilobytes; anything this long is not one


def _prelude(data: bytes, file_bytes: int, source: str) -> tuple[int, int]:
    """(version, header length) from the first bytes of a file of ``file_bytes`` bytes; ``PackedFileError``
    when they are not those of a packed model or the header cannot fit."""
    if file_bytes < _PRELUDE.size + 32 or len(data) < _PRELUDE.size:
        raise PackedFileError(f"{source}: too short to be a packed model ({file_bytes} bytes)")
    magic, version, hlen = _PRELUDE.unpack_from(data)
    if magic != MAGIC:
        raise PackedFileError(f"{source}: not a scnn-bench packed model (bad magic)")
    if version not in (1, VERSION):
        raise PackedFileError(f"{source}: format version {version}; this scnn-bench reads versions 1 and {VERSION}")
    if hlen > MAX_HEADER_BYTES or _PRELUDE.size + hlen > file_bytes - 32:
        raise PackedFileError(f"{source}: header length {hlen} runs past the end of the file")
    return version, hlen


def _header(data: bytes, hlen: int, version: int, file_bytes: int):
    """The header's plan, checked against the architecture and the file's length before any body is read."""
    try:
        header = json.loads(data[_PRELUDE.size:_PRELUDE.size + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise PackedFileError(f"header is not UTF-8 JSON ({type(e).__name__})") from None
    return check_header(header, version, file_bytes - 32 - _PRELUDE.size - hlen)


def _checked_prelude(data: bytes, source: str) -> tuple[int, int]:
    """(version, header length) of a whole packed file whose prelude and checksum are valid."""
    version, hlen = _prelude(data, len(data), source)
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise PackedFileError(f"{source}: checksum mismatch: the file is truncated or altered; refusing to load it")
    return version, hlen


def verify(data: bytes, source: str = "<bytes>") -> None:
    """The reader's checks without decoding the streams: prelude, checksum, and the header against the
    architecture and the file's length. ``PackedFileError`` (one line) when any fails."""
    version, hlen = _checked_prelude(data, source)
    try:
        _header(data, hlen, version, len(data))
    except PackedFileError as e:
        raise PackedFileError(f"{source}: {e}") from None


def read(data: bytes, source: str = "<bytes>") -> tuple[CompressedModel, FileLayout]:
    """The model and the measured layout of a packed file; anything invalid is one ``PackedFileError`` line."""
    version, hlen = _checked_prelude(data, source)
    try:
        return _parse(data, hlen, version)
    except PackedFileError as e:
        raise PackedFileError(f"{source}: {e}") from None
    except Exception as e:  # a valid checksum over a malformed body: written by something else
        raise PackedFileError(f"{source}: malformed packed model ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None


def from_bytes(data: bytes, source: str = "<bytes>") -> CompressedModel:
    return read(data, source)[0]


def read_file(path: str | os.PathLike) -> tuple[CompressedModel, FileLayout]:
    """``read`` of a file, reading no more than its prelude and header until the header has been checked
    against the architecture and the file's length: a file whose header is bad is refused having read a few
    kilobytes, whatever its size, and a valid one holds what its header says."""
    source = str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_PRELUDE.size)
        version, hlen = _prelude(head, size, source)
        head += f.read(hlen)
        try:
            _header(head, hlen, version, size)
        except PackedFileError as e:
            raise PackedFileError(f"{source}: {e}") from None
        data = head + f.read()
    return read(data, source)


def load(path: str | os.PathLike) -> CompressedModel:
    return read_file(path)[0]


def _parse(data: bytes, hlen: int, version: int) -> tuple[CompressedModel, FileLayout]:
    pos = _PRELUDE.size + hlen
    plan = _header(data, hlen, version, len(data))
    records = []
    for meta in plan.layers:
        stream = data[pos:pos + meta["nbytes"]]
        pos += meta["nbytes"]
        records.append((stream, np.frombuffer(data, "<u4", meta["ans_words"], pos).astype(np.uint32)))
        pos += 4 * meta["ans_words"]
    codebook = None
    if plan.codebook_size:
        codebook = torch.from_numpy(np.frombuffer(data, "<f4", plan.codebook_size, pos).astype(np.float32))
        pos += 4 * plan.codebook_size
    others = {}
    for name, shape in plan.others:
        n = math.prod(shape)
        others[name] = torch.from_numpy(np.frombuffer(data, "<f4", n, pos).astype(np.float32)).reshape(shape)
        pos += 4 * n
    layers, readers, dead_out, side_bits = [], [], {}, []
    for meta, (stream, _) in zip(plan.layers, records):
        reader = BitReader(stream, f"layer {meta['name']}")
        fields, dead = read_side(meta, reader)
        dtype = torch.float32 if meta["scheme"] == "float" else torch.int64
        layers.append(LayerCode(meta["name"], meta["kind"], meta["shape"], meta["full_shape"], meta["scheme"],
                                torch.zeros(meta["shape"], dtype=dtype), group_size=meta["group_size"], **fields))
        dead_out[meta["name"]] = torch.zeros(meta["shape"][0], dtype=torch.bool)
        dead_out[meta["name"]][dead] = True
        readers.append(reader)
        side_bits.append(reader.pos)
    cm = CompressedModel(plan.arch, plan.topology, layers, others, codebook, dead=dead_out)
    masks = remaining_mask(cm, dead_out)
    stored = []
    for layer, meta, reader, (stream, words), side in zip(layers, plan.layers, readers, records, side_bits):
        read_codes(layer, meta, reader, words, masks[layer.name], cm)
        stored.append(StoredLayer(layer.name, meta["coding"], len(stream), len(words), side,
                                  reader.pos - side if meta["coding"] == "ans" else 0))
    check_dead(cm, masks)
    return cm, FileLayout(version, len(data), _PRELUDE.size + hlen, tuple(stored), 4 * plan.codebook_size)
