"""Run folders that survive anything, results that never mix, files that execute nothing, bad input named.

One test per way a new user broke the harness (each failed before the fix), plus concurrent and killed grids.
The end-to-end ones (grids, subprocesses) are marked slow; the rest run in the fast tier.
"""
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_all
from benchmarks.data import make_synthetic
from benchmarks.harness.grid import bind_data, expand, parse_grid_overrides
from benchmarks.harness.rundir import RESULT_SCHEMA
from benchmarks.harness.presets import get_preset
from benchmarks.harness.runner import execute
from benchmarks.report import compare, figures
from benchmarks.float_cache import float_cache_path
from conftest import stored_result
from test_data import write_fake_cifar

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--methods", "float,self_compression", "--grid", "self_compression.gamma=0.3"]


@pytest.fixture
def grid(caplog):
    """run_all in this process; returns (exit code, ids of the runs that trained, the log's lines)."""
    caplog.set_level(logging.INFO, logger="benchmarks")
    caplog.set_level(logging.INFO, logger="run_all")

    def run(out, *extra):
        caplog.clear()
        code = run_all.main(["--preset", "smoke", *(["--out", str(out)] if out else []), *extra])
        lines = [r.getMessage() for r in caplog.records]
        return code, trained(lines), lines
    return run


def _env():
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SCNN_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def trained(lines: list[str]) -> list[str]:
    """Ids of the runs that trained, from log lines ('run <id>: training ...')."""
    return [line.split("run ")[1].split(":")[0] for line in lines if ": training " in line]


def run_dirs(out: Path) -> dict[str, Path]:
    return {json.loads((d / "config.json").read_text())["method"]: d for d in (out / "runs").iterdir()}


@pytest.mark.slow
def test_default_output_folder_is_per_preset(tmp_path, monkeypatch, grid):
    monkeypatch.chdir(tmp_path)
    assert grid(None, *SMALL)[0] == 0
    assert (tmp_path / "results" / "smoke" / "results.csv").is_file()
    assert [d.name for d in (tmp_path / "results").iterdir()] == ["smoke"]  # nothing lands beside other presets


@pytest.mark.slow
def test_reused_runs_are_announced_rerun_retrains_and_compare_reports(tmp_path, grid):
    _, first, _ = grid(tmp_path / "ref", *SMALL)
    assert len(first) == 2
    _, again, log = grid(tmp_path / "ref", *SMALL)
    assert again == [] and any("2 of 2 runs already have results" in line for line in log)
    _, repro, _ = grid(tmp_path / "new", *SMALL)
    assert sorted(repro) == sorted(first)  # same ids: the same experiments
    table, counts = compare.compare(tmp_path / "ref", tmp_path / "new")
    assert counts == {"both": 2, "only_reference": 0, "only_reproduction": 0}
    assert list(table.accuracy_diff.abs()) == pytest.approx([0, 0], abs=1.0)
    assert (table.bits_remaining_pct_ref == table.bits_remaining_pct_new).all()  # same training, same size
    cache = next((tmp_path / "ref" / "cache").glob("float-*.pt"))
    before = cache.read_bytes()
    _, rerun, _ = grid(tmp_path / "ref", *SMALL, "--rerun")
    assert len(rerun) == 2 and cache.read_bytes() == before  # the float model others start from is kept


@pytest.mark.slow
def test_compare_cli(tmp_path, capsys, grid):
    grid(tmp_path / "a", "--methods", "float")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "a"), "--csv", str(tmp_path / "c.csv")]) == 0
    assert "1 runs finished in both" in capsys.readouterr().out and (tmp_path / "c.csv").is_file()
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
def test_another_copy_of_the_data_never_reuses_a_result(tmp_path, grid):
    for name, seed in (("fake", 1), ("real", 2)):
        write_fake_cifar(tmp_path / name, seed=seed)
    out = tmp_path / "out"
    args = ["--methods", "float", "--dataset", "cifar10"]
    _, a, _ = grid(out, *args, "--data-dir", str(tmp_path / "fake"))
    _, b, _ = grid(out, *args, "--data-dir", str(tmp_path / "real"))
    assert len(a) == len(b) == 1 and a != b
    df = pd.read_csv(out / "results.csv")
    assert df.data_fingerprint.nunique() == 2 and len(list((out / "cache").glob("float-*.pt"))) == 2
    assert "different data sets" in (out / "tables.md").read_text()


