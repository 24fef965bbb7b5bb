import json
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_all
from benchmarks.accounting import inspect
from benchmarks.compressed import export_float
from benchmarks.harness.grid import bind_data, expand, parse_grid_overrides
from benchmarks.harness.presets import get_preset
from benchmarks.report import figures
from benchmarks.report.runs import COLUMNS

from methods import ConfigError, Method, register
from tests.conftest import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def smoke(out, *extra):
    return run_all.main(["--preset", "smoke", "--out", str(out), "-q", *extra])


@pytest.mark.slow
def test_smoke_preset_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    assert smoke(tmp_path, "--grid", "self_compression.gamma=0.003,0.3") == 0
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df.method) >= {"float", "self_compression"} and (df.status == "ok").all()
    assert df.loc[df.method == "float", "bits_remaining_pct"].iloc[0] == 100.0
    assert df.coded_bits_pct.notna().all() and (df.coded_bits_pct <= df.bits_remaining_pct + 1).all()
    for name in ("accuracy_vs_bits", "accuracy_vs_coded_bits", "accuracy_vs_weights", "self_compression_training",
                 "self_compression_layers", "weight_fixing_rounds"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 0
    run = next(p for p in (tmp_path / "runs").iterdir() if json.loads((p / "config.json").read_text())["method"] != "float")
    assert {f.name for f in run.iterdir()} >= {"config.json", "history.jsonl", "model.packed", "result.json"}
    # the size report read back from the packed file alone is the one the run recorded
    capsys.readouterr()
    assert inspect.main([str(run / "model.packed"), "--json"]) == 0
    shown, recorded = json.loads(capsys.readouterr().out), json.loads((run / "result.json").read_text())["size"]
    assert (shown["bits"], shown["coded_bits"]) == (recorded["bits"], recorded["coded_bits"])
    assert inspect.main([str(run / "config.json")]) == 2 and "not a scnn-bench packed model" in capsys.readouterr().err
    # a second invocation retrains nothing
    monkeypatch.setattr("benchmarks.harness.runner._train_and_measure", lambda *a: pytest.fail("retrained a finished run"))
    assert smoke(tmp_path, "--grid", "self_compression.gamma=0.003,0.3") == 0
    # figures rebuild from stored results alone
    (tmp_path / "tables.md").unlink()
    assert figures.main([str(tmp_path)]) == 0 and (tmp_path / "tables.md").is_file()


class NanMethod(Method):
    """A method whose penalty is NaN: its run must fail, be recorded, and not stop the grid."""

    default_grid = {"smoke": {}}
    exports_float = True

    def penalty(self, model, task_loss):
        return torch.tensor(float("nan"))


@pytest.mark.slow
def test_failed_run_is_recorded_and_grid_goes_on(tmp_path):
    register("_nan_method")(NanMethod)
    code = smoke(tmp_path, "--methods", "_nan_method,float")
    df = pd.read_csv(tmp_path / "results.csv")
    failed = df[df.status == "failed"]
    assert code == 1 and list(failed.method) == ["_nan_method"] and "loss became nan" in failed.error.iloc[0]
    assert list(df[df.status == "ok"].method) == ["float"]


class NoExportValue(Method):
    """A plugin whose export forgets to return its CompressedModel."""

    exports_float = True

    def export(self, model, spec):
        export_float(model, spec)


def test_a_plugins_malformed_export_is_named_where_it_is_made(tiny):
    """Export mistakes fail the run with a line naming the method or the layer, not deep in the accounting."""
    from benchmarks.harness.runner import _export

    spec, model = tiny
    register("_no_export_value")(NoExportValue)
    with pytest.raises(TypeError, match="_no_export_value.export\\(\\) returned NoneType, not a CompressedModel"):
        _export(NoExportValue(), model, spec)
    layer = export_float(model, spec).layers[1]
    with pytest.raises(ValueError, match=f"layer {layer.name}: codes of shape \\({layer.shape[0]}, 3\\) for a layer of shape"):
        replace(layer, codes=layer.codes.reshape(layer.shape[0], -1)[:, :3])
    wider = (layer.shape[0], layer.shape[1] + 1, *layer.shape[2:])
    with pytest.raises(ValueError, match="does not fit its full shape"):
        replace(layer, shape=wider, codes=torch.zeros(wider))


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--grid", "self_compression.gama=1"], "no parameter 'gama'"),
    (["--grid", "self_compression.gamma=big"], "must be a finite number"),
    (["--grid", "gamma=1"], "bad --grid"),
    (["--preset", "cpu", "--data-dir", "/nonexistent/folder"], "CIFAR-10 not found"),
    (["--preset", "smoke", "--device", "gpu"], "unknown device 'gpu'"),
    (["--preset", "smoke", "--device", "cuda:7"], "device 'cuda:7' is not available here"),
    (["--preset", "smoke", "--jobs", "0"], "--jobs must be at least 1"),
    (["--preset", "smoke", "--bn-batches", "-1"], "--bn-batches must be 0 (off) or more"),
])
@pytest.mark.slow
def test_bad_input_one_line_exit_2(args, message, tmp_path):
    p = subprocess.run([sys.executable, "run_all.py", "--out", str(tmp_path), *args], cwd=ROOT,
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "SCNN_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert smoke(blocker / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0] and "pass --out" in err[0]


class BrokenConfigMethod(Method):
    """Imports fine, breaks when its grid is built (its Config is not a dataclass)."""

    exports_float = True

    class Config:
        def __init__(self, **kw):
            raise TypeError("Config() is broken")


def test_plugin_broken_beyond_import_is_skipped_unless_named():
    register("_broken_cfg")(BrokenConfigMethod)
    specs = expand(get_preset("smoke"), ["_broken_cfg", "float"], [0], {}, strict=False)
    assert [s.method for s in specs] == ["float"]
    with pytest.raises(ConfigError, match="method .{1}_broken_cfg.{1} .* is broken: TypeError"):
        expand(get_preset("smoke"), ["_broken_cfg", "float"], [0], {})
    assert len(expand(get_preset("smoke"), ["float"], [0, 0], {})) == 1  # a run is never queued twice


def test_list_methods(capsys):
    assert run_all.main(["--list-methods"]) == 0
    assert {"float", "self_compression"} <= set(capsys.readouterr().out.split())


def test_grid_expansion_and_run_ids_ignore_device_and_paths():
    specs = expand(get_preset("smoke"), ["float", "self_compression"], [0, 1],
                   parse_grid_overrides(["self_compression.gamma=0.1,1"]))
    assert len(specs) == 2 + 4 and len({s.run_id for s in specs}) == 6
    assert specs == expand(get_preset("smoke"), ["float", "self_compression"], [0, 1],
                           parse_grid_overrides(["self_compression.gamma=0.1,1"]))
    with pytest.raises(ConfigError):
        expand(get_preset("smoke"), ["float"], [0], parse_grid_overrides(["self_compression.gamma=1"]))


# die_at counts evaluations, the float model's 3 epochs included for weight fixing; done: epochs checkpointed
@pytest.mark.parametrize("grid, die_at, done", [("self_compression.gamma=0.3", 3, 2),  # after channel removal
                                                ("diffq.lam=1.0", 2, 1),  # noise drawn from the global RNG
                                                ("weight_fixing.delta=0.05", 7, 3)])  # mid-way through the rounds
@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, grid, die_at, done):
    """A run killed during an epoch resumes from the last epoch checkpoint and ends where an uninterrupted
    run ends: the same history and the same compressed model."""
    from benchmarks import train as train_mod
    from benchmarks.data import make_synthetic
    from benchmarks.harness.runner import execute

    data = make_synthetic()
    spec = bind_data(expand(get_preset("smoke"), [grid.split(".")[0]], [0], parse_grid_overrides([grid])), data)[0]
    whole = execute(spec, tmp_path / "a", data=data, progress=False)
    real_evaluate, calls = train_mod.evaluate, []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt  # the machine goes away at the end of an epoch, before its checkpoint
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, tmp_path / "b", data=data, progress=False)
    folder = tmp_path / "b" / "runs" / spec.run_id
    assert (folder / "checkpoint.pt").is_file() and not (folder / "result.json").exists()
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    resumed = execute(spec, tmp_path / "b", data=data, progress=False)

    def history(out):
        rows = [json.loads(line) for line in (out / "runs" / spec.run_id / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "epoch_time_vs_float")} for r in rows]

    assert resumed["status"] == whole["status"] == "ok"
    a, b = history(tmp_path / "a"), history(tmp_path / "b")
    assert len(a) == len(b) > done
    saved = a[done - 1]  # the epoch the checkpoint holds: already compressed / weights already fixed
    assert saved["bits_remaining_pct"] < 100 or saved.get("share_fixed", 0) > 0
    for ra, rb in zip(a, b):  # same batches, same noise: equal up to float summation order
        assert rb == {k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in ra.items()}
    assert resumed["size"]["bits"] == whole["size"]["bits"]
    assert resumed["accuracy"] == pytest.approx(whole["accuracy"], abs=0.5)
    assert not (folder / "checkpoint.pt").exists()


