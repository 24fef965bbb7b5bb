from collections import Counter
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.compressed import to_module
from benchmarks.data import make_synthetic
from benchmarks.models import ModelSpec, build_model
from benchmarks.train import TrainConfig, evaluate, train
from conftest import load_experiment, randomize_bn
from methods import ConfigError, Method, get_method
from methods import wf_centres as wce
from methods import wf_cluster as wc
from methods.wf_cluster import SHARES

POW2 = [2.0 ** k for k in range(-7, 1)]


def signed(mags):
    return sorted([-m for m in mags] + [0.0] + list(mags))


# --- centres -------------------------------------------------------------------------------------------

def test_order0_centres_are_zero_and_signed_powers_of_two():
    for delta in (0.005, 0.05, 0.2):
        assert list(wce.centre_values(0, delta)) == signed(POW2)
    assert list(wce.centre_values(0, 0.05, k_max=1)) == signed(POW2 + [2.0])


def test_order1_centres_hand_listed():
    # delta 0.2: grid ratio 1.2 / 0.8 = 1.5, so 2^-7 · 1.5^i for i = 0..11 (1.5^12 > 2^7), in units of 2^-7:
    # 1, 1.5, 2.25, 3.375, 5.06, 7.59, 11.4, 17.1, 25.6, 38.4, 57.7, 86.5, each to the log-nearest
    # 2^k (1 + 2^-i): 1, 1.5, 2.25, 3, 5, 8, 12, 17, 24, 40, 64, 80; plus the order-0 powers of two
    units = [1, 1.5, 2, 2.25, 3, 4, 5, 8, 12, 16, 17, 24, 32, 40, 64, 80, 128]
    assert list(wce.centre_values(1, 0.2)) == signed([u / 128 for u in units])


def test_higher_orders_only_add_sums_of_at_most_order_plus_one_powers_of_two():
    for delta in (0.01, 0.05):
        prev = set(wce.centre_values(0, delta))
        for order in range(1, 5):
            cur = wce.centre_values(order, delta)
            assert prev <= set(cur) and len(cur) > len(prev)
            for v in cur:
                if v:
                    assert bin(int(abs(v) * 2 ** 17)).count("1") <= order + 1 and 2 ** -7 <= abs(v) <= 1
            prev = set(cur)


def test_delta_schedule():
    assert [wc.delta_at(0.01, t, 10) for t in range(1, 11)] == pytest.approx([0.1, 0.09, 0.08, 0.07, 0.06, 0.05,
                                                                              0.04, 0.03, 0.02, 0.01])  # the paper's
    assert [wc.delta_at(0.01, t, 10, "9to1") for t in range(1, 11)] == pytest.approx(
        [0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.01])
    with pytest.raises(ConfigError, match="0.1000"):
        get_method("weight_fixing").from_params(delta=0.1)  # 10·delta must stay below 1
    get_method("weight_fixing").from_params(delta=0.1, delta_schedule="9to1")


def test_regulariser_sees_only_the_chosen_centres():
    torch.manual_seed(0)
    model = build_model(ModelSpec("tinycnn"))
    for centres, expect_chosen in (("chosen", True), ("candidates", False)):
        wf = get_method("weight_fixing").from_params(delta=0.02, reg_centres=centres)
        wf.prepare(model if centres == "chosen" else build_model(ModelSpec("tinycnn")))
        wf.on_phase_start(model, 0)
        chosen = torch.unique(wf.value[wf.fixed])
        if expect_chosen:
            assert torch.equal(wf.centres, chosen)
        else:
            assert len(wf.centres) > len(chosen) and set(chosen.tolist()) <= set(wf.centres.tolist())


# --- selection -----------------------------------------------------------------------------------------

def run_rounds(w, delta, max_order, selection="one_at_a_time"):
    """The ten rounds of selection on fixed weights (no retraining), checking every round's invariants."""
    select = wc.SELECTIONS[selection]
    restart = selection == "one_at_a_time"  # the authors' greedy starts every round at order 0
    n = len(w)
    fixed = torch.zeros(n, dtype=torch.bool)
    value = torch.zeros(n)
    order = 0
    for t, share in enumerate(SHARES, start=1):
        d = wc.delta_at(delta, t, len(SHARES))
        free = torch.nonzero(~fixed).squeeze(1)
        need = round(share * n) - int(fixed.sum())
        start = 0 if restart else order
        sel = select(w[free], need, d, start, max_order)
        idx = free[sel.index]
        assert len(idx) == need == len(torch.unique(idx))  # exactly the round's share, each weight once
        fixed[idx] = True
        value[idx] = sel.value
        assert int(fixed.sum()) == round(share * n)
        assert start <= sel.order <= max(start, max_order)
        order = sel.order
        ws, vs = w[idx], sel.value
        allowed = set(wce.centre_values(order, d))
        assert all(v in allowed for v in vs.tolist())
        assert torch.equal(vs == 0, ws.abs() < wce.GAMMA0)  # tiny weights, and only they, go to zero
        assert (vs * ws >= 0).all()
        ok = ~sel.fallback & (vs != 0)
        for c in torch.unique(vs[ok]):  # each centre's group of the round stays within delta_t on average
            g = ws[ok & (vs == c)].double()
            assert float(((g - c.double()).abs() / g.abs()).mean()) <= d + 1e-9
    assert fixed.all()
    return value


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(1, 600), delta=st.sampled_from([0.003, 0.01, 0.03, 0.09]),
       max_order=st.integers(0, 3), scale=st.sampled_from([0.003, 0.03, 0.3]),
       selection=st.sampled_from(sorted(wc.SELECTIONS)))
