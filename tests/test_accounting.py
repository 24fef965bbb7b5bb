import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.accounting import packing
from benchmarks.accounting.bitstream import BitReader, pack_bits
from benchmarks.accounting.size import size_report
from benchmarks.compressed import CompressedModel, LayerCode, export_float, to_module
from conftest import randomize_bn


def channel_export(cm: CompressedModel, bits: dict[str, list[int]], exponent: int = -4) -> CompressedModel:
    """Quantize a float export per channel at the given bit depths (0 = channel gone)."""
    layers = []
    for L in cm.layers:
        b = torch.tensor(bits[L.name])
        shape = (-1,) + (1,) * (L.codes.dim() - 1)
        lo = torch.where(b > 0, -(2 ** (b - 1)), 0).view(shape)
        hi = torch.where(b > 0, 2 ** (b - 1) - 1, 0).view(shape)
        codes = torch.minimum(torch.maximum((L.codes * 2.0 ** -exponent).round().long(), lo), hi)
        codes[codes == 0] = -1  # no accidental all-zero channels: only b = 0 kills one
        codes[b == 0] = 0
        layers.append(LayerCode(L.name, L.kind, L.shape, L.full_shape, "channel", codes, bits=b,
                                exponents=torch.full((len(b),), exponent)))
    return CompressedModel(cm.arch, cm.topology, layers, cm.others)


def test_float_export_is_exactly_100_percent(tiny):
    spec, model = tiny
    r = size_report(export_float(model, spec))
    assert r.bits_remaining_pct == 100.0 and r.weights_remaining_pct == 100.0
    assert r.weights_total == 216 + 1152 + 2560


def test_hand_counted_conv_bn_conv_linear(tiny):
    """conv1: 8 out (3x3x3), conv2: 16 out (8x3x3), fc: 10 out (16 channels x 16 positions)."""
    spec, model = tiny
    bits = {"conv1.0": [0, 0, 2, 2, 2, 2, 2, 2],  # two channels gone -> conv2 loses 2 of 8 inputs
            "conv2.0": [0] * 4 + [3] * 12,  # four gone -> fc loses 4 x 16 inputs
            "fc": [4] * 10}
    r = size_report(channel_export(export_float(model, spec), bits))
    rem = {"conv1.0": 6 * 27, "conv2.0": 12 * 6 * 9, "fc": 10 * 12 * 16}
    assert [x.weights_remaining for x in r.layers] == list(rem.values())
    assert r.weights_remaining == sum(rem.values())
    code_bits = 2 * rem["conv1.0"] + 3 * rem["conv2.0"] + 4 * rem["fc"]
    # side info: bit depths at bit_length(max - min) bits each (conv1: 2 -> 2 bits, conv2: 3 -> 2 bits,
    # fc: 0 bits), constant exponents 0 bits, dead channel indices at bit_length(C - 1) bits each
    side = 8 * 2 + 16 * 2 + 0 + 2 * 3 + 4 * 4
    assert r.code_bits == code_bits and r.side_bits == side and r.bits == code_bits + side
    assert r.bits_remaining_pct == pytest.approx(100 * (code_bits + side) / (32 * r.weights_total))
    assert r.weights_remaining_pct == pytest.approx(100 * sum(rem.values()) / r.weights_total)


def test_entropy_and_unique_values_hand_counted(tiny):
    spec, model = tiny
    cm = channel_export(export_float(model, spec), {"conv1.0": [1] * 8, "conv2.0": [1] * 16, "fc": [1] * 10})
    for L in cm.layers:  # codes in {-1, 0}: half -1, half 0 in every layer (no channel all zero)
        flat = L.codes.view(-1)
        flat[:] = 0
        flat[::2] = -1
    r = size_report(cm)
    assert r.unique_values == 2 and r.nonzero_weights == math.ceil(216 / 2) + 1152 // 2 + 2560 // 2
    assert r.code_entropy_bits == pytest.approx(sum(L.codes.numel() for L in cm.layers) * 1.0, rel=1e-3)
    assert r.value_entropy_per_weight == pytest.approx(1.0, rel=1e-3) and r.value_entropy_per_weight_nonzero == 0


