"""Packed format v2: exact round trips in both codings, coded_bits measured from the file, the two entropies,
stored version 1 files, and a reader written from the format description alone (docs/packed-format.md)."""
import glob
import hashlib
import json
import logging
import math
import struct
from pathlib import Path

import constriction
import numpy as np
import pytest
import torch

from benchmarks.accounting import entropy_coding, packing
from benchmarks.compressed import (CompressedModel, LayerCode, decode_layer, dead_outputs, export_float,
                                   remaining_mask, to_module)
from benchmarks.accounting.size import entropy, size_report
from benchmarks.models import ModelSpec, build_model
from benchmarks.report.runs import load
from conftest import CODEBOOK, randomize_bn, scheme_model

SCHEMES = ["channel", "channel_scales", "group", "codebook", "float", "mixed"]
# the committed runs written in packed format v1 (their result.json has no coded bits; later runs are v2)
STORED = sorted(p for p in glob.glob(str(Path(__file__).parent.parent / "results" / "**" / "model.packed"),
                                     recursive=True)
                if "coded_bits" not in json.loads((Path(p).parent / "result.json").read_text()).get("size", {}))


def export(name: str, width: float = 1.0) -> CompressedModel:
    spec = ModelSpec(name, width)
    model = build_model(spec).eval()
    randomize_bn(model)
    return export_float(model, spec)


def assert_same_model(a: CompressedModel, b: CompressedModel) -> None:
    """Bit for bit: the decoded networks, the stored codes and every side-information field."""
    ma, mb = to_module(a), to_module(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ma(x), mb(x))
    masks = remaining_mask(a)
    assert all(torch.equal(m, remaining_mask(b)[k]) for k, m in masks.items())
    for la, lb in zip(a.layers, b.layers):
        assert (la.name, la.scheme, la.shape, la.full_shape, la.group_size, la.lo, la.hi) == \
               (lb.name, lb.scheme, lb.shape, lb.full_shape, lb.group_size, lb.lo, lb.hi)
        m = masks[la.name]
        assert torch.equal(la.codes[m], lb.codes[m])
        for key in ("bits", "exponents", "scales"):
            va, vb = getattr(la, key), getattr(lb, key)
            assert (va is None and vb is None) or torch.equal(va, vb)
    assert {k: v.tolist() for k, v in dead_outputs(a).items()} == {k: v.tolist() for k, v in dead_outputs(b).items()}


ROUND_TRIPS = [(s, c, ("tinycnn", 1.0)) for s in SCHEMES for c in ("fixed", "ans", "auto")] + [
    (s, c, ("resnet9", 0.125)) for s in ("mixed", "channel") for c in ("fixed", "ans")]  # residual spaces


@pytest.mark.parametrize("scheme,coding,net", ROUND_TRIPS)
def test_round_trip_every_scheme_both_codings(scheme, coding, net):
    cm = scheme_model(scheme, export(*net))
    data = packing.to_bytes(cm, coding)
    back, layout = packing.read(data)
    assert layout.version == 2
    codings = {s.coding for s in layout.layers if cm.layer(s.name).scheme != "float"}
    assert codings <= ({"fixed"} if coding == "fixed" else {"ans"} if coding == "ans" else {"fixed", "ans"})
    assert all(s.coding == "fixed" for s in layout.layers if cm.layer(s.name).scheme == "float")
    assert_same_model(cm, back)
    assert packing.to_bytes(back, coding) == data  # what was read writes the same file
    r, r0 = size_report(back, layout), size_report(cm)
    for key in ("bits", "code_bits", "side_bits", "weights_remaining", "nonzero_weights", "unique_values",
                "code_entropy_bits", "value_entropy_per_weight"):
        assert getattr(r, key) == getattr(r0, key), key