def test_selection_fixes_exact_shares_within_delta(seed, n, delta, max_order, scale, selection):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g) * scale
    run_rounds(w, delta, max_order, selection)


def test_one_at_a_time_follows_a_hand_trace():
    # order 0 centres near these weights: 0, 0.125, 0.25, 0.5, 1; delta 0.2
    w = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.4, 0.37, 0.13, 0.13, 0.13, 0.005])
    # nearest counts: 0.5 -> 5 (four 0.5 and 0.4), 0.125 -> 3, 0.25 -> 1 (0.37), 0 -> 1 (0.005 < 2^-7).
    # 1. 0.5 has the most; by relative distance to it the weights of its sign run 0, 0, 0, 0, 0.25 (0.4),
    #    0.351 (0.37), 2.85 (0.13): running means 0 … 0.05, 0.100, then 0.49 > 0.2, so it takes six,
    #    0.37 included although 0.25 is nearer to it.
    # 2. recounted: 0.125 -> 3, 0 -> 1, others 0: 0.125 takes the three 0.13 (0.038 each).
    # 3. zero takes 0.005.
    sel = wc.select_one_at_a_time(w, 10, 0.2, order=0, max_order=0)
    assert sorted(sel.index.tolist()) == list(range(10))
    got = dict(zip(sel.index.tolist(), sel.value.tolist()))
    assert [got[i] for i in range(10)] == [0.5] * 6 + [0.125] * 3 + [0.0]
    assert not sel.fallback.any()
    order_of_steps = torch.unique_consecutive(sel.value).tolist()
    assert order_of_steps == [0.5, 0.125, 0.0]
    # the first version gives 0.37 its nearest centre's group, which cannot hold it within 0.2: the fallback
    cap = wc.select_by_capacity(w, 10, 0.2, order=0, max_order=0)
    got = dict(zip(cap.index.tolist(), cap.value.tolist()))
    assert got[5] == 0.25 and int(cap.fallback.sum()) == 1
    # capped at what is needed: the closest of the most popular centre's run
    few = wc.select_one_at_a_time(w, 5, 0.2, order=0, max_order=0)
    assert sorted(few.index.tolist()) == [0, 1, 2, 3, 4] and (few.value == 0.5).all()


def test_one_at_a_time_clusters_a_million_weights_in_few_steps():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1_000_000, generator=g) * 0.02
    sel = wc.select_one_at_a_time(w, 300_000, 0.1, 0, 3)
    assert len(sel.index) == 300_000 == len(torch.unique(sel.index)) and not sel.fallback.any()
    assert torch.unique_consecutive(sel.value).numel() < 100  # one step per centre taken, not per weight


def test_selection_on_many_weights_prefers_populous_power_of_two_centres():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50_000, generator=g) * 0.02
    value = run_rounds(w, 0.01, 3)
    assert torch.unique(value).numel() < 400
    first = wc.select_one_at_a_time(w, 15_000, 0.09, 0, 3)  # round 1 fits in order 0: only 0 and powers of two
    assert first.order == 0 and set(torch.unique(first.value).tolist()) <= set(wce.centre_values(0, 0.09))


def test_order_rises_when_nothing_fits_and_fallback_meets_the_share():
    w = torch.full((100,), 1.25 * 2 ** -4 * 1.001)  # 20 % from 2^-4, 0.1 % from the order-1 1.25 · 2^-4
    for select in wc.SELECTIONS.values():
        sel = select(w, 60, 0.01, order=0, max_order=0)
        assert len(sel.index) == 60 and sel.fallback.all() and sel.order == 0
        assert (sel.value == 2 ** -4).all()  # nearest centre, whatever the distance
        sel = select(w, 60, 0.01, order=0, max_order=2)
        assert len(sel.index) == 60 and not sel.fallback.any() and sel.order == 1
        assert (sel.value == 1.25 * 2 ** -4).all()


# --- regulariser ---------------------------------------------------------------------------------------

