import math

import pytest
import torch

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.compressed import to_module
from benchmarks.data import make_synthetic
from benchmarks.models import ModelSpec, build_model
from benchmarks.train import TrainConfig, evaluate, train
from conftest import randomize_bn, stored_result
from methods import ConfigError, get_method
from methods.self_compression import integer_bits, quantize

t = torch.tensor


def q1(w, b, e):
    return quantize(t([w]), t([b]), t([e])).item()


def test_q_hand_values():
    assert q1(0.3, 8.0, -3.0) == 0.25  # 0.3 / 2^-3 = 2.4 -> 2 -> 0.25
    assert q1(5.0, 2.0, 0.0) == 1.0  # clamp to 2^(2-1) - 1 = 1
    assert q1(-5.0, 2.0, 0.0) == -2.0  # clamp to -2^(2-1)
    assert q1(0.7, -3.0, 0.0) == 0.0  # relu(b) = 0: both bounds -1/2, rounds to zero
    assert q1(-9.0, 0.0, 0.0) == 0.0
    # b in (0, 1): bounds -2^-0.5 ~ -0.707 and 2^-0.5 - 1 ~ -0.293
    assert q1(-5.0, 0.5, 0.0) == -1.0 and q1(5.0, 0.5, 0.0) == 0.0
    assert q1(100.0, 4.0, 5.0) == 96.0  # 100 / 32 = 3.125 -> 3 -> 96
    assert q1(1000.0, 4.0, 5.0) == 224.0  # clamp to 7 -> 224


def grads(w, b, e):
    w, b, e = (t([v], dtype=torch.float64, requires_grad=True) for v in (w, b, e))
    quantize(w, b, e).sum().backward()
    return w.grad.item(), b.grad.item(), e.grad.item()


def test_ste_gradients_inside_clamp_range():
    # inside: q = 2^e * round(w 2^-e), STE: dq/dw = 1, dq/db = 0, dq/de = ln2 * 2^e * round(w 2^-e)
    gw, gb, ge = grads(0.3, 8.0, -3.0)
    assert gw == pytest.approx(1.0) and gb == 0.0
    assert ge == pytest.approx(math.log(2) * 0.25 - math.log(2) * 0.3)  # round is identity in backward


def unrounded(w, b, e):
    """What the STE differentiates: q without the rounding."""
    half = 2 ** (max(b, 0) - 1)
    return 2 ** e * min(max(w / 2 ** e, -half), half - 1)


def test_ste_gradients_outside_clamp_range_match_finite_differences():
    # above the range: q = 2^e (2^(b-1) - 1): no gradient to w; smooth in b and e
    w, b, e = 5.0, 2.5, 0.0
    gw, gb, ge = grads(w, b, e)
    assert gw == 0.0
    h = 1e-6
    fd_b = (unrounded(w, b + h, e) - unrounded(w, b - h, e)) / (2 * h)
    fd_e = (unrounded(w, b, e + h) - unrounded(w, b, e - h)) / (2 * h)
    assert gb == pytest.approx(math.log(2) * 2 ** (b - 1), rel=1e-6)
    assert gb == pytest.approx(fd_b, rel=1e-3)
    # d/de of 2^e * round(c): the rounded value stays in the product, so ln2 * 2^e * round(c) (here
    # round(2^1.5 - 1) = 2), which differs from the un-rounded finite difference by exactly that rounding
    assert ge == pytest.approx(math.log(2) * 2.0) and fd_e == pytest.approx(math.log(2) * (2 ** 1.5 - 1), rel=1e-4)
    # below the range: q = -2^e 2^(b-1)
    gw, gb, ge = grads(-9.0, 2.5, 1.0)
    assert gw == 0.0 and gb == pytest.approx(-2 * math.log(2) * 2 ** 1.5, rel=1e-6)
    assert ge == pytest.approx(math.log(2) * 2 * round(-(2 ** 1.5)), rel=1e-6)
    # relu(b) with b < 0: no gradient reaches b
    assert grads(0.7, -1.0, 0.0)[1] == 0.0


def test_integer_bits():
    codes = t([[0, 0], [1, -1], [-2, 1], [3, 0], [-5, 0]])
    assert integer_bits(codes).tolist() == [0, 2, 2, 3, 4]


def prepared(spec, **params):
    model = build_model(spec)
    sc = get_method("self_compression").from_params(**params)
    return sc, sc.prepare(model)