def test_residual_channel_stays_while_one_branch_keeps_it(small_resnet):
    spec, model = small_resnet
    cm = export_float(model, spec)
    bits = {L.name: [4] * L.shape[0] for L in cm.layers}
    bits["res1b.0"][0] = 0  # only one branch of the s1 sum drops channel 0
    bits["res3b.0"][1] = 0
    bits["layer3.0"][1] = 0  # both branches of the s3 sum drop channel 1
    r = size_report(channel_export(cm, bits))
    by = {x.layer: x for x in r.layers}
    per = lambda name: math.prod(cm.layer(name).shape[1:])  # noqa: E731
    assert by["res1b.0"].weights_remaining == (cm.layer("res1b.0").shape[0] - 1) * per("res1b.0")
    assert by["layer2.0"].weights_remaining == cm.layer("layer2.0").codes.numel()  # s1 channel 0 stays
    c3 = cm.layer("layer3.0").shape[0]
    assert by["res3a.0"].weights_remaining == c3 * (c3 - 1) * 9  # s3 channel 1 removed from its inputs
    assert by["fc"].weights_remaining == 10 * (c3 - 1)


@pytest.mark.parametrize("fixture", ["tiny", "small_resnet"])
def test_save_load_round_trip_bit_exact(fixture, request, tmp_path):
    spec, model = request.getfixturevalue(fixture)
    randomize_bn(model)
    cm = export_float(model, spec)
    bits = {L.name: [(i % 5) for i in range(L.shape[0])] for L in cm.layers}
    bits["fc"] = [3] * cm.layer("fc").shape[0]
    q = channel_export(cm, bits)
    size = packing.save(q, tmp_path / "m.packed", coding="fixed")
    back, layout = packing.read_file(tmp_path / "m.packed")
    a, b = to_module(q), to_module(back)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    r = size_report(back, layout)
    assert r.bits == size_report(q).bits and r.packed_bytes == size
    # fixed-length: every layer's stream is its code and side bits rounded up to a byte
    assert r.coded_bits == sum(-(-(x.code_bits + x.side_bits) // 8) * 8 for x in r.layers)


def test_removed_channels_are_physically_absent(tiny):
    spec, model = tiny
    bits = {"conv1.0": [0, 0, 2, 2, 2, 2, 2, 2], "conv2.0": [0] * 4 + [3] * 12, "fc": [4] * 10}
    m = to_module(channel_export(export_float(model, spec), bits))
    assert m.conv1[0].weight.shape == (6, 3, 3, 3) and m.conv1[1].running_mean.shape == (6,)
    assert m.conv2[0].weight.shape == (12, 6, 3, 3) and m.fc.weight.shape == (10, 12 * 16)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_corrupted_or_truncated_files_are_refused(tiny, tmp_path):
    spec, model = tiny
    data = packing.to_bytes(export_float(model, spec))
    for bad, why in [(data[:-10], "checksum"), (data[:20], "too short|checksum"),
                     (data[:100] + bytes([data[100] ^ 1]) + data[101:], "checksum"),
                     (b"NOTAPACK" + data[8:], "bad magic")]:
        with pytest.raises(packing.PackedFileError, match=why):
            packing.from_bytes(bad)


def test_pack_bits_round_trip():
    vals = torch.randint(0, 2 ** 20, (500,)).numpy()
    widths = torch.randint(0, 21, (500,)).numpy()
    vals = vals % (1 << widths)
    out = BitReader(pack_bits(vals, widths), "bit stream").read(widths.astype("int64"))
    assert (out == vals).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=8 + 16 + 10, max_size=8 + 16 + 10))
def test_bits_match_a_direct_count(bit_list):
    from benchmarks.models import ModelSpec, build_model
    spec = ModelSpec("tinycnn")
    cm = export_float(build_model(spec), spec)
    bits = {"conv1.0": bit_list[:8], "conv2.0": bit_list[8:24], "fc": [max(1, b) for b in bit_list[24:]]}
    r = size_report(channel_export(cm, bits))
    # direct count: a weight is stored iff its output channel and its input channel are both alive
    alive1 = [b > 0 for b in bits["conv1.0"]]
    alive2 = [b > 0 for b in bits["conv2.0"]]
    if not any(alive1):
        alive1[0] = True  # a fully dead space keeps one (zero) channel
    if not any(alive2):
        alive2[0] = True
    direct = sum(b * 27 for b in bits["conv1.0"])
    direct += sum(b * 9 * sum(alive1) for b in bits["conv2.0"])
    direct += sum(b * 16 * sum(alive2) for b in bits["fc"])
    assert r.code_bits == direct