def reference_reg(w, c, tau):
    d = (w[:, None] - c[None, :]).abs() / w.abs().clamp(min=wce.GAMMA0)[:, None]
    return (torch.softmax(-d / tau, dim=1) * d).sum(1)


def test_regulariser_value_and_gradient_match_autograd(monkeypatch):
    g = torch.Generator().manual_seed(1)
    w = torch.cat([torch.randn(300, generator=g, dtype=torch.float64) * 0.05,
                   torch.rand(20, generator=g, dtype=torch.float64) * 0.015 - 0.0075])  # some below gamma_0
    c = wce.centres(1, 0.05, dtype=torch.float64)
    wr = w.clone().requires_grad_(True)
    ref = reference_reg(wr, c, 0.05)
    ref.mean().backward()
    monkeypatch.setattr(wce, "REG_CHUNK_ELEMENTS", {"cpu": 7 * len(c)})  # several chunks
    wm = w.clone().requires_grad_(True)
    loss = wce.softmin_distance(wm, c, 0.05)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.mean().detach()), rel=1e-12)
    assert torch.allclose(wm.grad, wr.grad, rtol=1e-9, atol=1e-12)


# --- the method ----------------------------------------------------------------------------------------

def test_registered_config_and_phases():
    cls = get_method("weight_fixing")
    assert cls.needs_float_model and len(cls.default_grid["cpu"]["delta"]) >= 3
    ph = cls().phases(8)  # the paper's three epochs a round, whatever the preset's method epochs
    assert len(ph) == 10 and {(p.epochs, p.optimizer, p.lr, p.schedule, p.weight_decay, p.grad_clip) for p in ph} == \
        {(3, "adam", 2e-5, "constant", 0.0, 1.0)}
    shared = cls.from_params(epochs_per_round=0)  # the first version: the preset's epochs over the rounds
    assert [p.epochs for p in shared.phases(8)] == [1] * 10 and [p.epochs for p in shared.phases(30)] == [3] * 10
    for bad in ({"delta": 0.2}, {"delta": 0.0}, {"max_order": 7}, {"tau": 0.0}, {"lam": -1.0},
                {"selection": "all"}, {"epochs_per_round": -1}):
        with pytest.raises(ValueError):
            cls.from_params(**bad)


def flat_params(wf, model):
    return torch.cat([p.detach().reshape(-1) for p in wf._params(model)])


@pytest.mark.parametrize("fix_bn", [False, True])
def test_fixed_weights_do_not_move_during_retraining(tiny, fix_bn):
    spec, model = tiny
    randomize_bn(model)
    wf = get_method("weight_fixing").from_params(fix_batchnorm=fix_bn)
    model = wf.prepare(model).train()
    n_bn = 2 * (8 + 16) if fix_bn else 0
    assert wf.n == 216 + 1152 + 2560 + 10 + n_bn  # conv weights, fc weight and bias, BatchNorm affine
    wf.on_phase_start(model, 0)
    assert int(wf.fixed.sum()) == round(0.3 * wf.n)
    before = flat_params(wf, model)
    assert torch.equal(before[wf.fixed], wf.value[wf.fixed])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        loss = loss + wf.penalty(model, loss)
        opt.zero_grad()
        loss.backward()
        wf.after_backward(model)
        params = wf._params(model)
        assert all(float(p.grad[m].abs().sum()) == 0 for p, m in zip(params, wf._views(wf.fixed, params)))
        opt.step()
        wf.after_step(model, [opt])
    after = flat_params(wf, model)
    assert torch.equal(after[wf.fixed], before[wf.fixed])
    assert (after[~wf.fixed] != before[~wf.fixed]).float().mean() > 0.9


@pytest.fixture(scope="module")
def fixed_run():
    """A tinycnn trained briefly as float, then through all ten rounds of weight fixing on synthetic data."""
    torch.manual_seed(0)
    data = make_synthetic(n_train=512, n_test=256)
    spec = ModelSpec("tinycnn")
    model = build_model(spec)
    train(Method(), model, data, TrainConfig(epochs=3, batch_size=128, lr=0.1), progress=False)
    float_acc = evaluate(model, data.test)
    wf = get_method("weight_fixing").from_params(delta=0.01, epochs_per_round=1)
    model = wf.prepare(model)
    hist, snaps = [], []

    def on_epoch(rec):
        hist.append(rec)
        snaps.append((wf.fixed.clone(), flat_params(wf, model)))

    train(wf, model, data, TrainConfig(epochs=10, batch_size=128), on_epoch=on_epoch, progress=False)
    return spec, data, model, wf, hist, snaps, float_acc