def _flip_byte(path: Path, at: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("damage, content", [("history.jsonl", '{"epoch": 1}\n{"epo'),
                                             ("result.json", "[]"),
                                             ("result.json", '{"status": "ok"}'),
                                             ("model.packed", None),
                                             ("model.packed", "flip 100"),  # in the header
                                             ("model.packed", "flip -40"),  # in the body, before the checksum
                                             ("model.packed", "flip -1")])  # in the file's own checksum
def test_damaged_run_folder_is_named_and_redone(tmp_path, damage, content, grid):
    out = tmp_path / "out"
    grid(out, *SMALL)
    victim = run_dirs(out)["self_compression"]
    flipped = _flip_byte(victim / damage, int(content.split()[1])) if content and content.startswith("flip") else None
    (victim / damage).unlink()
    if flipped is not None:
        (victim / damage).write_bytes(flipped)
    elif content is not None:
        (victim / damage).write_text(content)
    assert figures.main([str(out)]) == 0  # the report never crashes on it
    code, runs, log = grid(out, *SMALL)
    assert code == 0 and runs == [victim.name]
    assert sum(victim.name in line and "redoes it" in line for line in log) == 1  # named once
    assert json.loads((victim / "result.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_corrupted_float_cache_is_named_and_rebuilt(tmp_path, grid):
    out = tmp_path / "out"
    grid(out, *SMALL)
    cache = next((out / "cache").glob("float-*.pt"))
    cache.write_bytes(cache.read_bytes()[:1000])
    for d in (out / "runs").iterdir():
        (d / "result.json").unlink()
    code, _, log = grid(out, *SMALL)
    warnings = [line for line in log if "float-model cache" in line]
    assert code == 0 and len(warnings) == 1 and cache.name in warnings[0] and "training it again" in warnings[0]
    assert (pd.read_csv(out / "results.csv").status == "ok").all()


def test_crafted_checkpoint_executes_nothing(tmp_path, caplog):
    data = make_synthetic()
    spec = bind_data(expand(get_preset("smoke"), ["self_compression"], [0],
                            parse_grid_overrides(["self_compression.gamma=0.3"])), data)[0]
    folder = tmp_path / "runs" / spec.run_id
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "checkpoint.pt").write_bytes(pickle.dumps({"epoch_index": Payload(), "elapsed": 0.0}, protocol=2))
    with caplog.at_level(logging.WARNING, logger="benchmarks"):
        result = execute(spec, tmp_path, data=data, progress=False)
    assert not marker.exists() and result["status"] == "ok"
    warned = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(warned) == 1 and "never loaded" in warned[0]  # one warning, and no advice to load it unsafely
    assert "weights_only" not in warned[0] and "trust" not in warned[0]


@pytest.mark.slow
def test_checkpoints_are_plain_data(tmp_path, monkeypatch):
    """Every checkpoint the loop writes (weights after surgery, method state, optimizers, RNG) loads with
    ``weights_only=True``."""
    from benchmarks import train as train_mod

    seen = []
    real = train_mod.save_checkpoint

    def keep(path, *a, **k):
        real(path, *a, **k)
        seen.append(torch.load(path, weights_only=True))

    monkeypatch.setattr(train_mod, "save_checkpoint", keep)
    data = make_synthetic()
    for method in ("self_compression", "diffq", "weight_fixing"):
        spec = bind_data(expand(get_preset("smoke"), [method], [0], {}), data)[0]
        assert execute(spec, tmp_path, data=data, progress=False)["status"] == "ok"
    assert len(seen) >= 9 and all("rng" in s and "method" in s for s in seen)


def test_a_method_state_a_resume_could_not_load_is_refused_at_the_first_save(tmp_path):
    """A plugin whose ``state_dict()`` holds an arbitrary object learns it at the first checkpoint, in one line,
    not after an interruption (when the checkpoint would be refused and the run silently start afresh)."""
    from methods import Method, register
    from benchmarks.checkpoints import save_checkpoint

    class KeepsAnObject(Method):
        exports_float = True

        def state_dict(self):
            return {"masks": {"fc": torch.ones(2)}, "helper": Path("x")}

    register("_keeps_an_object")(KeepsAnObject)
    model, gen = torch.nn.Linear(2, 2), torch.Generator()
    with pytest.raises(TypeError, match="_keeps_an_object.state_dict\\(\\) cannot be checkpointed: it holds objects") as e:
        save_checkpoint(tmp_path / "c.pt", model, KeepsAnObject(), [], gen, epoch_index=1, elapsed=0.0)
    assert "\n" not in str(e.value) and not (tmp_path / "c.pt").exists()
    KeepsAnObject.state_dict = lambda self: {"masks": {"fc": torch.ones(2)}, "steps": [1, 2], "name": "x"}
    save_checkpoint(tmp_path / "c.pt", model, KeepsAnObject(), [], gen, epoch_index=1, elapsed=0.0)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["method"]["steps"] == [1, 2]


def test_a_killed_writers_temporary_files_are_removed_when_a_grid_next_holds_the_run(tmp_path):
    data = make_synthetic()
    spec = bind_data(expand(get_preset("smoke"), ["float"], [0], {}), data)[0]
    assert execute(spec, tmp_path, data=data, progress=False)["status"] == "ok"
    folder = tmp_path / "runs" / spec.run_id
    leftovers = [folder / "checkpoint.pt.4242.tmp", folder / "rerun" / "result.json.4242.tmp"]
    for f in leftovers:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"torn")
    assert execute(spec, tmp_path, data=data, progress=False)["status"] == "ok"  # finished: reused, not retrained
    assert not any(f.exists() for f in leftovers) and (folder / "result.json").is_file()


def test_a_saved_state_is_the_same_bytes_whatever_process_wrote_it(tmp_path, monkeypatch):
    """Checkpoints and cached float models name nothing of the process that wrote them (torch names the archive
    inside a file after the file, and the temporary file's name holds the pid)."""
    from benchmarks.checkpoints import write_torch

    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"key": "k"}}
    write_torch(tmp_path / "a.pt", state)
    monkeypatch.setattr(os, "getpid", lambda: 4242)  # another writer
    write_torch(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]["w"], state["state_dict"]["w"])


