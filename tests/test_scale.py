"""The scale study's report (``benchmarks.report.scale``) from a small hand-made results folder with known
answers: readings on each seed's curve, bounds where the grid does not reach the limit, networks apart."""
import json
import shutil
import math

import numpy as np
import pytest

from benchmarks.harness.rundir import RESULT_SCHEMA
from benchmarks.report import scale
from conftest import stored_run_files

SC = {"bits_init": 8.0, "bits_schedule": "scheduled", "cost": "bits", "eps_bits": 1e-08, "from_float": True,
      "gamma_warmup": 0.0, "grace": 0.0, "lr_bits": 0.5}


def _write(out, i, method, params, seed, width, acc, bits, weights, schedule="s8", knob=None):
    run_id = f"r{i:04d}"
    folder = out / "runs" / run_id
    folder.mkdir(parents=True)
    n = int(411_824 * (width / 0.25) ** 2)
    result = {"schema": RESULT_SCHEMA, "status": "ok", "run_id": run_id, "accuracy": acc, "knob": knob,
              "packed_sha256": stored_run_files(folder),
              "spec": {"method": method, "params": params, "seed": seed, "dataset": "cifar10",
                       "data_fingerprint": "f", "model": {"name": "resnet9", "width": width, "num_classes": 10},
                       "train": {"precision": "bf16" if width > 0.25 else "fp32", "epochs": 8}, "bn_batches": 20},
              "size": {"bits": bits * 32 * n / 100, "bits_remaining_pct": bits, "weights_remaining_pct": weights,
                       "weights_total": n, "weights_remaining": int(n * weights / 100)},
              "budget": {"schedule": None if method == "float" else schedule, "method_epochs": 8}}
    (folder / "result.json").write_text(json.dumps(result))


def _folder(tmp_path):
    """Width 0.25: self-compression 1.5 points under at 6% and 0.5 under at 10% in every seed (the 1-point
    limit at sqrt(60) = 7.746%); width 0.5: already within 1 point at its smallest grid point (3%)."""
    i = 0
    for width, curve in ((0.25, [(0.1, 3.0, 30, -3.0), (0.03, 6.0, 55, -1.5), (0.01, 10.0, 80, -0.5)]),
                         (0.5, [(0.1, 3.0, 25, -0.8), (0.03, 6.0, 50, -0.4), (0.01, 10.0, 80, -0.1)])):
        for seed, control in enumerate((87.0, 87.4, 87.2)):
            for method, params, acc in (("float", {}, control - 0.4),
                                        ("float_control", {"like": "self_compression", "from_float": True}, control)):
                _write(tmp_path, i, method, params, seed, width, acc, 100.0, 100.0)
                i += 1
            for gamma, bits, weights, vs in curve:
                _write(tmp_path, i, "self_compression", {**SC, "gamma": gamma}, seed, width, control + vs, bits,
                       weights, knob="gamma")
                i += 1
            # a variant off the default curve: never read
            _write(tmp_path, i, "self_compression", {**SC, "gamma": 0.1, "cost": "bitops"}, seed, width,
                   control, 1.0, 5.0, knob="gamma")
            i += 1
    return tmp_path


def test_crossing_is_read_linear_in_log_size_with_bounds():
    assert scale.crossing(np.array([10.0, 3.0, 6.0]), np.array([-0.5, -3.0, -1.5]), 1.0) == (pytest.approx(60 ** 0.5), "")
    assert scale.crossing(np.array([3.0, 6.0]), np.array([-0.2, -0.1]), 1.0) == (3.0, "≤")
    assert scale.crossing(np.array([3.0, 6.0]), np.array([-2.0, -1.5]), 1.0) == (6.0, ">")
    # a dip below the limit above a point within: the reading is where it stays within for good
    value, bound = scale.crossing(np.array([3.0, 6.0, 10.0]), np.array([-0.5, -1.5, -0.5]), 1.0)
    assert bound == "" and value == pytest.approx(60 ** 0.5)