def test_Q_hand_count_with_dead_inputs():
    sc, model = prepared(ModelSpec("tinycnn"))
    with torch.no_grad():
        sc.quantizers["conv1.0"].b.copy_(t([0, -1, 2, 2, 2, 2, 2, 2.5]))  # 2 dead, sum 12.5
        sc.quantizers["conv2.0"].b.copy_(t([0.0] * 4 + [3.0] * 12))  # 4 dead, sum 36
        sc.quantizers["fc"].b.fill_(4.0)  # sum 40
    with torch.no_grad():
        Q, w = sc.size_terms()
    expected = (27 * 12.5 + 6 * 9 * 36 + 12 * 16 * 40) / (216 + 1152 + 2560)
    assert float(Q) == pytest.approx(expected)
    assert float(w) == pytest.approx((27 * 6 + 54 * 12 + 192 * 10) / (216 + 1152 + 2560))


@pytest.mark.parametrize("spec", [ModelSpec("tinycnn"), ModelSpec("resnet9", 0.125)])
def test_channel_removal_preserves_outputs(spec):
    sc, model = prepared(spec)
    randomize_bn(model)
    model.eval()
    qs = sc.quantizers
    names = list(qs)
    with torch.no_grad():
        for i, name in enumerate(names[:-1]):
            qs[name].b[i % qs[name].b.numel()] = -0.5  # one channel of every layer dies...
        if "res1b.0" in qs:  # ...in a residual sum only one branch drops channel 3: it must stay
            qs["res1b.0"].b[3] = -0.5
            qs["layer3.0"].b[5] = -0.5  # ...and both branches of s3 drop channel 5: it goes
            qs["res3b.0"].b[5] = -0.5
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    widths_before = {n: qs[n].b.numel() for n in names}
    opt = torch.optim.Adam([p for q in qs.values() for p in (q.b, q.e)], lr=0.1)
    sc.prune(model, [opt])
    after = model(x)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert sum(qs[n].b.numel() for n in names) < sum(widths_before.values())
    if "res1b.0" in qs:
        assert qs["res1b.0"].b.numel() == widths_before["res1b.0"]  # s1 channel 3 kept (layer1 alive)
        # s3: channel 5 dead in both branches goes; channel 7 (dead only in res3b) stays
        assert qs["res3b.0"].b.numel() == widths_before["res3b.0"] - 1
    # the exported, packed and rebuilt artifact computes the same function, with the channels absent
    cm = packing.from_bytes(packing.to_bytes(sc.export(model, spec)))
    decoded = to_module(cm)
    assert torch.allclose(decoded(x), after, atol=1e-5)


@pytest.mark.slow
def test_training_with_large_gamma_removes_channels_and_small_gamma_keeps_accuracy():
    data = make_synthetic(n_train=1024, n_test=256)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    spec = ModelSpec("tinycnn")
    results = {}
    for gamma in (0.0, 1.0):
        torch.manual_seed(0)
        sc, model = prepared(spec, gamma=gamma)
        train(sc, model, data, cfg, progress=False)
        cm = packing.from_bytes(packing.to_bytes(sc.export(model, spec)))
        results[gamma] = (evaluate(to_module(cm), data.test), size_report(cm), model)
    acc_small, rep_small, _ = results[0.0]
    acc_big, rep_big, big = results[1.0]
    assert acc_small > 80.0
    assert rep_big.bits_remaining_pct < 0.5 * rep_small.bits_remaining_pct
    assert rep_big.weights_remaining_pct < 100.0
    assert big.conv2[0].weight.shape[0] < 16 or big.conv1[0].weight.shape[0] < 8  # physically removed


def _trained_and_decoded(sc, model, spec, x):
    model.eval()
    with torch.no_grad():
        trained = model(x)
    decoded = to_module(packing.from_bytes(packing.to_bytes(sc.export(model, spec))))
    with torch.no_grad():
        return trained, decoded(x)


def test_channel_with_bits_but_all_codes_zero_computes_the_exported_function():
    """b > 0, yet every weight rounds to zero (weights shrank relative to 2^e): the export drops the
    channel, so training must not pass its BatchNorm shift on either."""
    spec = ModelSpec("tinycnn")
    sc, model = prepared(spec)
    randomize_bn(model)
    q = sc.quantizers["conv1.0"]
    with torch.no_grad():
        w = model.conv1[0].parametrizations.weight.original
        w[2] = 0.1 * 2.0 ** q.e[2]  # |w| / 2^e = 0.1: rounds to 0 at any b
    x = torch.randn(4, 3, 32, 32)
    trained, decoded = _trained_and_decoded(sc, model, spec, x)
    assert bool(q.alive()[2]) and not bool(q.sounding()[2])
    assert torch.allclose(trained, decoded, atol=1e-5), (trained - decoded).abs().max()
    with torch.no_grad():  # the channel speaks again once a weight rounds away from zero
        w[2, 0, 0, 0] = 3.0 * 2.0 ** q.e[2]
        model(x)
    assert bool(q.sounding()[2])


