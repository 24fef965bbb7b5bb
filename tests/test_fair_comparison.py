"""Equal-budget controls, budgets in results.csv, and several seeds per point."""
import math
from dataclasses import replace

import pandas as pd
import pytest

import run_all
from benchmarks.data import make_synthetic
from benchmarks.harness.grid import bind_data, expand, parse_grid_overrides
from benchmarks.harness.presets import PRESETS, get_preset
from benchmarks.harness.runner import budget
from methods import ConfigError, get_method


def _schedule(preset, method, grid):
    data = make_synthetic(n_train=256, n_test=64)
    spec = bind_data(expand(get_preset(preset), [method], [3], parse_grid_overrides(grid)), data)[0]
    m = get_method(method).from_params(**dict(spec.params))
    return spec, budget(spec, m, len(data.train), 0.0, 0.0)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_the_control_trains_with_exactly_the_schedule_of_the_method_it_controls(preset):
    ff = "true" if preset == "cpu" else "false"
    sc_spec, sc = _schedule(preset, "self_compression", ["self_compression.gamma=0.1"])
    dq_spec, dq = _schedule(preset, "diffq", ["diffq.lam=0.1"])
    wf_spec, wf = _schedule(preset, "weight_fixing", ["weight_fixing.delta=0.01"])
    c_sc_spec, c_sc = _schedule(preset, "float_control", ["float_control.like=self_compression",
                                                          f"float_control.from_float={ff}"])
    _, c_wf = _schedule(preset, "float_control", ["float_control.like=weight_fixing"])
    assert sc["schedule"] == dq["schedule"] == c_sc["schedule"] != wf["schedule"] == c_wf["schedule"]
    assert c_sc_spec.train == sc_spec.train and c_sc_spec.float_train == sc_spec.float_train
    assert {k: v for k, v in c_sc.items() if k != "schedule"} == {k: v for k, v in sc.items() if k != "schedule"}
    if preset == "cpu":  # fine-tuned: 14 float epochs, then the method's 8
        assert (sc["float_epochs"], sc["method_epochs"]) == (14, 8)
    else:  # from scratch: the methods' 30 epochs, no float pre-training
        assert (sc["float_epochs"], sc["method_epochs"]) == (0, 30)
    assert sc["method_steps"] == sc["method_epochs"]  # 256 images, batch 512: one step an epoch


def test_float_control_refuses_a_non_method():
    with pytest.raises(ConfigError, match="like"):
        get_method("float_control").from_params(like="float")
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("float_control").from_params(like="nope")


@pytest.mark.slow
def test_three_seed_smoke_grid_gives_mean_std_rows_against_the_control(tmp_path, monkeypatch):
    # no --seeds: the preset's own seeds apply (cpu and paper run three; smoke one, patched to three here)
    assert get_preset("cpu").seeds == get_preset("paper").seeds == (0, 1, 2)
    monkeypatch.setitem(PRESETS, "smoke", replace(get_preset("smoke"), seeds=(0, 1, 2)))
    code = run_all.main(["--preset", "smoke", "--out", str(tmp_path), "-q",
                         "--methods", "float,self_compression,float_control", "--grid", "self_compression.gamma=0.3",
                         "--grid", "float_control.like=self_compression"])
    assert code == 0
    df = pd.read_csv(tmp_path / "results.csv")
    sc = df[df.method == "self_compression"]
    control = df[df.method == "float_control"]
    assert len(sc) == len(control) == 3 and (sc.float_epochs == 0).all() and (sc.method_epochs == 3).all()
    assert (sc.schedule.values == control.schedule.values).all()
    merged = sc.merge(control[["seed", "accuracy"]], on="seed", suffixes=("", "_c"))
    assert list(merged.control_accuracy) == pytest.approx(list(merged.accuracy_c))
    assert list(merged.vs_control) == pytest.approx(list(merged.accuracy - merged.accuracy_c))
    assert (df.method_seconds > 0).all() and (df.float_steps + df.method_steps > 0).all()
    tables = (tmp_path / "tables.md").read_text()
    section = tables.split("## self_compression")[1].split("##")[0]
    row = [line for line in section.splitlines() if "gamma=0.3" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "3" in cells and sum("±" in c for c in cells) >= 4  # n, and mean ± std of accuracy, control, sizes
    assert "equal-budget control" in tables


def test_a_control_pairs_with_a_run_only_if_it_started_from_the_same_float_model():
    """Runs record the float model they fine-tuned (``float_digest``): a control trained from another float
    model under the same seed (a lost cache trained again elsewhere) is no control; one that predates the
    record still pairs, as before."""
    from benchmarks.report.runs import control_accuracy

    df = pd.DataFrame({
        "method": ["self_compression", "float_control", "diffq", "float_control", "diffq", "float_control"],
        "schedule": "s", "data_fingerprint": "d", "status": "ok", "model": "resnet9x0.25", "precision": "fp32",
        "seed": [0, 0, 1, 1, 2, 2], "accuracy": [80.0, 88.0, 81.0, 87.0, 82.0, 86.0],
        "float_digest": ["a", "a", "b", "c", "e", None]})
    assert control_accuracy(df).tolist()[::2] == [88.0, pytest.approx(float("nan"), nan_ok=True), 86.0]
    assert control_accuracy(df)[1::2].isna().all()  # a control has no control
    # another network (or arithmetic) with the same schedule and seed is not the run's control either
    for column, other in (("model", "resnet9x0.5"), ("precision", "bf16")):
        moved = df.assign(**{column: [other] + [df[column][0]] * 5})
        assert math.isnan(control_accuracy(moved)[0])