def test_dead_channels_and_a_wholly_dead_space_round_trip():
    """A codebook layer's dead channel (zero is not index 0: v1 brought it back alive at codebook[0]) and a
    space whose every channel dies (channel 0 is kept for its consumers)."""
    cm = scheme_model("codebook", export("tinycnn"))
    cm.layer("conv1.0").codes[:] = 2  # every channel of space c1 decodes to zero
    back = packing.from_bytes(packing.to_bytes(cm))
    assert_same_model(cm, back)
    assert remaining_mask(back)["conv2.0"][:, 0].any() and not remaining_mask(back)["conv2.0"][:, 1:].any()
    assert size_report(back).weights_remaining == size_report(cm).weights_remaining


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("coding", ["auto", "ans"])
def test_coded_bits_are_the_files_payload_bytes(scheme, coding):
    cm = scheme_model(scheme, export("tinycnn"))
    data = packing.to_bytes(cm, coding)
    back, layout = packing.read(data)
    r = size_report(back, layout)
    others = sum(4 * t.numel() for t in back.others.values())
    assert r.coded_bits % 8 == 0 and len(data) == layout.header_bytes + r.coded_bits // 8 + others + 32
    assert r.packed_bytes == len(data) and r.coded_bits_pct == pytest.approx(100 * r.coded_bits / (32 * r.weights_total))
    for row, stored in zip(r.layers, layout.layers):
        assert stored.side_bits == row.side_bits and row.coded_bits == stored.coded_bits
        if stored.coding == "fixed":  # the stated padding: under a byte per layer stream
            assert 0 <= 8 * stored.stream_bytes - (row.code_bits + row.side_bits) < 8
        else:
            assert 0 <= 8 * stored.stream_bytes - (row.side_bits + stored.table_bits) < 8
            # the ANS words: the ideal coder's bound, plus whole 32-bit words for the final state
            assert row.code_entropy_bits - 32 <= 32 * stored.ans_words <= 1.01 * row.code_entropy_bits + 64
    if coding == "auto":
        assert r.coded_bits <= r.bits + 7 * len(r.layers)