@pytest.mark.slow
def test_concurrent_grids_never_train_a_run_twice(tmp_path):
    out = tmp_path / "out"
    args = ["--methods", "float,self_compression", "--grid", "self_compression.gamma=0.01,0.1,0.3"]
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke", "--out", str(out), *args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    runs = trained(errs[0].splitlines()) + trained(errs[1].splitlines())
    assert len(runs) == len(set(runs)) == 4  # every run trained once, by one of the two grids
    assert trained(errs[0].splitlines()) and trained(errs[1].splitlines())  # and both grids did work
    _assert_folders_intact(out, 4)


@pytest.mark.slow
def test_kill_9_then_concurrent_grids_resume_and_complete(tmp_path):
    out = tmp_path / "out"
    args = ["--methods", "float,self_compression", "--grid", "self_compression.gamma=0.003,0.3", "--epochs", "6"]
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke", "--out", str(out), *args]
    victim = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _wait_for(lambda: any((out / "runs").glob("*/checkpoint.pt")), victim)
    victim.kill()  # SIGKILL: no handler runs, the kernel drops its locks
    victim.wait()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    runs = trained(errs[0].splitlines()) + trained(errs[1].splitlines())
    assert len(runs) == len(set(runs))  # the unfinished ones, each once
    assert "resuming from" in errs[0] + errs[1]
    _assert_folders_intact(out, 3)


def _wait_for(cond, proc, timeout=300):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, "the grid ended before the moment the test waits for"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.05)