@pytest.mark.slow
def test_installed_plugin_package_runs_through_the_grid(tmp_path):
    """The README's example plugin, pip-installed, is found through the ``scnn_bench.methods`` entry points
    and runs like a built-in; a second, broken plugin is reported by name and the others still run."""
    site, source = tmp_path / "site", tmp_path / "plugin_example"
    shutil.copytree(ROOT / "examples" / "plugin", source)  # pip builds in the source folder: not ours
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True)
    broken = site / "broken_plugin-0.1.dist-info"  # what pip writes for a package whose import fails
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[scnn_bench.methods]\nbroken = no_such_module:Method\n")
    clash = site / "clash_plugin-0.1.dist-info"  # a plugin that takes a built-in's name
    clash.mkdir()
    (clash / "METADATA").write_text("Metadata-Version: 2.1\nName: clash-plugin\nVersion: 0.1\n")
    (clash / "entry_points.txt").write_text("[scnn_bench.methods]\ndiffq = my_method:MyMethod\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "SCNN_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "run_all.py", "--preset", "smoke", "--methods", "my_method,float",
                        "--out", str(tmp_path / "out"), "-q"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "plugin 'broken' (package broken-plugin, no_such_module:Method) failed to load: ModuleNotFoundError" in p.stderr
    assert p.stderr.count("plugin 'broken'") == 1 and p.stderr.count("two methods are named 'diffq'") == 1
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(df.method) == {"my_method", "float"} and (df.status == "ok").all()
    mine = df[df.method == "my_method"].iloc[0]  # exported as real 6-bit codes, measured from its file
    assert 6 / 32 * 100 < mine.bits_remaining_pct < 7 / 32 * 100 and mine.accuracy > 20
    assert "my_method" in (tmp_path / "out" / "tables.md").read_text()
    p = subprocess.run([sys.executable, "run_all.py", "--methods", "broken", "--preset", "smoke"], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "unknown method 'broken' (plugin 'broken'" in p.stderr.splitlines()[-1]
    p = subprocess.run([sys.executable, "run_all.py", "--methods", "diffq", "--preset", "smoke"], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    last = p.stderr.splitlines()[-1]
    assert p.returncode == 2 and "two methods are named 'diffq'" in last
    assert p.stderr.count("two methods are named") == 1  # said once, by the error line
    assert "scnn-bench (methods.diffq)" in last and "package clash-plugin" in last


@pytest.mark.slow
def test_parallel_jobs(tmp_path):
    """--jobs 2 runs grid points in spawned worker processes into the same folders and table."""
    assert smoke(tmp_path, "--methods", "float,self_compression", "--grid", "self_compression.gamma=0.003,0.3",
                 "--jobs", "2") == 0
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) == 3 and (df.status == "ok").all()


def test_near_float_picks_the_smallest_sizes_within_one_point_of_the_control():
    from benchmarks.report.tables import near_float

    n = 7
    s = pd.DataFrame({"method": ["float", "m", "m", "m", "c", "c", "float_control"], "model": ["n"] * n,
                      "dataset": ["d"] * n, "data_fingerprint": ["f"] * n, "precision": "fp32", "bn_batches": 0,
                      "accuracy_mean": [90.0, 89.5, 88.9, 89.2, 90.5, 89.4, 91.0],
                      "bits_remaining_pct_mean": [100.0, 10.0, 2.0, 5.0, 10.0, 5.0, 100.0],
                      "weights_remaining_pct_mean": [100.0, 50.0, 20.0, 60.0, 50.0, 40.0, 100.0],
                      "control_accuracy_mean": [None, None, None, None, 91.0, 91.0, None]})
    s["series"] = s.method
    r = near_float(s).set_index("method")
    # m has no control: against float (90), the 88.9% point is more than a point below: excluded
    assert (r.loc["m", "fewest bits %"], r.loc["m", "accuracy there %"], r.loc["m", "fewest weights %"]) == \
        (5.0, 89.2, 50.0) and r.loc["m", "reference"] == "float model"
    # c against its equal-budget control (91): 89.4% is out although within a point of float
    assert (r.loc["c", "fewest bits %"], r.loc["c", "reference"]) == (10.0, "equal-budget control")
    assert "float_control" not in r.index
    # within half a point: m's 89.5% point (10% bits) is the only one left
    half = near_float(s, 0.5).set_index("method")
    assert (half.loc["m", "fewest bits %"], half.loc["m", "within (points)"]) == (10.0, 0.5)


def test_near_float_shows_the_reference_of_the_point_it_picked():
    """Points trained on different seeds have different controls (here 91.2 and 90.9): each point is held to
    its own, and the reference shown is the picked point's, not a mean over points."""
    from benchmarks.report.tables import near_float

    s = pd.DataFrame({"method": ["float", "c", "c"], "model": "n", "dataset": "d", "data_fingerprint": "f",
                      "precision": "fp32", "bn_batches": 0, "accuracy_mean": [90.8, 90.3, 90.6],
                      "bits_remaining_pct_mean": [100.0, 6.0, 10.0], "weights_remaining_pct_mean": [100.0, 45.0, 65.0],
                      "control_accuracy_mean": [None, 91.2, 90.9]})
    s["series"] = s.method
    one, half = (near_float(s, p).set_index("method").loc["c"] for p in (1.0, 0.5))
    assert (one["fewest bits %"], one["reference accuracy %"]) == (6.0, 91.2)
    assert (half["fewest bits %"], half["reference accuracy %"]) == (10.0, 90.9)


def test_matched_bits_interpolation_against_a_hand_example():
    """a at bits 2, 4, 8 (acc 80, 84, 88), b at 4, 16 (82, 90): in the shared range [4, 8], b at 8 bits is
    halfway in log2 between 4 and 16, so 86; a − b = 2 at both matched sizes."""
    from benchmarks.report.paired import paired, verdict

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.5), (2, -0.5)):
        for bits, acc in ((2, 80), (4, 84), (8, 88)):
            rows.append(("a", f"a{bits}", seed, bits, acc + shift))
        for bits, acc in ((4, 82), (16, 90)):
            rows.append(("b", f"b{bits}", seed, bits, acc))
    df = pd.DataFrame(rows, columns=["method", "params", "seed", "bits_remaining_pct", "accuracy"])
    df["status"], df["model"], df["data_fingerprint"] = "ok", "n", "f"
    df["series"] = df.method
    p = paired(df)
    assert list(p["bits remaining %"]) == [4, 8]
    assert list(p["accuracy b %"]) == pytest.approx([82, 86]) and list(p["accuracy a %"]) == pytest.approx([84, 88])
    assert list(p["a − b (points)"]) == pytest.approx([2, 2]) and list(p["std"]) == pytest.approx([0.5, 0.5])
    assert list(p.seeds) == [3, 3] and list(p.verdict) == ["a", "a"]
    assert verdict("a", "b", 0.3, 0.5, 3) == "tie" and verdict("a", "b", -2, 0.5, 3) == "b"
    assert verdict("a", "b", 2, float("nan"), 1) == "no verdict (1 seed)"
    assert verdict("a", "b", -2, 0.1, 2) == "no verdict (2 seeds)"  # a clear gap, but two seeds claim nothing


