"""Untrusted packed files: every header field checked against the architecture and the file's length before
anything is allocated, every stream consumed exactly, and any refusal one PackedFileError line.

Each file below has a valid checksum (recomputed after the edit), so only validation can refuse it."""
import hashlib
import json
import re
import struct
import subprocess
import sys
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.compressed import CompressedModel, export_float, to_module
from benchmarks.models import ModelSpec, build_model
from conftest import scheme_model

PRELUDE = struct.Struct("<8sHI")
MB = 1 << 20


def base_model(scheme: str = "channel") -> CompressedModel:
    spec = ModelSpec("tinycnn")
    cm = scheme_model(scheme, export_float(build_model(spec), spec))
    if scheme == "channel":  # conv2: channels 1 and 5 dead
        conv2 = cm.layer("conv2.0")
        conv2.bits[5] = 0
        conv2.codes[5] = 0
    return cm


def split(data: bytes) -> tuple[int, dict, bytes]:
    _, version, hlen = PRELUDE.unpack_from(data)
    return version, json.loads(data[PRELUDE.size:PRELUDE.size + hlen]), data[PRELUDE.size + hlen:-32]


def join(version: int, header: dict | bytes, body: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    blob = PRELUDE.pack(b"SCNNPACK", version, len(h)) + h + body
    return blob + hashlib.sha256(blob).digest()


def edit_header(data: bytes, edit) -> bytes:
    version, header, body = split(data)
    edit(header)
    return join(version, header, body)


def edit_stream(data: bytes, layer: int, edit) -> bytes:
    """Rewrite one fixed-coded layer's bit stream, given as a string of '0'/'1' (the header follows its length)."""
    version, header, body = split(data)
    start = sum(m["nbytes"] + 4 * m.get("ans_words", 0) for m in header["layers"][:layer])
    old = body[start:start + header["layers"][layer]["nbytes"]]
    bits = edit("".join(f"{x:08b}" for x in old))
    new = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    header["layers"][layer]["nbytes"] = len(new)
    return join(version, header, body[:start] + new + body[start + len(old):])


def refused(data: bytes, match: str | None = None) -> None:
    """Refused by an explicit check (not the catch-all for unexpected errors), in one line."""
    with pytest.raises(packing.PackedFileError, match=match) as e:
        packing.from_bytes(data)
    assert "\n" not in str(e.value) and "malformed packed model" not in str(e.value), str(e.value)


def set_in(path: list, value):
    def edit(header):
        d = header
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


@pytest.mark.parametrize("coding", ["fixed", "ans"])
@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("delta", [-1, 1])
def test_header_contradicting_its_streams_is_refused(coding, layer, delta):
    """The reported case: n_dead changed, checksum valid (loaded silently before)."""
    data = packing.to_bytes(base_model(), coding)
    n = split(data)[1]["layers"][layer]["n_dead"]
    refused(edit_header(data, set_in(["layers", layer, "n_dead"], n + delta)))


@pytest.mark.parametrize("edit, match", [
    (set_in(["layers", 0, "group_size"], True), "group_size must be an integer"),
    (set_in(["layers", 1, "extra"], 1), "unknown keys"),
    (set_in(["format"], "something else"), "format must be"),
    (set_in(["arch", "num_classes"], "10"), "num_classes must be an integer"),
    (set_in(["layers", 2, "n_dead"], 1.0), "n_dead must be an integer"),
    (lambda h: h["layers"][0].pop("nbytes"), "missing keys"),
    (lambda h: h["layers"][0].pop("bits"), "a channel layer stores"),
    (set_in(["layers", 0, "coding"], "huffman"), "coding 'huffman' is not allowed"),
])
def test_header_keys_and_types_are_checked(edit, match):
    refused(edit_header(packing.to_bytes(base_model()), edit), match)


@pytest.mark.parametrize("edit, match", [  # before, each of these small files made numpy allocate ~1 GB
    (set_in(["layers", 0, "bits", "n"], 50_000_000), "bits.n must be an integer in 8..8"),
    (set_in(["layers", 0, "n_dead"], 50_000_000), "n_dead must be an integer in 0..8"),
    (set_in(["layers", 2, "shape"], [10, 30_000_000]), "30000000 inputs, its input space gives 256"),
    (set_in(["arch"], {"name": "resnet9", "width": 64.0, "num_classes": 10}), "more than 33554432 weights"),
])
def test_sizes_are_bounded_by_the_file_before_allocating(edit, match):
    data = edit_header(packing.to_bytes(base_model(), "fixed"), edit)
    tracemalloc.start()
    try:
        refused(data, match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MB


def test_inspect_refuses_a_crafted_file_in_one_line(tmp_path):
    """The reported case: a small file whose header claims a huge layer (here 10 x 30,000,000) made ``inspect``
    allocate GBs (torch.zeros of the claimed shape, 2.4 GB here) before refusing it. Run under a 1 GB data
    limit, as a guard."""
    f = tmp_path / "crafted.packed"
    f.write_bytes(edit_header(packing.to_bytes(base_model(), "fixed"), set_in(["layers", 2, "shape"], [10, 30_000_000])))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30)); "
    run = subprocess.run([sys.executable, "-c", limit + "import sys; from benchmarks.accounting.inspect import main; "
                          "sys.exit(main(sys.argv[1:]))", str(f)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1
    assert run.stderr == f"error: {f}: header: layer fc: 30000000 inputs, its input space gives 256\n"


@pytest.mark.parametrize("edit, match", [
    (set_in(["layers", 2, "full_shape"], [10, 257]), "full_shape"),
    (set_in(["layers", 2, "kind"], "conv"), "name/kind"),
    (set_in(["layers", 1, "shape"], [17, 8, 3, 3]), "does not fit the architecture"),
    (set_in(["layers", 1, "shape"], [16, 7, 3, 3]), "inputs, its input space gives 8"),
    (set_in(["arch", "width"], 0.5), "topology is not|full_shape"),
    (set_in(["topology", 2, "in_factor"], 8), "topology is not that of tinycnn"),
    (lambda h: h["layers"].reverse(), "name/kind"),
    (lambda h: h["others"].pop(), "others must list"),
    (set_in(["others", 0, 1], [9]), "expected conv1.1.weight of shape"),
])
def test_shapes_must_agree_with_the_architecture(edit, match):
    refused(edit_header(packing.to_bytes(base_model()), edit), match)


@pytest.mark.parametrize("first_bits, match", [
    ("01010001", "increasing"),  # conv2's dead channels [1, 5] stored as [5, 1]
    ("00010001", "increasing"),  # duplicated: [1, 1]
])
def test_dead_channel_indices_must_be_increasing(first_bits, match):
    data = packing.to_bytes(base_model(), "fixed")
    assert split(data)[1]["layers"][1]["n_dead"] == 2
    refused(edit_stream(data, 1, lambda bits: first_bits + bits[8:]), match)


def test_dead_channel_index_in_range():
    data = packing.to_bytes(base_model(), "fixed")  # fc: 10 channels, indices at 4 bits, channel 1 dead
    refused(edit_stream(data, 2, lambda bits: "1100" + bits[4:]), "below 10")


@pytest.mark.parametrize("edit, match", [
    (set_in(["layers", 0, "bits", "width"], 65), "width must be an integer in 0..64"),
    (set_in(["layers", 0, "exponents", "width"], -1), "width must be an integer in 0..64"),
    (set_in(["layers", 0, "bits", "min"], -3), "bit depths outside 0..32"),
    (set_in(["layers", 0, "bits", "min"], 2 ** 70), "min must be an integer"),
])
def test_widths_and_depths_in_range(edit, match):
    refused(edit_header(packing.to_bytes(base_model(), "fixed"), edit), match)


def test_streams_are_consumed_exactly():
    cm = base_model()
    data = packing.to_bytes(cm, "fixed")
    refused(edit_stream(data, 0, lambda bits: bits + "00000000"), "1 bytes left over")
    padded = [i for i, r in enumerate(size_report(cm).layers) if (r.code_bits + r.side_bits) % 8]
    refused(edit_stream(data, padded[0], lambda bits: bits[:-1] + "1"), "nonzero padding")


def test_ans_stream_is_consumed_exactly():
    data = packing.to_bytes(base_model("codebook"), "ans")
    version, header, body = split(data)
    start = header["layers"][0]["nbytes"] + 4 * header["layers"][0]["ans_words"]  # after conv1's words
    header["layers"][0]["ans_words"] += 1
    refused(join(version, header, body[:start] + b"\x01\x00\x00\x00" + body[start:]), "ANS stream")


def test_trailing_bytes_are_refused():
    version, header, body = split(packing.to_bytes(base_model()))
    refused(join(version, header, body + b"\0\0\0\0"), "take .* bytes but the file holds")


def test_codebook_indices_below_codebook_size():
    """Indices are stored at bit_length(K - 1) bits, which can hold more than K values."""
    cm = base_model("codebook")
    cm.codebook = torch.cat([cm.codebook, torch.tensor([2.0, 3.0, 4.0])])  # K = 8
    cm.layer("fc").codes[3, 7] = 7
    version, header, body = split(packing.to_bytes(cm, "fixed"))
    header["codebook_size"] = 5  # still 3-bit indices; drop the last three codebook values
    cb = sum(m["nbytes"] for m in header["layers"])
    refused(join(version, header, body[:cb + 20] + body[cb + 32:]), "codebook index 7 >= codebook size 5")
    cm.codebook = cm.codebook[:5]
    with pytest.raises(IndexError):  # the writer refuses such a model
        packing.to_bytes(cm)


@pytest.mark.parametrize("value, new, match", [
    (0.0, 0.5, "channel 1 is listed dead but does not decode to zero"),  # codebook: [-0.5 -0.125 0 0.25 1]
    (1.0, 0.0, "channel 3 .* decodes to zero but is not listed dead"),
])
def test_a_dead_channel_list_that_contradicts_the_weights(value, new, match):
    """Dead channels are not stored, so the list must agree with the decoded weights, both ways."""
    cm = base_model("codebook")
    cm.layer("conv1.0").codes[3] = int((cm.codebook == 1.0).nonzero())  # alive, every weight 1.0
    version, header, body = split(packing.to_bytes(cm, "fixed"))
    at = sum(m["nbytes"] for m in header["layers"]) + 4 * int((cm.codebook == value).nonzero())
    refused(join(version, header, body[:at] + struct.pack("<f", new) + body[at + 4:]), match)


def check_outcome(data: bytes) -> None:
    """Refused with one explicit PackedFileError line, or a valid model; never a large allocation."""
    tracemalloc.start()
    try:
        try:
            cm = packing.from_bytes(data)
        except packing.PackedFileError as e:
            assert "\n" not in str(e) and "malformed packed model" not in str(e), str(e)
            return
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MB
    to_module(cm)
    size_report(cm)


FILES = {}


def files() -> list[bytes]:
    if not FILES:
        FILES["fixed"] = packing.to_bytes(base_model("mixed"), "fixed")
        FILES["ans"] = packing.to_bytes(base_model("mixed"), "ans")
    return [FILES["fixed"], FILES["ans"]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1,
                                   max_size=3))
def test_random_byte_flips_are_refused_or_decode(which, flips):
    data = bytearray(files()[which][:-32])
    for where, xor in flips:  # anywhere after the prelude: the header, the streams, the floats
        data[PRELUDE.size + int(where * (len(data) - PRELUDE.size))] ^= xor
    _, version, hlen = PRELUDE.unpack_from(data)
    check_outcome(join(version, bytes(data[PRELUDE.size:PRELUDE.size + hlen]), bytes(data[PRELUDE.size + hlen:])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1), st.data())
def test_random_header_numbers_are_refused_or_decode(which, data):
    version, header, body = split(files()[which])
    text = json.dumps(header, separators=(",", ":"))
    numbers = list(re.finditer(r"-?\d+(\.\d+)?", text))
    m = data.draw(st.sampled_from(numbers))
    value = data.draw(st.one_of(st.integers(-2, 70), st.integers(-2 ** 70, 2 ** 70), st.sampled_from(["true", "1.5"])))
    check_outcome(join(version, (text[:m.start()] + str(value) + text[m.end():]).encode(), body))


def test_a_huge_file_with_a_bad_header_is_refused_having_read_only_its_header(tmp_path):
    """Reported: ``inspect`` on a 3 GB file with a bad header used 3.7 GB before refusing it. The header is
    now checked against the architecture and the file's length before the body is read (a sparse file here,
    512 MB, so that a regression costs memory, not disk)."""
    crafted = edit_header(packing.to_bytes(base_model(), "fixed"), set_in(["layers", 2, "shape"], [10, 30_000_000]))
    valid = packing.to_bytes(base_model(), "fixed")  # a valid header over a body of the wrong length
    for data, match in ((crafted, "30000000 inputs"), (valid, "but the file holds")):
        f = tmp_path / "huge.packed"
        f.write_bytes(data)
        with open(f, "ab") as out:
            out.truncate(512 * MB)
        tracemalloc.start()
        try:
            with pytest.raises(packing.PackedFileError, match=match):
                packing.read_file(f)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * MB