def hand_codebook_model() -> CompressedModel:
    """conv1 all 0.25; conv2 half 0.25, half -0.5; fc per row 8 x 0.25, 4 x 1.0, 4 x 0 (repeated)."""
    cm = export("tinycnn")
    idx = {v: int((CODEBOOK == v).nonzero()) for v in (-0.5, 0.0, 0.25, 1.0)}
    codes = {"conv1.0": torch.full((8, 3, 3, 3), idx[0.25]),
             "conv2.0": torch.tensor([idx[0.25], idx[-0.5]]).repeat(16 * 8 * 9 // 2).view(16, 8, 3, 3),
             "fc": torch.tensor([idx[0.25]] * 8 + [idx[1.0]] * 4 + [idx[0.0]] * 4).repeat(160).view(10, 256)}
    layers = [LayerCode(L.name, L.kind, L.shape, L.full_shape, "codebook", codes[L.name]) for L in cm.layers]
    return CompressedModel(cm.arch, cm.topology, layers, cm.others, CODEBOOK.clone())


def test_value_and_code_entropy_hand_counted():
    r = size_report(hand_codebook_model())
    counts = {0.25: 216 + 576 + 1280, -0.5: 576, 1.0: 640, 0.0: 640}  # over the whole network
    n = sum(counts.values())
    assert n == 3928 and r.unique_values == 4
    assert r.value_entropy_per_weight == pytest.approx(-sum(c / n * math.log2(c / n) for c in counts.values()))
    nz = n - counts[0.0]
    assert r.value_entropy_per_weight_nonzero == pytest.approx(
        -sum(c / nz * math.log2(c / nz) for v, c in counts.items() if v != 0))
    # codes per layer: conv1 constant (0 bits), conv2 two equally likely (1 bit), fc 1/2, 1/4, 1/4 (1.5 bits)
    assert [x.code_entropy_bits for x in r.layers] == pytest.approx([0.0, 1152.0, 3840.0])


def test_code_entropy_respects_mixed_group_depths():
    """A DiffQ-style layer: half its groups at 1 bit (codes 0/1 even), half at 2 bits (codes 0..3 even).
    Per depth the entropy is 1 and 2 bits, exactly the fixed-length code bits; pooling the codes of both
    depths (the old entropy_bits) gives 1.81 bits for every weight, more than the codes take."""
    cm = export("tinycnn")
    fc = cm.layer("fc")
    bits = torch.tensor([1] * 80 + [2] * 80)  # groups of 16: fc rows 0-4 at 1 bit, rows 5-9 at 2 bits
    codes = torch.cat([torch.tensor([0, 1]).repeat(640), torch.tensor([0, 1, 2, 3]).repeat(320)]).view(10, 256)
    cm.layers[-1] = LayerCode("fc", "linear", fc.shape, fc.full_shape, "group", codes, bits=bits, lo=-1.0, hi=1.0,
                              group_size=16)
    row = size_report(cm).layers[-1]
    assert row.code_bits == 1280 * 1 + 1280 * 2 and row.code_entropy_bits == pytest.approx(1280 * 1 + 1280 * 2)
    assert 2560 * entropy(codes.flatten()) == pytest.approx(2560 * (0.75 * math.log2(8 / 3) + 0.75))
    assert 2560 * entropy(codes.flatten()) > row.code_bits


def test_a_layer_of_constant_codes_costs_almost_nothing():
    back, layout = packing.read(packing.to_bytes(hand_codebook_model()))
    conv1 = layout.layers[0]
    # 216 codes at 3 bits fixed-length; coded: the table (d - 1 = 0 at bit_length(min(216, 2^3) - 1) = 3 bits,
    # then the 3-bit code), no ANS word, one byte in all
    assert conv1.coding == "ans" and conv1.ans_words == 0 and conv1.table_bits == 6 and conv1.coded_bits == 8
    assert size_report(back, layout).layers[0].code_bits == 216 * 3


@pytest.mark.skipif(not STORED, reason="no stored results/**/model.packed")
@pytest.mark.parametrize("path", STORED, ids=lambda p: Path(p).parent.name)
@pytest.mark.slow
def test_stored_version_1_files_load_with_their_recorded_numbers(path):
    cm, layout = packing.read_file(path)
    recorded = json.loads((Path(path).parent / "result.json").read_text())["size"]
    r = size_report(cm, layout)
    assert layout.version == 1 and {s.coding for s in layout.layers} == {"fixed"}
    for key in ("bits", "code_bits", "side_bits", "other_bits", "weights_total", "weights_remaining",
                "nonzero_weights", "unique_values", "bits_remaining_pct", "weights_remaining_pct", "packed_bytes"):
        assert getattr(r, key) == recorded[key], key
    assert [(x.code_bits, x.side_bits) for x in r.layers] == [(x["code_bits"], x["side_bits"]) for x in recorded["layers"]]
    assert r.value_entropy_per_weight == pytest.approx(recorded["value_entropy_per_weight"])
    assert r.value_entropy_per_weight_nonzero == pytest.approx(recorded["value_entropy_per_weight_nonzero"])
    again, layout2 = packing.read(packing.to_bytes(cm))  # the same model as version 2: the same bits
    r2 = size_report(again, layout2)
    assert r2.bits == r.bits and r2.coded_bits <= r.bits + 7 * len(r.layers)


@pytest.mark.skipif(not STORED, reason="no stored results")
def test_report_reads_runs_stored_in_packed_format_v1():
    folder = Path(STORED[0]).parent.parent.parent
    df = load(folder).table
    ok = df[(df.status == "ok") & df.run_id.isin([Path(p).parent.name for p in STORED])]
    assert ok.value_entropy_per_weight.notna().all() and ok.value_entropy_per_weight_nonzero.notna().all()
    assert ok.coded_bits_pct.isna().all() and ok.code_entropy_bits.isna().all()  # not measured then


def test_without_constriction_fixed_length_is_written_and_coded_files_name_the_extra(monkeypatch, caplog):
    cm = scheme_model("codebook", export("tinycnn"))
    coded = packing.to_bytes(cm, "ans")
    monkeypatch.setattr(entropy_coding, "constriction", None)
    with caplog.at_level(logging.WARNING, logger="benchmarks.accounting.packing"):
        data = packing.to_bytes(cm)
    assert "scnn-bench[coded]" in caplog.text
    _, layout = packing.read(data)
    assert {s.coding for s in layout.layers} == {"fixed"}
    with pytest.raises(packing.PackedFileError, match=r"pip install 'scnn-bench\[coded\]'"):
        packing.from_bytes(coded)


# ---- an independent reader, written from the format description alone (docs/packed-format.md) ------------

class Bits:
    """MSB-first unsigned integers from a byte string."""

    def __init__(self, data: bytes):
        self.s, self.p = "".join(f"{x:08b}" for x in data), 0

    def read(self, w: int) -> int:
        self.p += w
        return int(self.s[self.p - w:self.p], 2) if w else 0

    def float32(self) -> float:
        return struct.unpack(">f", self.read(32).to_bytes(4, "big"))[0]

    def at_end(self) -> bool:
        return len(self.s) - self.p < 8 and set(self.s[self.p:]) <= {"0"}


def doc_read(data: bytes) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(header, per layer the decoded weights of its exported shape with 0 where absent, per layer the mask)."""
    magic, version, hlen = struct.unpack_from("<8sHI", data)
    assert magic == b"SCNNPACK" and version in (1, 2) and hashlib.sha256(data[:-32]).digest() == data[-32:]
    header = json.loads(data[14:14 + hlen])
    pos, streams = 14 + hlen, []
    for L in header["layers"]:
        words = np.frombuffer(data, "<u4", L.get("ans_words", 0), pos + L["nbytes"]).astype(np.uint32)
        streams.append((Bits(data[pos:pos + L["nbytes"]]), words))
        pos += L["nbytes"] + 4 * L.get("ans_words", 0)
    k = header["codebook_size"]
    codebook = np.frombuffer(data, "<f4", k, pos)
    pos += 4 * k + sum(4 * math.prod(shape) for _, shape in header["others"])
    assert pos == len(data) - 32
    layers = {L["name"]: L for L in header["layers"]}
    side = {}
    for L, (r, _) in zip(header["layers"], streams):
        c = L["shape"][0]
        dead = [r.read(max(1, (c - 1).bit_length())) for _ in range(L["n_dead"])]
        arrays = {key: [L[key]["min"] + r.read(L[key]["width"]) for _ in range(L[key]["n"])]
                  for key in ("bits", "exponents") if key in L}
        scales = [r.float32() for _ in range(L.get("n_scales", 0))]
        rng = (r.float32(), r.float32()) if L["scheme"] == "group" else None
        side[L["name"]] = (set(dead), arrays, scales, rng)
    removed = {}
    for space in {n["out_space"] for n in header["topology"]} - {"logits"}:
        producers = [n["name"] for n in header["topology"] if n["out_space"] == space]
        width = layers[producers[0]]["shape"][0]
        gone = [ch for ch in range(width) if all(ch in side[p][0] for p in producers)]
        removed[space] = set(gone[1:] if len(gone) == width else gone)  # channel 0 kept when all die
    weights, masks = {}, {}
    for node, (L, (r, words)) in zip(header["topology"], zip(header["layers"], streams)):
        dead, arrays, scales, rng = side[L["name"]]
        shape = L["shape"]
        mask = np.zeros(shape, bool)
        for o in range(shape[0]):
            for i in range(shape[1]):
                mask[o, i] = o not in dead and i // node["in_factor"] not in removed.get(node["in_space"], set())
        flat = np.flatnonzero(mask)
        per_out = math.prod(shape[1:])
        s = L["scheme"]
        widths = [arrays["bits"][p // per_out] if s == "channel" else arrays["bits"][p // L["group_size"]]
                  if s == "group" else max(1, (k - 1).bit_length()) if s == "codebook" else 32 for p in flat]
        if L.get("coding", "fixed") == "fixed":
            u = [r.read(w) for w in widths]
        else:
            u, decoder = [0] * len(widths), constriction.stream.stack.AnsCoder(words)
            for b in sorted({w for w in widths if w > 0}):
                where = [j for j, w in enumerate(widths) if w == b]
                n = len(where)
                d = r.read((min(n, 2 ** b) - 1).bit_length()) + 1
                if d == 1:
                    symbols = [r.read(b)] * n
                else:
                    codes = ([r.read(b) for _ in range(d)] if r.read(1) == 0 else
                             [i for i in range(2 ** b) if r.read(1)])
                    cw = r.read(6)
                    counts = np.array([r.read(cw) for _ in range(d)], np.float64)
                    model = constriction.stream.model.Categorical(counts, perfect=False)
                    symbols = [codes[j] for j in decoder.decode(model, n)]
                for j, v in zip(where, symbols):
                    u[j] = v
            assert decoder.is_empty()
        assert r.at_end()
        w = np.zeros(shape, np.float32)
        for p, ui, width in zip(flat, u, widths):
            o = p // per_out
            if s == "channel":
                scale = 2.0 ** arrays["exponents"][o] if "exponents" in arrays else scales[o]
                w.flat[p] = np.float32((ui - (2 ** (width - 1) if width else 0)) * scale)
            elif s == "group":
                lo, hi = rng
                w.flat[p] = np.float32(lo + ui * ((hi - lo) / (2.0 ** width - 1)))
            elif s == "codebook":
                w.flat[p] = codebook[ui]
            else:
                w.flat[p] = np.frombuffer(struct.pack(">I", ui), ">f4")[0]
        weights[L["name"]], masks[L["name"]] = w, mask
    return header, weights, masks


def doc_case(case: str) -> bytes:
    if case == "stored v1":
        return Path(STORED[0]).read_bytes()
    if case == "wholly dead space":
        cm = scheme_model("channel", export("tinycnn"))
        cm.layer("conv1.0").bits[:] = 0
        cm.layer("conv1.0").codes[:] = 0
        return packing.to_bytes(cm, "ans")
    cm, coding = {"mixed resnet ans": (lambda: scheme_model("mixed", export("resnet9", 0.125)), "ans"),
                  "group auto": (lambda: scheme_model("group", export("tinycnn")), "auto"),
                  "constant codebook": (hand_codebook_model, "auto"),
                  "scales fixed": (lambda: scheme_model("channel_scales", export("tinycnn")), "fixed")}[case]
    return packing.to_bytes(cm(), coding)


@pytest.mark.parametrize("case", ["mixed resnet ans", "group auto", "constant codebook", "scales fixed",
                                  "wholly dead space",
                                  pytest.param("stored v1", marks=pytest.mark.skipif(not STORED, reason="no results"))])
def test_a_reader_written_from_the_readme_alone_agrees(case):
    data = doc_case(case)
    header, weights, masks = doc_read(data)
    cm = packing.from_bytes(data)
    lib_masks = remaining_mask(cm)
    for layer in cm.layers:
        m = lib_masks[layer.name]
        assert np.array_equal(masks[layer.name], m.numpy())
        assert np.array_equal(weights[layer.name], (decode_layer(layer, cm.codebook) * m).numpy())


@pytest.mark.skipif(not STORED, reason="no stored runs in results/")
@pytest.mark.slow
def test_repack_rewrites_a_copy_of_stored_v1_runs_as_v2(tmp_path, capsys):
    """``benchmarks.accounting.repack --into`` measures stored v1 runs in the current format without retraining: the
    same network, the same fixed-length bits, now with coded bits; the original folder is left as it was."""
    import shutil

    from benchmarks.accounting import repack

    src = Path(min(STORED, key=lambda f: Path(f).stat().st_size)).parent  # the smallest stored run
    ref = tmp_path / "ref" / "runs" / src.name
    shutil.copytree(src, ref)
    before = json.loads((ref / "result.json").read_text())
    original = (ref / "model.packed").read_bytes()
    assert repack.main([str(tmp_path / "ref"), "--into", str(tmp_path / "v2")]) == 0
    assert "1 runs rewritten" in capsys.readouterr().out
    assert (ref / "model.packed").read_bytes() == original  # the reference stays v1
    after = json.loads((tmp_path / "v2" / "runs" / src.name / "result.json").read_text())
    _, layout = packing.read_file(tmp_path / "v2" / "runs" / src.name / "model.packed")
    assert layout.version == packing.VERSION and after["accuracy"] == before["accuracy"]
    assert after["size"]["bits"] == before["size"]["bits"] and after["size_before_repack"] == before["size"]
    assert 0 < after["size"]["coded_bits"] <= after["size"]["bits"] + 7 * len(layout.layers)
    assert "coded bits remaining %" in (tmp_path / "v2" / "tables.md").read_text()
    assert repack.main([str(tmp_path / "v2")]) == 0 and "0 runs rewritten in packed format v2, 1 already were" in capsys.readouterr().out