def test_a_one_seed_matched_point_prints_a_dash_for_its_std():
    from benchmarks.report.paired import markdown, paired

    df = pd.DataFrame([("a", "a2", 0, 2, 80.0), ("a", "a8", 0, 8, 88.0), ("b", "b4", 0, 4, 83.0)],
                      columns=["method", "params", "seed", "bits_remaining_pct", "accuracy"])
    df["status"], df["model"], df["data_fingerprint"] = "ok", "n", "f"
    df["series"] = df.method
    cells = [c.strip() for c in markdown(paired(df)).splitlines()[-1].strip("|").split("|")]
    assert cells[6:9] == ["1.00", "—", "1"]  # a − b (a reads 84 at 4 bits on its curve), no std, one seed


def test_matched_accuracies_are_read_over_the_seeds_compared_so_the_columns_subtract():
    """a has seeds 0 and 1 (seed 1 two points higher); b's grid point at 4 bits has seed 0 only, so that row
    compares seed 0 alone: a reads 84 there (not the two seeds' 85) and the columns subtract to a − b. b's
    seed-0 curve starts at 4 bits and its seed-1 curve ends at 1.5, so at a's 2 bits no seed's two curves
    both reach: that size gets no row."""
    from benchmarks.report.paired import paired

    rows = [("a", f"a{bits}", seed, bits, acc + 2 * seed) for seed in (0, 1) for bits, acc in ((2, 80), (8, 88))]
    rows += [("b", "b4", 0, 4, 83.0), ("b", "b16", 0, 16, 90.0), ("b", "b1", 1, 1, 70.0), ("b", "b1.5", 1, 1.5, 75.0)]
    df = pd.DataFrame(rows, columns=["method", "params", "seed", "bits_remaining_pct", "accuracy"])
    df["status"], df["model"], df["data_fingerprint"] = "ok", "n", "f"
    df["series"] = df.method
    p = paired(df).set_index("bits remaining %")
    assert list(p.index) == [4, 8] and list(p.seeds) == [1, 1]
    assert (p.loc[4, "accuracy a %"], p.loc[4, "accuracy b %"]) == pytest.approx((84, 83))
    assert (p["accuracy a %"] - p["accuracy b %"]).to_numpy() == pytest.approx(p["a − b (points)"].to_numpy())


