import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import run_all
from benchmarks import figures
from benchmarks.grid import expand, parse_grid_overrides
from benchmarks.presets import get_preset
import torch

from methods import ConfigError, Method, register

ROOT = Path(__file__).resolve().parents[1]


def smoke(out, *extra):
    return run_all.main(["--preset", "smoke", "--out", str(out), "-q", *extra])


def test_smoke_preset_end_to_end_and_resume(tmp_path, monkeypatch):
    assert smoke(tmp_path, "--grid", "self_compression.gamma=0.003,0.3") == 0
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df.method) >= {"float", "self_compression"} and (df.status == "ok").all()
    assert df.loc[df.method == "float", "bits_remaining_pct"].iloc[0] == 100.0
    for name in ("accuracy_vs_bits", "accuracy_vs_weights", "self_compression_training"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 0
    run = next(p for p in (tmp_path / "runs").iterdir() if json.loads((p / "config.json").read_text())["method"] != "float")
    assert {f.name for f in run.iterdir()} >= {"config.json", "history.jsonl", "model.packed", "result.json"}
    # a second invocation retrains nothing
    monkeypatch.setattr("benchmarks.runner._train_and_measure", lambda *a: pytest.fail("retrained a finished run"))
    assert smoke(tmp_path, "--grid", "self_compression.gamma=0.003,0.3") == 0
    # figures rebuild from stored results alone
    (tmp_path / "tables.md").unlink()
    assert figures.main(["--out", str(tmp_path)]) == 0 and (tmp_path / "tables.md").is_file()


class NanMethod(Method):
    """A method whose penalty is NaN: its run must fail, be recorded, and not stop the grid."""

    default_grid = {"smoke": {}}

    def penalty(self, model, task_loss):
        return torch.tensor(float("nan"))


def test_failed_run_is_recorded_and_grid_goes_on(tmp_path):
    register("_nan_method")(NanMethod)
    code = smoke(tmp_path, "--methods", "_nan_method,float")
    df = pd.read_csv(tmp_path / "results.csv")
    failed = df[df.status == "failed"]
    assert code == 1 and list(failed.method) == ["_nan_method"] and "loss became nan" in failed.error.iloc[0]
    assert list(df[df.status == "ok"].method) == ["float"]


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--grid", "self_compression.gama=1"], "no parameter 'gama'"),
    (["--grid", "self_compression.gamma=big"], "must be a number"),
    (["--grid", "gamma=1"], "bad --grid"),
    (["--preset", "cpu", "--data-dir", "/nonexistent/folder"], "CIFAR-10 not found"),
])
def test_bad_input_one_line_exit_2(args, message, tmp_path):
    p = subprocess.run([sys.executable, "run_all.py", "--out", str(tmp_path), *args], cwd=ROOT,
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "SCNN_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert smoke(blocker / "out") == 2


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
