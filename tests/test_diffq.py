import copy
import math

import pytest
import torch

from benchmarks.accounting import packing
from benchmarks.accounting.size import entry_width, size_report
from benchmarks.compressed import decode_layer, to_module
from benchmarks.data import make_synthetic
from benchmarks.models import ModelSpec, build_model
from benchmarks.topology import weight_of
from benchmarks.train import TrainConfig, train
from conftest import randomize_bn
from methods import ConfigError, get_method
from methods.diffq import GroupQuantizer, bits_from_logit, logit_for_bits

GROUP_SIZES = (1, 4, 8, 16)


def prepared(spec, **params):
    dq = get_method("diffq").from_params(**params)
    return dq, dq.prepare(build_model(spec))


def set_bits(q: GroupQuantizer, bits: torch.Tensor) -> None:
    """Give the groups of ``q`` these (continuous) bit depths."""
    with torch.no_grad():
        q.logit.copy_(torch.logit((bits.double() - q.b_min) / (q.b_max - q.b_min)).float())


def random_bits(q: GroupQuantizer, lo: int = 3, hi: int = 14, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Integer bit depths in [lo, hi] (both present, so the stored field is as wide as the estimate's)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(lo, hi + 1, (q.n_groups,), generator=g).double()
    b[0], b[-1] = lo, hi
    set_bits(q, (b + offset).clamp(q.b_min + 0.2, q.b_max - 0.2))  # rounds back to b
    return b


# --- the bits-from-logit map and the configuration ------------------------------------------------------

def test_bits_from_logit_map_and_bounds():
    assert logit_for_bits(8, 2, 15) == pytest.approx(math.log(6 / 7))
    for b in (2.5, 8.0, 14.9):
        assert float(bits_from_logit(torch.tensor(logit_for_bits(b, 2, 15)), 2, 15)) == pytest.approx(b, rel=1e-6)
    l = torch.linspace(-60, 60, 1001)
    b = bits_from_logit(l, 2, 15)
    assert bool((b >= 2).all() and (b <= 15).all()) and b[0] == 2 and b[-1] == 15
    assert bool((b[1:] >= b[:-1]).all())  # monotone
    q = GroupQuantizer(torch.randn(10), 4, 2, 15, 8.0, "uniform")
    assert q.n_groups == 3 and torch.allclose(q.bits(), torch.full((3,), 8.0))
    set_bits(q, torch.tensor([2.01, 9.49, 14.99]))
    assert q.int_bits().tolist() == [2, 9, 15]
    q1 = GroupQuantizer(torch.randn(10), 4, 1, 4, 2.0, "uniform")
    with torch.no_grad():
        q1.logit.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    assert q1.int_bits().tolist() == [1, 2, 4]  # never below 1, never above b_max


@pytest.mark.parametrize("params", [{"group_size": 3}, {"b_min": 8, "b_max": 8}, {"noise": "laplace"},
                                    {"bits_init": 15.0}, {"lam": -1.0}, {"lr_logits": 0.0}, {"min_size": -1},
                                    {"b_min": 0}])
def test_bad_config_is_refused(params):
    with pytest.raises(ConfigError):
        get_method("diffq").from_params(**params)


def test_registered_with_log_spaced_grids():
    cls = get_method("diffq")
    grid = cls.default_grid
    assert len(grid["smoke"]["lam"]) == 2 and len(grid["cpu"]["lam"]) >= 5 and len(grid["paper"]["lam"]) == 7
    for values in (grid["cpu"]["lam"], grid["paper"]["lam"]):
        ratios = [b / a for a, b in zip(values, values[1:])]
        assert all(2 < r < 4 for r in ratios)
    cfg = cls.Config()
    assert (cfg.b_min, cfg.b_max, cfg.bits_init, cfg.noise) == (2, 15, 8.0, "gaussian")


# --- noise, eval-mode quantization and gradients ----------------------------------------------------------

@pytest.mark.parametrize("noise,ratio", [("uniform", 1 / math.sqrt(12)), ("gaussian", 0.5)])
def test_noise_statistics(noise, ratio):
    w = torch.randn(1 << 20)
    q = GroupQuantizer(w, 8, 2, 15, 8.0, noise)
    set_bits(q, torch.rand(q.n_groups) * 10 + 3)  # bits vary from group to group
    with torch.no_grad():
        n = q(w) - w
        delta = (w.max() - w.min()) / (2 ** q.bits().repeat_interleave(8) - 1)
    u = (n / delta).double()
    assert float(u.mean()) == pytest.approx(0.0, abs=3e-3)
    assert float(u.std()) == pytest.approx(ratio, rel=1e-2)
    if noise == "uniform":
        assert float(u.abs().max()) <= 0.5 + 1e-4


def test_eval_mode_is_true_uniform_quantization():
    w = torch.randn(1000)
    q = GroupQuantizer(w, 16, 2, 15, 8.0, "uniform")  # 1000 = 62 × 16 + 8: a short last group
    set_bits(q, torch.linspace(2.2, 14.8, q.n_groups))
    q.eval()
    out = q(w)
    bits = q.int_bits().repeat_interleave(16)[:1000].double()
    lo, hi = float(w.min()), float(w.max())
    step = (hi - lo) / (2 ** bits - 1)
    codes = (out.double() - lo) / step
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the grid
    assert bool(((out.double() - w.double()).abs() <= step / 2 + 1e-6).all())  # the nearest level
    assert out.min() == w.min() and out.max() == w.max()  # the range's ends are levels
    assert torch.equal(q(w), out)  # deterministic


def test_gradients_reach_logits_through_the_noise_and_the_penalty():
    spec = ModelSpec("tinycnn")
    dq, model = prepared(spec, lam=0.1)
    model.train()
    out = model(torch.randn(8, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.arange(8)).backward()
    for name, q in dq.quantizers.items():
        assert q.logit.grad is not None and bool(torch.isfinite(q.logit.grad).all()), name
        assert float(q.logit.grad.abs().sum()) > 0, name
        assert weight_of(dq.modules[name]).grad is not None
    logits = {id(q.logit) for q in dq.quantizers.values()}
    (group,) = dq.param_groups(model)  # their own Adam group, without weight decay
    assert {id(p) for p in group.params} == logits and group.weight_decay == 0.0 and group.optimizer == "adam"
    assert not logits & {id(p) for p in dq.weight_params(model)}
    # the penalty alone: d(λ S / N)/dl = λ · (weights in the group) · (b_max - b_min) σ'(l) / N
    dq2, model2 = prepared(ModelSpec("tinycnn"), lam=0.1, group_size=16)  # conv1: 216 = 13 × 16 + 8
    pen = dq2.penalty(model2, torch.tensor(0.0))
    pen.backward()
    q = dq2.quantizers["conv1.0"]
    s = torch.sigmoid(q.logit.detach())
    expect = 0.1 * 13 * s * (1 - s) / dq2.n_weights
    assert float(q.logit.grad[0]) == pytest.approx(16 * float(expect[0]), rel=1e-5)
    assert float(q.logit.grad[-1]) == pytest.approx(8 * float(expect[-1]), rel=1e-5)  # the short group


# --- the size estimate against the accounting --------------------------------------------------------------

def test_size_estimate_hand_count_with_a_short_last_group():
    q = GroupQuantizer(torch.randn(2, 5), 4, 2, 15, 8.0, "uniform")  # groups of 4, 4, 2 weights
    set_bits(q, torch.tensor([3.0, 5.0, 7.0]))
    assert float(q.size_bits().detach()) == pytest.approx(4 * 3 + 4 * 5 + 2 * 7 + 64 + 3 * 4, rel=1e-6)


@pytest.mark.parametrize("group_size", GROUP_SIZES)  # 16 does not divide the first conv's 216 weights
@pytest.mark.parametrize("min_size", [0, 300])  # 300: the first conv stays float
def test_estimate_equals_measured_size_at_integer_bits(tiny, group_size, min_size):
    spec, _ = tiny
    dq, m = prepared(spec, group_size=group_size, min_size=min_size)
    assert ("conv1.0" in dq.quantizers) == (min_size == 0)
    for i, q in enumerate(dq.quantizers.values()):
        random_bits(q, seed=i)
    rep = size_report(dq.export(m, spec))
    assert rep.bits == float(dq.size_bits(rounded=True))
    assert rep.bits == pytest.approx(float(dq.size_bits().detach()), rel=1e-6)
    first = rep.layers[0]
    if min_size:
        assert first.scheme == "float" and first.code_bits == 32 * first.weights_total
    else:
        assert first.scheme == "group" and first.side_bits == 64 + math.ceil(216 / group_size) * 4
    assert rep.weights_remaining_pct == 100.0  # DiffQ never prunes
    metrics = dq.epoch_metrics(m)
    assert metrics["est_bits_pct"] == pytest.approx(rep.bits_remaining_pct, rel=1e-6)
    assert sum(metrics["bits_hist"].values()) == sum(q.n_groups for q in dq.quantizers.values())
    # narrower integer bits: the accounting stores the field narrower, the estimate is an upper bound
    for i, q in enumerate(dq.quantizers.values()):
        random_bits(q, lo=5, hi=8, seed=i)
    cm = dq.export(m, spec)
    narrower = sum(layer.bits.numel() * (4 - entry_width(layer.bits)) for layer in cm.layers if layer.scheme == "group")
    assert narrower > 0
    assert float(dq.size_bits(rounded=True)) == size_report(cm).bits + narrower


@pytest.mark.parametrize("spec,group_size", [(ModelSpec("tinycnn"), 4), (ModelSpec("resnet9", 0.125), 16)])
def test_export_decodes_to_the_eval_mode_model(spec, group_size):
    dq, model = prepared(spec, group_size=group_size)  # 16 does not divide the first conv's 216 weights
    randomize_bn(model)
    for i, q in enumerate(dq.quantizers.values()):
        random_bits(q, lo=2, hi=15, offset=0.2, seed=i)
    model.eval()
    cm = dq.export(model, spec)
    for layer in cm.layers:  # the eval-mode weights are exactly the decoded codes
        assert torch.equal(decode_layer(layer), dq.modules[layer.name].weight)
        assert int(layer.bits.min()) == 2 and int(layer.bits.max()) == 15
    x = torch.randn(4, 3, 32, 32)
    decoded = to_module(packing.from_bytes(packing.to_bytes(cm)))
    assert torch.equal(decoded(x), model(x))
    model.to(memory_format=torch.channels_last)  # the loop's layout on CPU changes nothing
    cl = dq.export(model, spec)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(cm.layers, cl.layers))


# --- the reference package as an oracle -------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [1, 4, 8])  # the reference needs a group size dividing every tensor
def test_agrees_with_the_reference_diffq(tiny, group_size):
    from diffq import DiffQuantizer

    spec, ref_model = tiny
    ours = copy.deepcopy(ref_model)
    dq = get_method("diffq").from_params(group_size=group_size)
    dq.prepare(ours)
    ref = DiffQuantizer(ref_model, min_size=0, group_size=group_size, exclude=["bias", "*.1.weight"])
    assert [qp.module for qp in ref._qparams] == [ref_model.conv1[0], ref_model.conv2[0], ref_model.fc]
    n_other = sum(p.numel() for p in ref._others)
    for i, (q, qp) in enumerate(zip(dq.quantizers.values(), ref._qparams)):
        random_bits(q, lo=2, hi=14, offset=0.2, seed=i)  # rounded: 2 and 14 present in every tensor
        with torch.no_grad():
            qp.logit.copy_(q.logit)
    mb = 8 * 2 ** 20
    header = 8 * len(ref._qparams)  # the reference's 8-bit per-tensor header: in packed_bytes for us
    # differentiable size (the reference's bit-depth field width from its max rounded bits: 4 here)
    ref_size = ref.model_size()
    assert float(dq.size_bits().detach()) == pytest.approx(float(ref_size.detach()) * mb - 32 * n_other - header, rel=1e-6)
    (ref_size * mb).backward()
    dq.size_bits().backward()
    for q, qp in zip(dq.quantizers.values(), ref._qparams):
        torch.testing.assert_close(q.logit.grad, qp.logit.grad, rtol=1e-4, atol=1e-6)
    # true size: the same rounded bits, codes and range
    rep = size_report(dq.export(ours, spec))
    assert rep.bits == pytest.approx(ref.true_model_size() * mb - 32 * n_other - header, rel=1e-6)
    # eval-mode weights, compared before the reference's packing (which drops groups at 15 bits)
    ours.eval()
    # (it rounds in float32, we in float64: a weight within float32 error of a rounding boundary may land on
    # the neighbouring level; every other weight agrees to float32 precision)
    with ref.enter_quantize():
        for name, q in dq.quantizers.items():
            a, b = dq.modules[name].weight, dict(ref_model.named_modules())[name].weight.detach()
            w = weight_of(dq.modules[name])
            step = (w.max() - w.min()).detach() / (2.0 ** q.int_bits().repeat_interleave(group_size) - 1)
            diff = (a - b).abs().flatten()
            assert bool((diff <= 1.001 * step + 1e-7).all()), name
            assert int((diff > 1e-6).sum()) <= 0.01 * diff.numel(), name


# --- training -----------------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from threads; on a loaded 2-core machine they lose a lot to them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_with_a_large_penalty_lowers_bits(one_thread):
    data = make_synthetic(n_train=256, n_test=64)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    spec = ModelSpec("tinycnn")
    mean_bits = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        dq, model = prepared(spec, lam=lam)
        history = []
        train(dq, model, data, cfg, on_epoch=history.append, progress=False)
        assert {"est_bits", "est_bits_pct", "mean_bits", "bits_hist"} <= set(history[-1])
        mean_bits[lam] = history[-1]["mean_bits"]
        rep = size_report(dq.export(model, spec))
        assert rep.bits <= history[-1]["est_bits_rounded"]
    assert mean_bits[1.0] < 7.0 and mean_bits[1.0] < mean_bits[0.0] - 1.0