def test_matched_sizes_are_also_compared_against_each_methods_own_control():
    """The hand example above, with b trained on a larger budget: its control scores 91 where a's scores 88.
    At matched sizes a − b is 2 as before, but against their controls (a − 88) − (b − 91) = 5; the same
    comparison at matched coded bits (half the bits here) is labelled as such."""
    from benchmarks.report.paired import paired

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.5), (2, -0.5)):
        rows += [("a", f"a{bits}", seed, bits, acc + shift, 88.0) for bits, acc in ((2, 80), (4, 84), (8, 88))]
        rows += [("b", f"b{bits}", seed, bits, acc, 91.0) for bits, acc in ((4, 82), (16, 90))]
    df = pd.DataFrame(rows, columns=["method", "params", "seed", "bits_remaining_pct", "accuracy", "control_accuracy"])
    df["status"], df["model"], df["data_fingerprint"] = "ok", "n", "f"
    df["series"], df["vs_control"] = df.method, df.accuracy - df.control_accuracy
    df["coded_bits_pct"] = df.bits_remaining_pct / 2
    p = paired(df)
    assert list(p["a − b (points)"]) == pytest.approx([2, 2])
    assert list(p["a − b against controls"]) == ["5.00 ± 0.50 (3): a"] * 2
    coded = paired(df, "coded_bits_pct")
    assert list(coded["coded bits remaining %"]) == [2, 4] and list(coded["a − b (points)"]) == pytest.approx([2, 2])
    # a run without a control is left out of the controlled comparison, not of the plain one
    df.loc[df.method == "b", ["control_accuracy", "vs_control"]] = float("nan")
    p = paired(df)
    assert list(p["a − b against controls"]) == ["—", "—"] and list(p.seeds) == [3, 3]