def test_layer_that_loses_every_channel_is_recorded_and_still_decodes_exactly():
    spec = ModelSpec("tinycnn")
    sc, model = prepared(spec)
    randomize_bn(model)
    with torch.no_grad():
        sc.quantizers["conv2.0"].b.fill_(-0.5)
    opt = torch.optim.Adam([p for q in sc.quantizers.values() for p in (q.b, q.e)], lr=0.1)
    sc.prune(model, [opt])
    assert sc.epoch_metrics(model)["collapsed_layers"] == ["conv2.0"]
    x = torch.randn(4, 3, 32, 32)
    trained, decoded = _trained_and_decoded(sc, model, spec, x)
    assert torch.allclose(trained, decoded, atol=1e-5)
    assert torch.allclose(trained, trained[:1].expand_as(trained))  # the output no longer depends on the input


def test_tables_mark_collapsed_layers(tmp_path):
    from benchmarks.report.runs import load
    from benchmarks.report.tables import write_tables

    for i, collapsed in enumerate([["conv2.0"], []]):
        stored_result(tmp_path, f"r{i}", "self_compression", {"gamma": i}, 10.0, {"bits_remaining_pct": 1.0 + i,
                      "weights_remaining_pct": 50.0}, method_metrics={"collapsed_layers": collapsed})
    df = write_tables(load(tmp_path))
    assert list(df.collapsed_layers.fillna("")) == ["conv2.0", ""]
    row = next(line for line in (tmp_path / "tables.md").read_text().splitlines() if "gamma=0 " in line)
    assert "conv2.0" in row


def test_dead_channels_are_silent_at_once_and_removed_every_prune_every_steps():
    from methods import self_compression as scm
    sc, model = prepared(ModelSpec("tinycnn"))
    randomize_bn(model)
    model.train()
    q = sc.quantizers["conv1.0"]
    with torch.no_grad():
        q.b[2] = -0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    acts = {}
    bn = dict(model.named_modules())[[n for n in sc.topo.nodes if n.name == "conv1.0"][0].bn]
    bn.register_forward_hook(lambda m, i, o: acts.__setitem__("bn", o.detach()))
    width = q.b.numel()
    for step in range(1, scm.PRUNE_EVERY + 1):
        model(torch.randn(8, 3, 32, 32))
        assert acts["bn"][:, 2].abs().max() == 0 and acts["bn"][:, 3].abs().max() > 0  # silent, exactly
        sc.after_step(model, [opt])
        assert q.b.numel() == (width if step < scm.PRUNE_EVERY else width - 1)  # removed at the check
    assert sc.state_dict() == {"steps": scm.PRUNE_EVERY}  # resumes on the same schedule


def test_bitops_cost_weighs_each_layers_bits_by_its_output_positions():
    sc, model = prepared(ModelSpec("tinycnn"), cost="bitops")
    assert sc.positions == {"conv1.0": 32 * 32, "conv2.0": 16 * 16, "fc": 1}
    with torch.no_grad():
        sc.quantizers["conv1.0"].b.copy_(t([0, -1, 2, 2, 2, 2, 2, 2.5]))  # 2 dead, sum 12.5
        sc.quantizers["conv2.0"].b.copy_(t([0.0] * 4 + [3.0] * 12))  # 4 dead, sum 36
        sc.quantizers["fc"].b.fill_(4.0)  # sum 40
        Q, w = sc.size_terms()
    expected = (1024 * 27 * 12.5 + 256 * 6 * 9 * 36 + 12 * 16 * 40) / (1024 * 216 + 256 * 1152 + 2560)
    assert float(Q) == pytest.approx(expected)
    assert float(w) == pytest.approx((27 * 6 + 54 * 12 + 192 * 10) / (216 + 1152 + 2560))  # weights, as before


def test_gamma_warmup_and_grace_period():
    sc, model = prepared(ModelSpec("tinycnn"), gamma=0.1, gamma_warmup=0.5, grace=0.25)
    sc.before_step(model, 0.25)
    assert sc.gamma_now() == pytest.approx(0.05)
    sc.before_step(model, 0.75)
    assert sc.gamma_now() == pytest.approx(0.1)
    q = sc.quantizers["conv1.0"]
    for progress, floor in ((0.1, 1.0), (0.5, -3.0)):  # held at >= 1 bit in the grace period, free after
        with torch.no_grad():
            q.b[0] = -3.0
        sc.before_step(model, progress)
        sc.after_step(model, [])
        assert float(q.b.detach()[0]) == floor
    with pytest.raises(ConfigError, match="grace"):
        get_method("self_compression").from_params(grace=1.5)