def test_rounds_fix_the_schedule_and_fixed_weights_never_move(fixed_run):
    _, _, _, wf, hist, snaps, _ = fixed_run
    assert [h["round"] for h in hist] == list(range(1, 11))
    assert [h["share_fixed"] for h in hist] == [round(s * wf.n) / wf.n for s in SHARES]
    assert all(h["unique_fixed"] >= 1 and h["entropy_fixed"] >= 0 and "test_acc" in h for h in hist)
    for i, (mask_i, vals_i) in enumerate(snaps):
        for _, vals_k in snaps[i:]:
            assert torch.equal(vals_k[mask_i], vals_i[mask_i])
    # mean |Δw| of a round's unfixed weights, by hand: fixing leaves the unfixed weights as the previous
    # round ended them, so the round's movement is end-of-round values against the previous round's
    for r in range(1, len(hist) - 1):
        unfixed = ~snaps[r][0]
        moved = (snaps[r][1][unfixed] - snaps[r - 1][1][unfixed]).abs().mean()
        assert hist[r]["mean_abs_dw"] == pytest.approx(float(moved), rel=1e-4) and hist[r]["mean_abs_dw"] > 0
    assert hist[-1]["mean_abs_dw"] == 0.0  # nothing left unfixed


def counted_entropy(values: list[float]) -> float:
    counts = Counter(values)
    return -sum(c / len(values) * math.log2(c / len(values)) for c in counts.values())


def test_after_last_round_every_weight_is_a_codebook_value(fixed_run):
    spec, data, model, wf, hist, _, float_acc = fixed_run
    assert wf.fixed.all() and torch.equal(flat_params(wf, model), wf.value)
    allowed = set().union(*(wce.centre_values(wf.config.max_order, h["delta_t"], wce.K_MIN, wf.k_max) for h in hist))
    assert set(wf.value.tolist()) <= allowed
    cm = packing.from_bytes(packing.to_bytes(wf.export(model, spec)))
    rep = size_report(cm)
    weights = torch.cat([model.conv1[0].weight.detach().reshape(-1), model.conv2[0].weight.detach().reshape(-1),
                         model.fc.weight.detach().reshape(-1)])
    direct = torch.unique(weights)
    assert rep.unique_values == direct.numel() == len(cm.codebook)
    assert rep.value_entropy_per_weight == pytest.approx(counted_entropy(weights.tolist()))
    assert rep.value_entropy_per_weight_nonzero == pytest.approx(counted_entropy([w for w in weights.tolist() if w != 0]))
    assert rep.code_bits == weights.numel() * math.ceil(math.log2(direct.numel()))
    assert rep.side_bits == 32 * direct.numel()
    decoded = to_module(cm)
    model.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(decoded(x), model(x), atol=1e-5)
    acc = evaluate(decoded, data.test)
    assert acc == pytest.approx(hist[-1]["test_acc"]) and acc > 30.0 and acc > float_acc - 15.0  # chance: 10%


def test_selection_study_compares_the_selections(tmp_path, capsys):
    main = load_experiment("wf_selection").main
    assert main(["--n", "3000", "--delta", "0.02", "--schedule", "paper", "9to1"]) == 0
    table = capsys.readouterr().out
    assert "one_at_a_time" in table and "by_capacity" in table and "9to1" in table
    bad = tmp_path / "model.packed"
    bad.write_bytes(b"not a packed file")
    assert main(["--packed", str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_authors_candidate_construction_hand_traced():
    """The authors' grid at delta = 0.3 from 2^-2: 0.25, 0.357, 0.510, 0.729 (next 1.04 is past 2^0). Order 0
    rounds each to its power of two nearest in log2 (0.25, 0.5, 0.5, 1); order 1 then adds the power of two
    nearest to what is left where that is >= 0.3 of the point: 0.357 → 0.5 − 0.125, 0.729 → 1 − 0.25."""
    assert list(wce.authors_centre_values(0, 0.3, k_min=-2)) == signed([0.25, 0.5, 1.0])
    assert list(wce.authors_centre_values(1, 0.3, k_min=-2)) == signed([0.25, 0.375, 0.5, 0.75])
    grid = wce.CentreGrid(k_min=-2, construction="authors")
    assert wce.centres(1, 0.3, grid=grid).tolist() == signed([0.25, 0.375, 0.5, 0.75])


def test_the_zero_threshold_follows_k_min():
    """0.005 lies below 2^-7, so this suite's grid sends it to zero; with the authors' 2^-12 it is fixed to
    the power of two nearest to it, 2^-8 (0.0039), as the most popular centre among the weights."""
    w = torch.tensor([0.005, 0.0051, 0.0049, 0.3])
    default = wc.select_one_at_a_time(w, 3, 0.5, 0, 3)
    assert sorted(default.value.tolist()) == [0.0, 0.0, 0.0]
    fine = wc.select_one_at_a_time(w, 3, 0.5, 0, 3, grid=wce.CentreGrid(k_min=-12))
    assert sorted(fine.value.tolist()) == [2.0 ** -8] * 3