def test_scale_report_reads_each_network_against_its_own_control(tmp_path):
    out = _folder(tmp_path / "res")
    table = scale.write_scale([out], out).set_index("model")
    assert list(table.index) == ["resnet9x0.25", "resnet9x0.5"]
    quarter, half = table.loc["resnet9x0.25"], table.loc["resnet9x0.5"]
    assert quarter["bits % within 1"] == "7.75 ± 0.00 (3)"
    assert quarter["weights % within 1"].startswith(f"{math.exp((math.log(55) + math.log(80)) / 2):.2f}")
    assert half["bits % within 1"] == "≤3.00 ± 0.00 (3)"  # the grid's smallest point is within already
    assert quarter["curve points"] == 3 and quarter["seeds"] == 3  # the bitops variant is not on the curve
    assert quarter["control accuracy %"] == "87.20 ± 0.20 (3)"
    assert (out / "scale.md").is_file() and (out / "figures" / "scale.png").stat().st_size > 0
    md = (out / "scale.md").read_text()
    assert "7.75 ± 0.00 (3)" in md and "python -m benchmarks.report.scale" in md


def test_a_network_whose_control_has_not_landed_is_listed_without_a_reading(tmp_path):
    """The state a long study passes through (width 1.0: its float model and a compression point, the control
    still to train): the network is listed, with no reading and no crash, and the others are unchanged."""
    out = _folder(tmp_path / "res")
    _write(out, 900, "float", {}, 0, 1.0, 91.0, 100.0, 100.0)
    _write(out, 901, "self_compression", {**SC, "gamma": 0.1}, 0, 1.0, 88.0, 2.0, 20.0, knob="gamma")
    table = scale.write_scale([out], out).set_index("model")
    full = table.loc["resnet9x1.0"]
    assert full["control accuracy %"] == "—" and full["bits % within 1"] == "—" and full["float accuracy %"] == "91.00 (1)"
    assert table.loc["resnet9x0.25", "bits % within 1"] == "7.75 ± 0.00 (3)"
    assert (out / "figures" / "scale.png").stat().st_size > 0


def test_scale_cli_refuses_a_folder_without_runs(tmp_path, capsys):
    assert scale.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs in" in err[0]


def test_synthetic_runs_never_enter_the_scale_table(tmp_path):
    out = _folder(tmp_path / "res")
    for f in (out / "runs").glob("*/result.json"):
        r = json.loads(f.read_text())
        r["spec"]["dataset"] = "synthetic"
        f.write_text(json.dumps(r))
    assert scale.write_scale([out], out).empty
    assert "No self-compression curve" in (out / "scale.md").read_text()


def test_headline_reads_the_largest_network_and_every_methods_operating_points(tmp_path):
    from benchmarks.report import headline
    out = _folder(tmp_path / "res")
    table = headline.write_headline([out], out).set_index("method")
    assert list(table.index) == ["self_compression"]  # the only method with a curve here
    row = table.loc["self_compression"]
    assert row["within 1 point: bits %"] == "≤3.00 ± 0.00 (3)"  # width 0.5, the largest: within at 3%
    assert row["seeds"] == 3 and row["grid points"] == 3
    md = (out / "headline.md").read_text()
    assert "resnet9x0.5" in md and (out / "figures" / "headline.png").stat().st_size > 0


def test_a_one_seed_screen_of_a_larger_network_does_not_replace_a_measured_curve(tmp_path):
    from benchmarks.report import headline
    out = _folder(tmp_path / "res")
    for f in (out / "runs").glob("*/result.json"):  # width 0.5 keeps seed 0 only
        r = json.loads(f.read_text())
        if r["spec"]["model"]["width"] == 0.5 and r["spec"]["seed"] > 0:
            shutil.rmtree(f.parent)
    headline.write_headline([out], out)
    assert "Network: resnet9x0.25" in (out / "headline.md").read_text()


@pytest.mark.parametrize("lo, hi, labels", [(5.8, 9.6, {"6", "7", "8", "9"}), (1.0, 60.0, {"1", "10", "2", "5", "20", "50"})])
def test_a_log_axis_always_shows_numbers(lo, hi, labels):
    """Points all between two labelled ticks (5 and 10%) still get numbers on the axis; a wide axis keeps
    only 1, 2, 5 per decade."""
    import matplotlib.pyplot as plt
    from benchmarks.report.figures import _log_axis

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [0, 1])
    _log_axis(ax.xaxis)
    fig.canvas.draw()
    shown = {t.get_text() for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels() if t.get_text()}
    plt.close(fig)
    assert labels <= shown and not {"3", "4", "30", "40"} & (shown if hi > 4 * lo else set())