def test_a_one_point_variant_is_compared_seed_by_seed_at_its_own_size():
    """A variant with one grid point whose seeds land at 2, 4 and 8 bits (mean 4.67) against a curve through
    (2, 80) and (8, 86) in every seed, linear in log2: 80, 83, 86 there, so the seeds differ by 1, 1, 2."""
    from benchmarks.report.paired import paired

    rows = [("b", f"b{bits}", seed, bits, acc) for seed in (0, 1, 2) for bits, acc in ((2, 80), (8, 86))]
    rows += [("a", "a", 0, 2, 81), ("a", "a", 1, 4, 84), ("a", "a", 2, 8, 88)]
    df = pd.DataFrame(rows, columns=["method", "params", "seed", "bits_remaining_pct", "accuracy"])
    df["status"], df["model"], df["data_fingerprint"] = "ok", "n", "f"
    df["series"] = df.method
    p = paired(df)
    assert list(p["bits remaining %"]) == pytest.approx([14 / 3]) and list(p.seeds) == [3]
    assert p["a − b (points)"].iloc[0] == pytest.approx(4 / 3) and p["std"].iloc[0] == pytest.approx(3 ** -0.5)
    assert p.verdict.iloc[0] == "a"


def test_parameters_that_vary_split_a_method_into_curves():
    from benchmarks.report.runs import series_names

    params = [{"gamma": g, "cost": c, "from_float": True} for c in ("bits", "bitops") for g in (0.01, 0.1)]
    df = pd.DataFrame({"method": ["self_compression"] * 4 + ["diffq"] * 2 + ["float"],
                       "knob": ["gamma"] * 4 + ["lam"] * 2 + [None], "epochs": 8, "bn_batches": 0, "precision": "fp32",
                       "params": [json.dumps(p) for p in params] + [json.dumps({"lam": v}) for v in (0.1, 1)] + ["{}"]})
    assert list(series_names(df)) == ["self_compression cost=bits"] * 2 + ["self_compression cost=bitops"] * 2 + \
        ["diffq", "diffq", "float"]
    # every other parameter that varies splits, numbers included, and so do epochs
    params = [{"gamma": 0.1, "eps_bits": 1e-8}, {"gamma": 0.03, "eps_bits": 1e-8}, {"gamma": 0.1, "eps_bits": 1e-3},
              {"gamma": 0.1, "eps_bits": 1e-8}]
    df = pd.DataFrame({"method": "self_compression", "knob": "gamma", "epochs": [8, 8, 8, 16], "bn_batches": 0,
                       "precision": "fp32", "params": [json.dumps(p) for p in params]})
    assert list(series_names(df)) == ["self_compression eps_bits=1e-08 epochs=8"] * 2 + \
        ["self_compression eps_bits=0.001 epochs=8", "self_compression eps_bits=1e-08 epochs=16"]


