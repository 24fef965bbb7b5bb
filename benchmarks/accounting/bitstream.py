"""MSB-first bit streams, the packed file's layout for every fixed-width field, read with bounds checked first.

A reader of an untrusted file must never let a number in it decide how much memory to take: ``BitReader``
checks that a field fits in what is left of its stream before it allocates anything for it, and ``finish``
checks that the stream was consumed exactly (only zero padding to the next byte may remain).
Values are processed in chunks so that the temporaries stay small however long the stream is.
"""
from __future__ import annotations

import numpy as np

_CHUNK = 1 << 16  # values per step: temporaries of at most _CHUNK x 64 entries


class PackedFileError(ValueError):
    """The file is not a valid packed model (wrong magic, version, checksum, layout or contents)."""


def pack_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits each (0..64), MSB first, zero-padded to a byte."""
    values, widths = np.asarray(values, np.uint64).ravel(), np.asarray(widths, np.int64).ravel()
    if values.shape != widths.shape:
        raise ValueError("pack_bits: one width per value")
    if widths.size and (widths.min() < 0 or widths.max() > 64):
        raise ValueError("pack_bits: widths must be in 0..64")
    narrow = widths < 64
    if bool(((values >> np.where(narrow, widths, 0).astype(np.uint64)) != 0)[narrow].any()):
        raise ValueError("pack_bits: a value does not fit its width")
    out = []
    for s in range(0, values.size, _CHUNK):
        v, w = values[s:s + _CHUNK], widths[s:s + _CHUNK]
        j = np.arange(int(w.max(initial=0)))
        valid = j[None, :] < w[:, None]
        shift = np.where(valid, w[:, None] - 1 - j[None, :], 0).astype(np.uint64)
        out.append(((v[:, None] >> shift) & np.uint64(1)).astype(np.uint8)[valid])
    return np.packbits(np.concatenate(out)).tobytes() if out else b""


def _gather(bits: np.ndarray, start: int, widths: np.ndarray) -> np.ndarray:
    """The values of ``widths`` consecutive fields starting at bit ``start`` of an unpacked bit array."""
    out = np.zeros(widths.size, np.uint64)
    ends = start + np.cumsum(widths)
    for s in range(0, widths.size, _CHUNK):
        w = widths[s:s + _CHUNK]
        j = np.arange(int(w.max(initial=0)))
        valid = j[None, :] < w[:, None]
        first = (ends[s:s + _CHUNK] - w)[:, None]
        idx = np.where(valid, first + j[None, :], 0)
        shift = np.where(valid, w[:, None] - 1 - j[None, :], 0).astype(np.uint64)
        out[s:s + _CHUNK] = ((bits[idx].astype(np.uint64) * valid) << shift).sum(axis=1, dtype=np.uint64)
    return out


class BitReader:
    """Sequential reads of fixed-width fields from one stream; every read is checked against its length."""

    def __init__(self, data: bytes, what: str):
        self.what = what
        self.total = 8 * len(data)
        self.pos = 0
        self._bits = np.unpackbits(np.frombuffer(data, np.uint8))

    @property
    def remaining(self) -> int:
        return self.total - self.pos

    def need(self, nbits: int, field: str) -> None:
        """Refuse before allocating when ``nbits`` more bits are not there."""
        if nbits > self.remaining:
            raise PackedFileError(f"{self.what}: {field} needs {nbits} bits but only {self.remaining} remain")

    def read(self, widths: np.ndarray, field: str = "codes") -> np.ndarray:
        widths = np.asarray(widths, np.int64)
        if widths.size and (widths.min() < 0 or widths.max() > 64):
            raise PackedFileError(f"{self.what}: {field} has a width outside 0..64")
        n = int(widths.sum())
        self.need(n, field)
        out = _gather(self._bits, self.pos, widths)
        self.pos += n
        return out

    def read_uniform(self, count: int, width: int, field: str) -> np.ndarray:
        """``count`` fields of ``width`` bits; both are checked before anything is allocated."""
        if not 0 <= width <= 64:
            raise PackedFileError(f"{self.what}: {field} width {width} is outside 0..64")
        self.need(count * width, field)
        return self.read(np.full(count, width, np.int64), field)

    def read_int(self, width: int, field: str) -> int:
        return int(self.read_uniform(1, width, field)[0])

    def finish(self) -> None:
        """The stream must end here, up to zero padding to the next byte."""
        if self.remaining >= 8:
            raise PackedFileError(f"{self.what}: {self.remaining // 8} bytes left over after its last field")
        if bool(self._bits[self.pos:].any()):
            raise PackedFileError(f"{self.what}: nonzero padding bits after its last field")
