"""Entropy coding of a layer's codes in packed files (format version 2).

A code's meaning depends on its bit depth (a 3 under 2 bits is not a 3 under 8 bits), so the codes of a layer
are split into *buckets* by stored width, in increasing width, each keeping the row-major order of the
remaining weights. Per bucket the file stores a frequency table (exact counts, counted as side information);
buckets with two or more distinct codes are then coded, one after the other in one stream, with an ANS coder
whose categorical model is built from those counts. An ideal coder for this model needs
``Σ_bucket n·H(bucket)`` bits, the ``code_entropy_bits`` of the size report; the stream adds a few bytes.

Per bucket of width ``b`` holding ``n`` weights, in the layer's bit stream (MSB first):

    d - 1         at bit_length(min(n, 2^b) - 1) bits    d = number of distinct codes, 1 <= d <= min(n, 2^b)
    if d == 1:    the code, b bits                        every weight of the bucket has it
    else:
      flag        1 bit: 0 = list, 1 = bitmap             the writer takes the shorter
      codes       list: d codes at b bits, strictly increasing;
                  bitmap: 2^b bits, bit i set when code i occurs (exactly d set)
      cw          6 bits, 1..bit_length(n)                width of the counts
      counts      d counts at cw bits each, >= 1, summing to n, in the order of the codes

The ANS stream follows the layer's bit stream as little-endian uint32 words. It is constriction 0.5's
``stream.stack.AnsCoder`` (32-bit words, 64-bit state, 24-bit probabilities); each bucket with d >= 2 is
decoded in order as n symbols from ``stream.model.Categorical(counts as float64, perfect=False)``, a symbol
``i`` standing for the bucket's i-th code, and the stream must then be empty. The model is a deterministic
function of the stored integer counts, so encoder and decoder build it identically.

Why constriction: a well-kept, tested ANS implementation (numpy-only wheels, exact integer arithmetic,
documented stream format) is more trustworthy than a coder of our own; it is an optional dependency
(``pip install 'scnn-bench[coded]'``), without which files are written with fixed-length codes only.
"""
from __future__ import annotations

import numpy as np

from benchmarks.accounting.bitstream import BitReader, PackedFileError

try:
    import constriction
except ImportError:  # optional: the [coded] extra
    constriction = None

INSTALL_HINT = "pip install 'scnn-bench[coded]'"
COUNT_WIDTH_BITS = 6


def available() -> bool:
    return constriction is not None


def bucket_widths(widths: np.ndarray) -> list[int]:
    """The nonzero widths present, increasing: the buckets of a layer."""
    return [int(w) for w in np.unique(widths) if w > 0]


def _count_width(n: int, width: int) -> int:
    return (min(n, 1 << width) - 1).bit_length()


def _model(counts: np.ndarray):
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def encode(symbols: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequency tables (values and widths for the bit stream) and the ANS words of one layer's codes."""
    if constriction is None:
        raise ImportError(f"entropy coding needs constriction: {INSTALL_HINT}")
    vals: list[int] = []
    wids: list[int] = []
    coded = []
    for b in bucket_widths(widths):
        sym = symbols[widths == b]
        distinct, inverse, counts = np.unique(sym, return_inverse=True, return_counts=True)
        d, n = len(distinct), len(sym)
        vals.append(d - 1)
        wids.append(_count_width(n, b))
        if d == 1:
            vals.append(int(distinct[0]))
            wids.append(b)
            continue
        if (1 << b) < d * b:  # bitmap shorter than the list
            bitmap = np.zeros(1 << b, np.uint64)
            bitmap[distinct.astype(np.int64)] = 1
            vals += [1, *bitmap.tolist()]
            wids += [1] + [1] * len(bitmap)
        else:
            vals += [0, *distinct.tolist()]
            wids += [1] + [b] * d
        cw = int(counts.max()).bit_length()
        vals += [cw, *counts.tolist()]
        wids += [COUNT_WIDTH_BITS] + [cw] * d
        coded.append((inverse.astype(np.int32), counts))
    coder = constriction.stream.stack.AnsCoder()
    for inverse, counts in reversed(coded):  # a stack: the first bucket is pushed last and read first
        coder.encode_reverse(inverse, _model(counts))
    words = coder.get_compressed() if coded else np.zeros(0, np.uint32)
    return np.array(vals, np.uint64), np.array(wids, np.int64), np.asarray(words, np.uint32)


def read_tables(reader: BitReader, buckets: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per (width, n) bucket its distinct codes and their counts, validated as the module docstring says."""
    tables = []
    for b, n in buckets:
        d = reader.read_int(_count_width(n, b), f"bucket {b}: number of codes") + 1
        if d > min(n, 1 << b):
            raise PackedFileError(f"{reader.what}: bucket {b} lists {d} codes for {n} weights")
        if d == 1:
            tables.append((reader.read_uniform(1, b, f"bucket {b}: code"), np.array([n], np.uint64)))
            continue
        if reader.read_int(1, f"bucket {b}: table flag"):
            bitmap = reader.read_uniform(1 << b, 1, f"bucket {b}: code bitmap")
            distinct = np.flatnonzero(bitmap).astype(np.uint64)
            if len(distinct) != d:
                raise PackedFileError(f"{reader.what}: bucket {b}: bitmap marks {len(distinct)} codes, not {d}")
        else:
            distinct = reader.read_uniform(d, b, f"bucket {b}: codes")
            if bool((distinct[1:] <= distinct[:-1]).any()):
                raise PackedFileError(f"{reader.what}: bucket {b}: codes not strictly increasing")
        cw = reader.read_int(COUNT_WIDTH_BITS, f"bucket {b}: count width")
        if not 1 <= cw <= n.bit_length():
            raise PackedFileError(f"{reader.what}: bucket {b}: count width {cw} for {n} weights")
        counts = reader.read_uniform(d, cw, f"bucket {b}: counts")
        if bool((counts == 0).any()) or int(counts.sum(dtype=np.uint64)) != n:
            raise PackedFileError(f"{reader.what}: bucket {b}: counts must be >= 1 and sum to {n}")
        tables.append((distinct, counts))
    return tables


def decode(words: np.ndarray, tables: list[tuple[np.ndarray, np.ndarray]], what: str) -> list[np.ndarray]:
    """Per bucket the codes of its weights, in order; the ANS stream must be consumed exactly."""
    out = [np.repeat(distinct, int(counts[0])) if len(distinct) == 1 else None for distinct, counts in tables]
    coded = [i for i, part in enumerate(out) if part is None]
    if not coded:
        if len(words):
            raise PackedFileError(f"{what}: {len(words)} ANS words but no bucket is entropy-coded")
        return out
    if constriction is None:
        raise PackedFileError(f"{what}: entropy-coded layer; reading it needs constriction: {INSTALL_HINT}")
    try:
        coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, np.uint32))
        for i in coded:
            distinct, counts = tables[i]
            out[i] = distinct[coder.decode(_model(counts), int(counts.sum()))]
    except ValueError as e:
        raise PackedFileError(f"{what}: invalid ANS stream ({' '.join(str(e).split())})") from None
    if not coder.is_empty():
        raise PackedFileError(f"{what}: ANS stream not consumed exactly")
    return out
