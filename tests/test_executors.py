"""Cluster executors on this machine: a local Ray instance and submitit's local stand-in for SLURM must write
the same run folders as the local executor, survive a killed or preempted worker, and refuse a missing extra
or an output folder the workers do not see."""
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_all
from benchmarks.harness import executors

pytestmark = pytest.mark.slow  # end-to-end: grids, subprocesses, clusters

# float, a run from scratch and a run fine-tuning the float model: both waves of a cluster grid
GRID = ["--preset", "smoke", "--methods", "float,self_compression,weight_fixing", "--grid",
        "self_compression.gamma=0.3", "--grid", "weight_fixing.delta=0.01", "-q"]
LONG_RUN = ["--preset", "smoke", "--methods", "self_compression", "--grid", "self_compression.gamma=0.3",
            "--epochs", "12", "-q"]  # long enough to be interrupted after its first epoch checkpoint


def main(out, *args):
    return run_all.main(["--out", str(out), *args])


@contextmanager
def one_thread():
    """Like every cluster run given one CPU: the same summation order, so the same numbers to the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_folders(out: Path) -> dict[str, tuple]:
    """Per run: its files, result.json and history without timings and the executor's name, and the packed
    model's bytes."""
    runs = {}
    for folder in sorted((out / "runs").iterdir()):
        result = {k: v for k, v in json.loads((folder / "result.json").read_text()).items()
                  if k not in ("train_seconds", "wall_seconds")}
        result["budget"] = {k: v for k, v in result.get("budget", {}).items() if not k.endswith("_seconds")}
        # which executor ran it, and the commit checked out when it started: the repository may get a commit
        # while a slow comparison runs (seen under load), which changes that record but not the run
        result["environment"] = {k: v for k, v in result["environment"].items() if k not in ("executor", "git_commit")}
        history = [{k: v for k, v in json.loads(line).items() if k not in ("epoch_seconds", "epoch_time_vs_float")}
                   for line in (folder / "history.jsonl").read_text().splitlines()]
        runs[folder.name] = (sorted(f.name for f in folder.iterdir()), result, history,
                             (folder / "model.packed").read_bytes())
    return runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    with one_thread():
        assert main(out, *GRID) == 0
    return run_folders(out)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for every Ray test (the executor joins a Ray that is already connected)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def processes(text: str) -> list[int]:
    """Ids of the processes whose command line (or Ray process title) contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(proc.name))
        except (OSError, UnicodeDecodeError):
            pass
    return pids


def interrupt_after_first_epoch(out: Path, process_text: str, sig: int) -> dict:
    """In a thread: once a run has checkpointed an epoch, send ``sig`` to the worker process running it.
    Returns what it saw: the run folder and its first history line at that moment (a resumed run keeps it)."""
    seen: dict = {}

    def watch():
        for _ in range(30000):  # a bound on the polling, not a timing assertion
            ckpt = next(iter(out.glob("runs/*/checkpoint.pt")), None)
            pids = processes(process_text) if ckpt else []
            if pids:
                seen.update(folder=ckpt.parent, first=(ckpt.parent / "history.jsonl").read_text().splitlines()[0])
                for pid in pids:
                    os.kill(pid, sig)
                seen["pids"] = pids
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_ray_grid_gives_the_local_executors_run_folders(reference, ray_cluster, tmp_path):
    assert main(tmp_path, *GRID, "--executor", "ray", "--cpus-per-run", "1") == 0
    assert run_folders(tmp_path) == reference
    assert not list(tmp_path.glob(".reach-*"))  # the driver's token is gone


def test_grid_split_between_local_and_ray_reports_as_one(reference, ray_cluster, tmp_path):
    with one_thread():
        assert main(tmp_path, "--preset", "smoke", "--methods", "float", "-q") == 0
    assert main(tmp_path, *GRID, "--executor", "ray", "--cpus-per-run", "1") == 0  # only the two others run
    assert run_folders(tmp_path) == reference
    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(df.method) == ["float", "self_compression", "weight_fixing"] and (df.status == "ok").all()


def test_killed_ray_worker_is_retried_from_its_checkpoint_or_recorded(ray_cluster, tmp_path):
    seen = interrupt_after_first_epoch(tmp_path / "a", "ray::run-", signal.SIGKILL)
    assert main(tmp_path / "a", *LONG_RUN, "--executor", "ray") == 0
    assert seen["pids"]  # a worker was killed mid-run, and Ray's retry resumed the run
    result = json.loads((seen["folder"] / "result.json").read_text())
    history = (seen["folder"] / "history.jsonl").read_text().splitlines()
    assert result["status"] == "ok" and len(history) == 12 and history[0] == seen["first"]

    # no retries left: the run is recorded as failed, keeps its checkpoint, and the next invocation resumes it
    seen = interrupt_after_first_epoch(tmp_path / "b", "ray::run-", signal.SIGKILL)
    assert main(tmp_path / "b", *LONG_RUN, "--executor", "ray", "--ray-max-retries", "0") == 1
    result = json.loads((seen["folder"] / "result.json").read_text())
    assert result["status"] == "failed" and "its Ray task failed after 0 retries" in result["error"]
    assert (seen["folder"] / "checkpoint.pt").is_file()
    assert main(tmp_path / "b", *LONG_RUN, "--executor", "ray") == 0
    assert json.loads((seen["folder"] / "result.json").read_text())["status"] == "ok"
    assert (seen["folder"] / "history.jsonl").read_text().splitlines()[0] == seen["first"]


@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_output_folder_not_visible_from_a_worker(executor, tmp_path, monkeypatch, capsys, request):
    """The driver's token never reaches the workers' folder, as when --out is not on a shared filesystem."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    else:
        pytest.importorskip("submitit")
    monkeypatch.setattr(executors, "write_token", lambda out, token: None)
    args = ["--slurm-cluster", "local"] if executor == "slurm" else []
    assert main(tmp_path, *GRID, "--executor", executor, *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"output folder {tmp_path} is not visible from worker on node" in err[0]
    assert "put --out on a shared filesystem" in err[0]
    assert not any((tmp_path / "runs").iterdir())  # nothing ran


def test_ray_refuses_runs_no_node_has_room_for(ray_cluster, tmp_path, capsys):
    assert main(tmp_path, *GRID, "--executor", "ray", "--gpus-per-run", "1") == 2  # the local Ray has no GPU
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "no node of the Ray cluster has room for one run (1 CPUs, 1 GPUs)" in err[0]


def test_slurm_job_array_gives_the_local_executors_run_folders(reference, tmp_path):
    pytest.importorskip("submitit")
    assert main(tmp_path, *GRID, "--executor", "slurm", "--slurm-cluster", "local") == 0
    assert run_folders(tmp_path) == reference
    executors = {json.loads(f.read_text())["environment"]["executor"] for f in (tmp_path / "runs").glob("*/result.json")}
    assert executors == {"slurm"}  # recorded by the array task that ran it
    index = [line.split("\t") for line in (tmp_path / "slurm_logs" / "runs.tsv").read_text().splitlines()]
    assert sorted(row[0] for row in index) == sorted(reference)  # which job ran which run
    for row in index:  # one log folder per array task
        assert list((tmp_path / "slurm_logs" / row[1]).glob("*_log.err"))


def test_preempted_slurm_task_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    pytest.importorskip("submitit")
    # SLURM's preemption signal (USR2) to the array task's process, as `scancel --signal` would send it
    seen = interrupt_after_first_epoch(tmp_path, f"submitit.core._submit {tmp_path}", signal.SIGUSR2)
    assert main(tmp_path, *LONG_RUN, "--executor", "slurm", "--slurm-cluster", "local") == 0
    assert seen["pids"]
    history = (seen["folder"] / "history.jsonl").read_text().splitlines()
    assert json.loads((seen["folder"] / "result.json").read_text())["status"] == "ok"
    assert len(history) == 12 and history[0] == seen["first"]  # resumed, not restarted
    logs = "".join(p.read_text() for p in (tmp_path / "slurm_logs").glob("*/*_log.*"))
    assert "Calling checkpoint method" in logs and "Requeued job" in logs


@pytest.mark.parametrize("args, message", [
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be a finite number above 0, got 0"),
    (["--executor", "ray", "--cpus-per-run", "inf"], "--cpus-per-run must be a finite number above 0, got inf"),
    (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be a finite number of at least 0, got -1"),
    (["--executor", "ray", "--ray-max-retries", "-1"], "--ray-max-retries must be a finite number of at least 0"),
    (["--executor", "ray", "--ray-address", " "], "--ray-address is empty"),
    (["--executor", "slurm", "--gpus-per-run", "0.5"], "must be a whole number for --executor slurm"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be a finite number above 0"),
    (["--executor", "slurm", "--slurm-option", "account"], "bad --slurm-option 'account'"),
    (["--cpus-per-run", "2"], "--cpus-per-run applies to --executor ray or slurm"),
    (["--executor", "ray", "--slurm-partition", "gpu"], "--slurm-partition applies to --executor slurm"),
    (["--executor", "ray", "--jobs", "2"], "--jobs applies to --executor local"),
    (["--executor", "ray", "--device", "cuda"], "needs --gpus-per-run above 0"),
])
def test_bad_cluster_flags_one_line_exit_2(args, message, tmp_path, capsys):
    assert main(tmp_path, "--preset", "smoke", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unreachable_ray_address(tmp_path, capsys):
    pytest.importorskip("ray")
    assert main(tmp_path, "--preset", "smoke", "--executor", "ray", "--ray-address", "127.0.0.1:1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Ray head answers at 127.0.0.1:1" in err[0] and "check --ray-address" in err[0]


def test_slurm_refuses_a_node_local_output_folder_and_a_machine_without_slurm(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    assert main(tmp_path, "--preset", "smoke", "--executor", "slurm") == 2  # tmp_path: under $TMPDIR or /tmp
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"output folder {tmp_path} is on node-local storage" in err[0]
    assert "put --out on a shared filesystem" in err[0] and not list(tmp_path.glob("slurm_logs"))
    # on shared storage, from a machine that is not a SLURM login node
    monkeypatch.setattr(executors, "NODE_LOCAL", ())
    monkeypatch.setattr(executors.tempfile, "gettempdir", lambda: "/elsewhere")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(tmp_path, "--preset", "smoke", "--executor", "slurm") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found no SLURM here (sbatch, srun); run it on a SLURM login node" in err[0]


@pytest.mark.parametrize("executor, module", [("ray", "ray"), ("slurm", "submitit")])
def test_missing_extra_names_it(executor, module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    assert main(tmp_path, "--preset", "smoke", "--executor", executor) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'scnn-bench[{executor}]'" in err[0]


def test_each_run_records_the_executor_that_ran_it(reference, ray_cluster, tmp_path):
    assert main(tmp_path, *GRID, "--executor", "ray", "--cpus-per-run", "1") == 0
    executors = {json.loads(f.read_text())["environment"]["executor"] for f in (tmp_path / "runs").glob("*/result.json")}
    assert executors == {"ray"}
