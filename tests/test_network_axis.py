"""The network is an axis: chosen on the command line, part of every run id and float-model key, and kept
apart in tables, figures and paired tables."""
from dataclasses import replace

import pandas as pd
import pytest

import run_all
from benchmarks.data import make_synthetic
from benchmarks.harness.grid import bind_data, expand
from benchmarks.harness.presets import get_preset
from benchmarks.models import ModelSpec, model_label, parse_model
from benchmarks.report.paired import paired
from benchmarks.report.runs import COLUMNS
from benchmarks.report.tables import near_float, summary
from benchmarks.float_cache import float_cache_path


@pytest.mark.parametrize("text, spec", [("resnet9x0.5", ModelSpec("resnet9", 0.5)),
                                        ("resnet9", ModelSpec("resnet9", 1.0)),
                                        ("resnet9x1", ModelSpec("resnet9", 1.0)),
                                        (" tinycnnx2 ", ModelSpec("tinycnn", 2.0))])
def test_model_names_parse_and_print_back(text, spec):
    assert parse_model(text) == spec
    assert parse_model(model_label(spec)) == spec


@pytest.mark.parametrize("text, message", [("vgg11", "unknown model 'vgg11'"), ("resnet9x0", "width must be in"),
                                           ("resnet9xhalf", "not a number"), ("resnet9x-1", "width must be in"),
                                           ("resnet9xnan", "width must be in")])
def test_bad_model_names_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model(text)


def test_bad_model_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    assert run_all.main(["--preset", "smoke", "--model", "resnet9x9", "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width must be in" in err[0]


def _specs(width: float) -> list:
    preset = replace(get_preset("cpu"), model=ModelSpec("resnet9", width))
    specs = expand(preset, ["float", "float_control", "self_compression"], [0, 1], {})
    return bind_data(specs, make_synthetic(n_train=64, n_test=32))


def test_two_widths_never_share_a_run_folder_or_a_float_model():
    quarter, half = _specs(0.25), _specs(0.5)
    assert {s.model.width for s in half} == {0.5}
    assert {s.run_id for s in quarter}.isdisjoint(s.run_id for s in half)
    key = {s.model.width: {float_cache_path("c", s.model, s.data_fingerprint, s.float_train) for s in specs}
           for specs in (quarter, half) for s in specs}
    assert key[0.25].isdisjoint(key[0.5]) and len(key[0.5]) == 2  # one float model per seed
    # everything else about the two grids is the same: only the width changes
    strip = lambda s: replace(s, model=ModelSpec())  # noqa: E731
    assert [strip(s) for s in quarter] == [strip(s) for s in half]


@pytest.mark.slow
def test_model_flag_reaches_the_run_folders(tmp_path):
    assert run_all.main(["--preset", "smoke", "--methods", "float", "--model", "tinycnnx0.5", "--out",
                         str(tmp_path), "-q"]) == 0
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.model) == ["tinycnnx0.5"]


def _run(method, params, seed, model, acc, bits, weights, control=None):
    return {"run_id": f"{method}{params}{seed}{model}", "method": method, "series": method, "knob": None,
            "params": params, "seed": seed, "model": model, "precision": "fp32", "dataset": "cifar10",
            "data_fingerprint": "d", "epochs": 8, "accuracy": acc, "accuracy_before_calibration": acc,
            "bn_batches": 20, "bits_remaining_pct": bits, "coded_bits_pct": bits, "weights_remaining_pct": weights,
            "unique_values": 1, "code_entropy_bits": 1.0, "value_entropy_per_weight": 1.0,
            "value_entropy_per_weight_nonzero": 1.0, "packed_bytes": 1, "macs_remaining_pct": None,
            "infer_speedup": None, "control_accuracy": control, "vs_control": None if control is None else acc - control,
            "float_epochs": 14, "method_epochs": 8, "collapsed_layers": "", "status": "ok"}


def test_tables_and_paired_tables_keep_networks_apart():
    rows = []
    for model, base, drop in (("resnet9x0.25", 87.0, 2.0), ("resnet9x0.5", 90.0, 0.5)):
        for seed in (0, 1):
            rows += [_run("float", "{}", seed, model, base, 100, 100),
                     _run("self_compression", '{"gamma": 0.1}', seed, model, base - drop, 3, 30, base),
                     _run("self_compression", '{"gamma": 0.01}', seed, model, base - drop / 4, 10, 80, base),
                     _run("diffq", '{"lam": 0.1}', seed, model, base - 1, 5, 100, base)]
    df = pd.DataFrame(rows, columns=COLUMNS)  # a run table (runs.load) with what this test does not need empty
    s = summary(df)
    assert len(s[s.method == "self_compression"]) == 4  # two points on each of two nets, never averaged
    near = near_float(s, 1.0)
    sc = near[near.method == "self_compression"].set_index("model")
    assert sc.loc["resnet9x0.25", "fewest bits %"] == 10 and sc.loc["resnet9x0.5", "fewest bits %"] == 3
    pairs = paired(df)
    assert set(pairs.model) == {"resnet9x0.25", "resnet9x0.5"}
    assert (pairs.groupby("model")["a − b (points)"].count() > 0).all()