def test_recipe_script_names_an_unknown_experiment_and_exits_2():
    script = Path(__file__).resolve().parents[1] / "experiments" / "sc_recipe.sh"
    done = subprocess.run(["bash", str(script), "no-such-experiment"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown experiment no-such-experiment" in done.stderr
    assert "baseline" in done.stderr and "scratch" in done.stderr  # the known ones are listed


def test_figure_styles_give_a_grid_points_seeds_one_colour_and_each_seed_a_line_style():
    labels = ["γ=0.01 s1", "γ=0.1 s0", "γ=0.1 s1", "γ=0.1 s10", "γ=0.1 s2", "γ=0.1 selection=x s0"]
    styles = figures._styles(labels)
    colours, lines = [s["color"] for s in styles], [s["ls"] for s in styles]
    assert colours[1] == colours[2] == colours[3] == colours[4] and len({colours[0], colours[1], colours[5]}) == 3
    # by seed value, not by position: seed 1 is dashed also where a point has no seed 0; s10 sorts after s2
    assert lines == ["--", "-", "--", "-.", ":", "-"]
    many = figures._styles([f"γ={i} s0" for i in range(12)])  # past ten points the marker tells them apart
    assert (many[0]["color"], many[0]["marker"]) != (many[10]["color"], many[10]["marker"])


def test_recipe_table_reads_each_variant_against_the_same_seeds_baseline_curve_at_its_bits():
    """Hand example: each seed's baseline curve runs from (3 % bits, a) to (12 %, a + 5), linear in log bits,
    so at 6 % it reads a + 2.5; the variant scores 85 at 6 % in both seeds: +0.5 against seed 0's curve
    (a = 82) and −0.5 against seed 1's (a = 83)."""
    recipe = load_experiment("recipe_table")
    paper = {"gamma": 0.1, "bits_init": 8.0, "lr_bits": 0.5, "from_float": True, "eps_bits": 1e-8,
             "bits_schedule": "scheduled", "gamma_warmup": 0.0, "grace": 0.0, "cost": "bits"}
    runs = []
    for seed, a in ((0, 82.0), (1, 83.0)):
        runs += [(f"b{seed}", "self_compression", paper, seed, a, 3.0, 0),
                 (f"c{seed}", "self_compression", {**paper, "gamma": 0.01}, seed, a + 5, 12.0, 0),
                 (f"v{seed}", "self_compression", {**paper, "eps_bits": 1e-3}, seed, 85.0, 6.0, 20 * seed),
                 (f"f{seed}", "float_control", {"like": "self_compression"}, seed, 87.5 + 0.2 * seed, 100.0, 0)]
    df = pd.DataFrame([{"run_id": r, "method": m, "params": json.dumps(p, sort_keys=True), "seed": s,
                        "accuracy": acc, "bits_remaining_pct": bits, "weights_remaining_pct": bits * 5,
                        "bn_batches": bn, "epochs": 8, "schedule": "s8", "status": "ok"}
                       for r, m, p, s, acc, bits, bn in runs])
    # seed 0's variant kept its training's statistics (re-estimated after: 85.4); seed 1's was calibrated
    reestimated = pd.DataFrame({"run_id": ["v0", "v1"], "accuracy": [85.0, 85.0],
                                "accuracy_bn_reestimated": [85.4, 99.0]})
    table = recipe.recipe_table(df, reestimated).set_index("experiment")
    assert list(table.index) == ["baseline", "(a) eps"]  # γ = 0.01 of the paper's recipe is a curve point
    eps = table.loc["(a) eps"]
    assert eps["changed"] == "`eps_bits=0.001`" and eps["seeds"] == 2
    assert eps["against the baseline curve (points)"] == "+0.00 ± 0.71 (2)"  # two seeds: no verdict
    assert eps["BN re-estimated (calibrated) %"] == "85.20 ± 0.28"  # 85.4 re-estimated, 85.0 its own
    assert eps["control (same budget) %"] == "87.60 ± 0.14"
    assert table.loc["baseline", "bits %"] == "3.00 ± 0.00"


def test_accuracy_table_names_curves_by_what_they_change_and_pairs_each_point_with_its_control():
    """Two seeds of self-compression's default curve at γ = 0.1 (83 and 84 against controls of 87.5 and 87.9),
    one of its cost=bitops variant, and the float model: the default curve is named by the method alone, the
    variant by what it changes, the control by the schedule it copies; means ± std over the seeds."""
    table_of = load_experiment("accuracy_table").accuracy_table
    sc = {"gamma": 0.1, "cost": "bits", "from_float": True}
    runs = [("self_compression", sc, 0, 83.0, 3.0, "gamma"), ("self_compression", sc, 1, 84.0, 3.2, "gamma"),
            ("self_compression", {**sc, "cost": "bitops"}, 0, 83.5, 4.8, "gamma"),
            ("float_control", {"like": "self_compression", "from_float": True}, 0, 87.5, 100.0, None),
            ("float_control", {"like": "self_compression", "from_float": True}, 1, 87.9, 100.0, None),
            ("float", {}, 0, 87.2, 100.0, None)]
    df = pd.DataFrame([{"run_id": f"r{i}", "method": m, "series": m, "params": json.dumps(p, sort_keys=True),
                        "knob": k, "seed": s, "accuracy": acc, "bits_remaining_pct": bits, "status": "ok",
                        "model": "n", "dataset": "d", "data_fingerprint": "f", "epochs": 8, "bn_batches": 20,
                        "schedule": "s", "collapsed_layers": "", "precision": "fp32"}
                       for i, (m, p, s, acc, bits, k) in enumerate(runs)], columns=COLUMNS)
    for col in ("accuracy_before_calibration", "coded_bits_pct", "weights_remaining_pct", "unique_values",
                "code_entropy_bits", "value_entropy_per_weight", "value_entropy_per_weight_nonzero", "packed_bytes",
                "macs_remaining_pct", "infer_speedup", "float_epochs", "method_epochs"):
        df[col] = 1.0
    control = {0: 87.5, 1: 87.9}
    df["control_accuracy"] = [control[s] if m == "self_compression" else float("nan") for m, s in zip(df.method, df.seed)]
    df["vs_control"] = df.accuracy - df.control_accuracy
    t = table_of(df)
    assert list(t.method) == ["float", "float_control (like=self_compression)", "self_compression",
                              "self_compression (cost=bitops)"]
    row = t.iloc[2]
    assert (row.knob, row.seeds, row["accuracy %"]) == ("gamma=0.1", 2, "83.50 ± 0.71")
    assert row["equal-budget control %"] == "87.70 ± 0.28" and row["vs control (points)"] == "−4.20 ± 0.42"  # −4.5 and −3.9
    assert t.iloc[3]["vs control (points)"] == "−4.00" and t.iloc[1]["equal-budget control %"] == "—"


def test_every_command_line_mistake_is_one_line_and_exit_2(tmp_path, capsys):
    """Bad arguments (argparse's own errors included), an empty name where a default would start the whole
    grid, and a results folder with no run to read: one line each, exit status 2, nothing trained."""
    from benchmarks import cli
    from conftest import stored_result

    empty, failed = tmp_path / "empty", tmp_path / "failed"
    (empty / "runs").mkdir(parents=True)
    stored_result(failed, "x", "float", status="failed", error="boom")
    cases = [[], ["run", "--epochs", "abc"], ["run", "--describe", ""], ["run", "--preset", "", "--methods", "float"],
             ["run", "--verbose"], ["describe", "a", "b"], ["describe", "--verbose"], ["scale"], ["inspect"],
             ["speed", "--repeats", "abc", str(ROOT / "results" / "cpu")], ["speed", str(failed)],
             ["compare", str(ROOT / "results" / "cpu"), str(empty)],
             ["compare", str(ROOT / "results" / "cpu"), str(ROOT / "results" / "cpu"), "--csv", str(tmp_path)],
             ["run", "--grid", "self_compression.gamma=0.1", "--grid", "self_compression.gamma=0.3"],
             ["step-speed", str(ROOT / "README.md")],
             *([tool, str(empty)] for tool in ("figures", "scale", "headline", "speed", "export", "migrate"))]
    for argv in cases:
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:"), (argv, err)
        assert "scnn-bench" in err[0] or "python -m" not in err[0], (argv, err)  # named as the user typed it
    assert [p.name for p in empty.iterdir()] == ["runs"] and not (failed / "speed.csv").exists()  # no empty report


@pytest.mark.slow
def test_scnn_bench_lists_its_subcommands_and_runs_them(tmp_path):
    from benchmarks import cli
    p = subprocess.run([sys.executable, "-m", "benchmarks.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0
    assert all(f"  {name}" in p.stdout for name in ("run", "figures", "speed", "inspect", "compare", "describe"))
    assert cli.main(["nope"]) == 2
    assert cli.main(["run", "--preset", "smoke", "--methods", "float", "--out", str(tmp_path), "-q"]) == 0
    assert cli.main(["figures", str(tmp_path)]) == 0 and (tmp_path / "tables.md").is_file()
    assert cli.main(["describe", "self_compression"]) == 0
