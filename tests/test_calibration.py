import json
import shutil

import pandas as pd
import pytest
import torch
from torch import nn

import run_all
from benchmarks.accounting import packing
from benchmarks.compressed import export_float, to_module
from benchmarks.data import make_synthetic
from benchmarks.harness import calibrate_runs
from benchmarks.harness.calibration import calibrate_batchnorm
from benchmarks.harness.grid import bind_data, expand
from benchmarks.harness.presets import get_preset
from benchmarks.models import topology
from benchmarks.report.runs import series_names
from benchmarks.harness.calibration import reestimate_batchnorm
from benchmarks.train import evaluate
from tests.conftest import load_experiment, randomize_bn


def norms(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("space, dead", [("single", "one"), ("single", "all"), ("residual", "one")])
def test_calibration_stores_the_statistics_of_the_decoded_network(small_resnet, tmp_path, space, dead):
    spec, model = small_resnet
    randomize_bn(model)
    topo = topology(model)
    node = next(n for n in topo.nodes if n.bn and n.out_space in topo.spaces
                and (len(topo.producers(n.out_space)) > 1) == (space == "residual"))
    modules = dict(model.named_modules())
    width = modules[node.name].weight.shape[0]
    killed = [0] if dead == "one" else list(range(width))
    for producer in topo.producers(node.out_space):  # removed only where every producer has it dead
        modules[producer.name].weight.data[killed] = 0
    removed = [0] if dead == "one" else list(range(1, width))  # a space keeps one channel
    kept = [c for c in range(width) if c not in removed]
    cm = export_float(model, spec)
    stored = {k: v.clone() for k, v in cm.others.items()}
    data = make_synthetic(n_train=512, n_test=64)
    calibrated = calibrate_batchnorm(cm, data.train, n_batches=3, batch_size=64, seed=1)
    packing.save(calibrated, tmp_path / "m.packed")
    got = to_module(packing.load(tmp_path / "m.packed"))
    want = reestimate_batchnorm(to_module(cm), data.train, n_batches=3, batch_size=64, seed=1).eval()
    assert norms(got).keys() == norms(want).keys()
    for name, m in norms(want).items():
        assert torch.allclose(norms(got)[name].running_mean, m.running_mean, atol=1e-6)
        assert torch.allclose(norms(got)[name].running_var, m.running_var, atol=1e-6)
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(got(x), want(x), atol=1e-5)
    assert all(torch.equal(cm.others[k], v) for k, v in stored.items())  # the input artifact is left as it was
    key = f"{node.bn}.running_mean"
    assert torch.equal(calibrated.others[key][removed], stored[key][removed])  # removed: unused, as stored
    assert not torch.allclose(calibrated.others[key][kept], stored[key][kept])


def test_run_ids_without_calibration_are_the_old_ones_and_calibration_names_a_new_run():
    plain = expand(get_preset("smoke"), ["float"], [0], {}, bn_batches=0)[0]
    assert "bn_batches" not in plain.as_dict()
    calibrated = expand(get_preset("smoke"), ["float"], [0], {})[0]  # the preset's default
    assert calibrated.bn_batches == get_preset("smoke").bn_batches > 0
    assert calibrated.as_dict()["bn_batches"] == calibrated.bn_batches and calibrated.run_id != plain.run_id
    # a folder holding both: every curve says which it is
    runs = pd.DataFrame({"method": ["float", "float", "diffq"], "params": ["{}", "{}", '{"lam": 0.1}'],
                         "knob": [None, None, "lam"], "epochs": [3, 3, 3], "bn_batches": [0, 20, 20],
                         "precision": "fp32"})
    assert list(series_names(runs)) == ["float bn_batches=0", "float bn_batches=20", "diffq bn_batches=20"]


@pytest.mark.slow
def test_old_runs_get_calibrated_twins_that_a_grid_reuses(tmp_path, monkeypatch):
    args = ["--preset", "smoke", "--out", str(tmp_path / "r"), "-q", "--methods", "float", "--precision", "fp32"]
    assert run_all.main([*args, "--bn-batches", "0"]) == 0
    (old,) = (tmp_path / "r" / "runs").iterdir()
    before = json.loads((old / "result.json").read_text())
    assert "bn_batches" not in before["spec"] and "accuracy_before_calibration" not in before
    # a run from another scnn-bench version (a schedule field unknown here) is named and stays; the rest goes on
    other = tmp_path / "r" / "runs" / "0123456789ab"
    shutil.copytree(old, other)
    (other / "result.json").write_text(json.dumps({**before, "run_id": other.name, "spec": {
        **before["spec"], "train": {**before["spec"]["train"], "ema": 0.99}}}))
    bn = str(get_preset("smoke").bn_batches)
    assert calibrate_runs.main([str(tmp_path / "r"), "--bn-batches", bn]) == 1
    shutil.rmtree(other)
    assert [p.name for p in (tmp_path / "r-uncalibrated" / "runs").iterdir()] == [old.name]
    (run,) = (tmp_path / "r" / "runs").iterdir()
    r = json.loads((run / "result.json").read_text())
    assert r["calibrated_from"] == old.name and r["spec"]["bn_batches"] == get_preset("smoke").bn_batches
    assert r["accuracy_before_calibration"] == before["accuracy"] and r["size"] == before["size"]
    # the twin is the run a grid with calibration (the default) names: it finds it done
    assert run.name == bind_data(expand(get_preset("smoke"), ["float"], [0], {}), make_synthetic())[0].run_id
    monkeypatch.setattr("benchmarks.harness.runner._train_and_measure", lambda *a: pytest.fail("retrained a run"))
    assert run_all.main(args) == 0
    df = pd.read_csv(tmp_path / "r" / "results.csv")
    assert (df.bn_batches == r["spec"]["bn_batches"]).all() and df.accuracy_before_calibration.notna().all()
    # what is scored is the calibrated packed file, whose statistics are not the trained model's
    assert evaluate(to_module(packing.load(run / "model.packed")), make_synthetic().test) == r["accuracy"]
    trained = torch.load(next((tmp_path / "r" / "cache").glob("float-*.pt")), weights_only=True)["state_dict"]
    stored = packing.load(run / "model.packed").others
    assert not torch.allclose(stored["conv1.1.running_mean"], trained["conv1.1.running_mean"])
    assert calibrate_runs.main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
def test_bn_reestimation_measures_only_the_methods_asked_for_and_keeps_the_other_rows(tmp_path):
    """Measuring one method's runs must not drop the rows another method's runs already have in the file."""
    script = load_experiment("bn_reestimation")
    assert run_all.main(["--preset", "smoke", "--out", str(tmp_path), "-q", "--bn-batches", "0",
                         "--methods", "float,self_compression", "--grid", "self_compression.gamma=0.3"]) == 0
    both, n = script.measure(tmp_path, None, ["float", "self_compression"], n_batches=2)
    assert n == 2 and sorted(both.method) == ["float", "self_compression"]
    assert (both.accuracy_decoded == both.accuracy).all()  # the decoded file scores what the run recorded
    again, n = script.measure(tmp_path, None, ["float"], n_batches=2, old=both)
    assert n == 0 and again.equals(both)  # nothing new to measure, and self-compression's row is kept
    other, n = script.measure(tmp_path, None, ["float"], n_batches=3, old=both)  # another number of batches
    assert n == 1 and sorted(other.method) == ["float", "self_compression"]
    assert other[other.method == "self_compression"].bn_batches.tolist() == [2]