def _assert_folders_intact(out: Path, n: int):
    df = pd.read_csv(out / "results.csv")
    assert len(df) == n and (df.status == "ok").all()
    for d in (out / "runs").iterdir():
        r = json.loads((d / "result.json").read_text())
        epochs = r["spec"]["train"]["epochs"] if r["spec"]["method"] != "float" else r["spec"]["float_train"]["epochs"]
        hist = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in hist] == list(range(1, epochs + 1))  # no duplicated or torn lines
        assert not list(d.glob("*.tmp")) and not (d / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, jobs):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke", "--out", str(out), "-q", *SMALL,
           "--epochs", "20", "--jobs", jobs]
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    _wait_for(lambda: any((out / "runs").glob("*/checkpoint.pt")), p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 130
    assert err.strip().splitlines() == ["interrupted; rerun the same command to resume"]  # no worker noise either


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--grid", "self_compression.gamma=-1"], "self_compression.gamma must be a finite number in [0, 100]"),
    (["--grid", "self_compression.gamma=Infinity"], "self_compression.gamma must be a finite number, got inf"),
    (["--grid", "self_compression.gamma=1e308"], "self_compression.gamma must be a finite number in [0, 100]"),
    (["--grid", "diffq.lam=1e308"], "diffq.lam must be a finite number in [0, 100]"),
    (["--seeds", str(2**70)], "--seeds must lie in [0, 4294967295]"),
    (["--seeds", "-1"], "--seeds must lie in [0, 4294967295]"),
    (["--epochs", str(10**12)], "--epochs must lie in [1, 1000]"),
    (["--methods", ""], "--methods is empty"),
    (["--model", "resnet9x0"], "width must be in (0, 2]"),
    (["--grid", "weight_fixing.delta=0.5"], "weight_fixing.delta must lie in (0, 0.1000)"),
    (["--out", ""], "--out is empty"),
])
def test_bad_parameter_values_are_named_not_called_broken(args, message, tmp_path):
    cmd = [sys.executable, "run_all.py", "--preset", "smoke", *(["--out", str(tmp_path)] if "--out" not in args else []),
           *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    assert p.returncode == 2 and message in p.stderr and "broken" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_jobs_above_core_count_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert run_all.main(["--preset", "smoke", "--out", str(tmp_path), "--methods", "float", "--jobs", "3"]) == 0
    assert any("--jobs 3 is more than the 2 cores" in r.message for r in caplog.records)


@pytest.mark.slow
def test_figures_on_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch, grid):
    grid(tmp_path, "--methods", "float")
    capsys.readouterr()

    def refuse(self, path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", refuse)  # chmod does not stop root, who runs CI
    assert figures.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0] and "--dest" in err[0]


def test_reports_leave_out_a_run_whose_files_no_longer_back_its_result(tmp_path, caplog):
    """A table shows a run's size only while its ``model.packed`` is the file it recorded and its history
    parses: the reports read with the grid's own checks, and name each run they leave out."""
    from benchmarks.report.runs import load

    for i in range(4):
        stored_result(tmp_path, f"r{i}", "m", {"k": i})
    (tmp_path / "runs" / "r1" / "model.packed").unlink()
    altered = bytearray((tmp_path / "runs" / "r2" / "model.packed").read_bytes())
    altered[len(altered) // 2] ^= 1
    (tmp_path / "runs" / "r2" / "model.packed").write_bytes(bytes(altered))
    (tmp_path / "runs" / "r3" / "history.jsonl").write_text('{"epoch": 1}\n{"epo')
    with caplog.at_level(logging.WARNING):
        runs = load(tmp_path)
    assert list(runs.table.run_id) == ["r0"]
    assert "model.packed is missing" in caplog.text and "altered or replaced" in caplog.text
    assert "history.jsonl, line 2, does not parse" in caplog.text


def test_no_two_curves_of_a_legend_share_a_label(tmp_path):
    """Curves that differ only in their schedule (an 8- and a 16-epoch control, a recipe screen's long run) or
    in a control's parameter are told apart in every legend, as the tables tell them apart."""
    from benchmarks.report.runs import curve_labels, load

    like = {"like": "self_compression", "from_float": True}
    for i, (params, epochs) in enumerate([(like, 8), (like, 16), ({**like, "from_float": False}, 22)]):
        stored_result(tmp_path, f"c{i}", "float_control", params, budget={"method_epochs": epochs})
    for i, epochs in enumerate([8, 16]):
        stored_result(tmp_path, f"s{i}", "self_compression", {"gamma": 0.1}, knob="gamma",
                      budget={"method_epochs": epochs})
    labels = curve_labels(load(tmp_path).table)
    assert len(set(labels.values())) == len(labels) == 5, labels
    assert "float_control (like=self_compression, from_float=False, 22 epochs)" in labels.values()
    assert "self_compression (16 epochs)" in labels.values()


def test_tables_sort_numerically(tmp_path):
    from benchmarks.report.runs import load
    from benchmarks.report.tables import write_tables

    for i, bits in enumerate([12.56, 16.41, 6.46, 7.54, 100.0]):
        stored_result(tmp_path, f"r{i}", "m", {"k": i}, size={"bits_remaining_pct": bits})
    write_tables(load(tmp_path))
    lines = (tmp_path / "tables.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| params"))
    column = [c.strip() for c in header.split("|")].index("bits remaining %")
    rows = [line for line in lines if line.startswith("| k=")]
    assert [float(r.split("|")[column]) for r in rows] == [6.46, 7.54, 12.56, 16.41, 100.0]


def test_describe_and_verbose_list(capsys):
    assert run_all.main(["--describe", "self_compression"]) == 0
    out = capsys.readouterr().out
    assert "gamma = 0.01  (float)" in out and "default grid, preset cpu: gamma=0.001,0.003" in out
    assert run_all.main(["--list-methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert all(f"{m}:" in out for m in ("float", "diffq", "weight_fixing")) and "lr_bits = 0.5" in out
    assert run_all.main(["--describe", "nope"]) == 2


def test_float_cache_key_is_the_data_content(tmp_path):
    a, b = make_synthetic(seed=0), make_synthetic(seed=1)
    spec, cfg = get_preset("smoke").model, get_preset("smoke").float_train
    assert float_cache_path(tmp_path, spec, a.fingerprint, cfg) != float_cache_path(tmp_path, spec, b.fingerprint, cfg)
    assert a.fingerprint == make_synthetic(seed=0).fingerprint


@pytest.mark.slow
def test_rerun_of_one_point_retrains_that_point_and_keeps_the_float_model(tmp_path, grid):
    out = tmp_path / "out"
    grid(out, *SMALL)
    cache = next((out / "cache").glob("float-*.pt"))
    kept = {p: p.read_bytes() for p in [cache, run_dirs(out)["float"] / "result.json"]}
    _, rerun, _ = grid(out, "--methods", "self_compression", "--grid", "self_compression.gamma=0.3", "--rerun")
    assert rerun == [run_dirs(out)["self_compression"].name]
    assert all(p.read_bytes() == b for p, b in kept.items())
    victim = run_dirs(out)["self_compression"]
    assert not (victim / "rerun").exists() and not (victim / "rerun-requested").exists()


@pytest.mark.slow
def test_interrupted_rerun_leaves_the_old_result_and_float_model_in_place(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke", "--out", str(out), "-q", *SMALL,
           "--epochs", "30"]
    assert subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True).returncode == 0
    victim = run_dirs(out)["self_compression"]
    before = {p: p.read_bytes() for p in [*(victim / f for f in ("result.json", "model.packed", "history.jsonl")),
                                            *(out / "cache").glob("float-*.pt")]}
    p = subprocess.Popen(cmd + ["--rerun"], cwd=ROOT, env=_env(), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _wait_for(lambda: (victim / "rerun" / "checkpoint.pt").exists(), p)
    p.kill()  # kill -9 mid-way through the rerun
    p.wait()
    assert all(path.read_bytes() == b for path, b in before.items())  # the old result, intact
    df = pd.read_csv(out / "results.csv")
    assert (df.status == "ok").all() and len(df) == 2
    # the rerun resumes where it stopped, and only once complete replaces the old result
    done = subprocess.run(cmd + ["--rerun"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (victim / "rerun").exists()
    r = json.loads((victim / "result.json").read_text())
    assert r["status"] == "ok" and r["packed_sha256"] and r["schema"] == RESULT_SCHEMA


@pytest.mark.slow
def test_retraining_a_float_model_needs_its_flag_and_names_the_runs_that_started_from_it(tmp_path, grid):
    out = tmp_path / "out"
    grid(out, *SMALL, "--grid", "self_compression.from_float=true")  # starts from the float model
    sc = run_dirs(out)["self_compression"].name
    cache = next((out / "cache").glob("float-*.pt"))
    mtime = cache.stat().st_mtime_ns
    code, runs, log = grid(out, "--methods", "float", "--retrain-float")
    assert code == 0 and runs == [run_dirs(out)["float"].name] and cache.stat().st_mtime_ns > mtime
    named = [line for line in log if "retraining float model" in line]
    assert len(named) == 1 and "1 finished runs outside this grid" in named[0] and sc in named[0]
    assert not list((out / "cache").glob("*.retrain"))


@pytest.mark.slow
def test_every_result_says_where_it_was_made(tmp_path, grid):
    grid(tmp_path, "--methods", "float")
    env = json.loads((run_dirs(tmp_path)["float"] / "result.json").read_text())["environment"]
    assert {"cpu_model", "cpu_bf16", "torch_threads", "device", "native_bf16"} <= set(env["host"])
    assert env["host"]["torch_threads"] == torch.get_num_threads() and env["executor"] == "local"
    assert env["torch"] == torch.__version__


@pytest.mark.slow
def test_compare_checks_the_files_and_says_which_half_of_the_contract_holds(tmp_path, grid):
    grid(tmp_path / "a", "--methods", "float")
    grid(tmp_path / "b", "--methods", "float")
    table, _ = compare.compare(tmp_path / "a", tmp_path / "b")
    assert list(table.contract) == ["bit-identical"] and list(table.holds) == ["yes"]
    assert list(table.same_file) == [True]
    # the same run made with other threads: only seed noise is promised
    f = next((tmp_path / "b" / "runs").glob("*/result.json"))
    r = json.loads(f.read_text())
    r["environment"]["host"]["torch_threads"] += 1
    f.write_text(json.dumps(r))
    assert list(compare.compare(tmp_path / "a", tmp_path / "b")[0].contract) == ["seed noise"]


@pytest.mark.slow
def test_figures_rebuilt_twice_are_byte_identical(tmp_path, grid):
    grid(tmp_path / "out", *SMALL)
    for dest in ("a", "b"):
        assert figures.main([str(tmp_path / "out"), "--dest", str(tmp_path / dest)]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert any(f.suffix == ".pdf" for f in files) and any(f.suffix == ".png" for f in files)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert b"CreationDate" not in (tmp_path / "a" / "figures" / "accuracy_vs_bits.pdf").read_bytes()


@pytest.mark.slow
def test_a_results_folder_holds_one_kind_of_run(tmp_path, grid):
    out = tmp_path / "out"
    write_fake_cifar(tmp_path / "data")
    assert grid(out, "--methods", "float")[0] == 0  # synthetic data, tinycnn
    code, runs, _ = grid(out, "--methods", "float", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"))
    assert code == 2 and runs == []
    assert grid(out, "--methods", "float", "--model", "resnet9x0.125")[0] == 2  # another network family
    assert grid(out, "--methods", "float", "--model", "tinycnnx0.5")[0] == 0  # another width of the same: allowed
    code, runs, _ = grid(out, "--methods", "float", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                         "--mix-runs")
    assert code == 0 and len(runs) == 1
    assert "different data sets" in (out / "tables.md").read_text()  # and the tables say so


@pytest.mark.slow
def test_one_kind_refusal_is_one_line(tmp_path, capsys):
    assert run_all.main(["--preset", "smoke", "--methods", "float", "--out", str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    assert run_all.main(["--preset", "smoke", "--methods", "float", "--model", "resnet9x0.125", "--out",
                         str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds runs of synthetic tinycnn" in err[0] and "--mix-runs" in err[0]


@pytest.mark.slow
def test_a_damaged_folder_is_named_once_by_the_report(tmp_path, grid, caplog):
    grid(tmp_path, *SMALL)
    victim = run_dirs(tmp_path)["self_compression"]
    (victim / "result.json").write_text("[]")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert figures.main([str(tmp_path)]) == 0
    assert sum(victim.name in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_auto_precision_keeps_the_arithmetic_of_the_runs_a_folder_holds(tmp_path, grid, monkeypatch):
    """Where auto would pick bf16 (a native host with the evidence), a folder of fp32 runs stays fp32, so that
    `make run` on a fresh clone reuses the committed runs instead of training a bf16 copy beside them."""
    from benchmarks import device
    assert grid(tmp_path, "--methods", "float", "--precision", "fp32")[0] == 0
    monkeypatch.setattr(device, "native_bf16", lambda *a, **k: True)
    monkeypatch.setattr(device, "AUTO_PICKS_BF16", True)
    code, runs, log = grid(tmp_path, "--methods", "float")
    assert code == 0 and runs == [] and any("the precision of the runs already in" in line for line in log)
    code, runs, _ = grid(tmp_path / "new", "--methods", "float")  # a new folder takes the host's choice
    df = pd.read_csv(tmp_path / "new" / "results.csv")
    assert code == 0 and len(runs) == 1 and list(df.precision) == ["bf16"]
