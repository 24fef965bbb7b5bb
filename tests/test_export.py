"""ONNX export of the decoded network: every built-in method on the smoke net, round trip equal within fp32,
8-bit initializers where codes fit, removed channels absent from the graph, one line when the extra is missing."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import run_all
from benchmarks import export
from benchmarks.accounting import packing
from benchmarks.compressed import dead_outputs, to_module
from benchmarks.data import make_synthetic

onnx = pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parents[1]
GRID = ["--methods", "float,self_compression,diffq,weight_fixing", "--grid", "self_compression.gamma=0.3",
        "--grid", "diffq.lam=1.0", "--grid", "weight_fixing.delta=0.05"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert run_all.main(["--preset", "smoke", "--out", str(out), "-q", *GRID]) == 0
    return out


def _by_method(out: Path) -> dict[str, Path]:
    import json
    return {json.loads((d / "result.json").read_text())["spec"]["method"]: d for d in (out / "runs").iterdir()}


@pytest.mark.slow
def test_every_builtin_method_exports_equal_within_fp32_and_small(smoke):
    split = make_synthetic().test
    assert export.main([str(smoke)]) == 0
    rows = {r.method: r for r in __import__("pandas").read_csv(smoke / "onnx.csv").itertuples()}
    assert set(rows) == {"float", "self_compression", "diffq", "weight_fixing"}
    for method, folder in _by_method(smoke).items():
        cm = packing.load(folder / "model.packed")
        data = (folder / "model.onnx").read_bytes()
        result = export.check(data, cm, split)
        assert result["max_logit_diff"] < 1e-3 and result["images_classified_differently"] == 0, method
        assert rows[method].onnx_accuracy == rows[method].run_accuracy  # the run's accuracy, to the image
        model = onnx.load_from_string(data)
        int8 = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
        plain, none = export.to_onnx(cm, eight_bit=False)  # the float32 form: no 8-bit initializer, same logits
        assert not none and export.check(plain, cm, split)["max_logit_diff"] < 1e-3
        if method == "float":
            assert not int8 and rows[method].int8_layers == 0
        else:  # every layer's codes fit 8 bits on the smoke net at these settings
            assert rows[method].int8_layers == len(cm.layers) and len(int8) >= len(cm.layers)
            assert rows[method].onnx_bytes < 0.75 * rows["float"].onnx_bytes  # DiffQ's groups: 1.5 bytes a weight
    from benchmarks.report.figures import build_all
    build_all(smoke)
    df = __import__("pandas").read_csv(smoke / "results.csv")
    assert df.onnx_bytes.notna().all() and "ONNX bytes" in (smoke / "tables.md").read_text()


@pytest.mark.slow
def test_an_interrupted_export_resumes_after_the_runs_it_finished(smoke, caplog):
    export.main([str(smoke)])
    rows = __import__("pandas").read_csv(smoke / "onnx.csv")
    gone = _by_method(smoke)["diffq"] / "model.onnx"
    gone.unlink()  # as a kill -9 before this run's file, or a rerun's roll-forward, leaves it
    stamps = {f: f.stat().st_mtime_ns for f in smoke.glob("runs/*/model.onnx")}
    with caplog.at_level("INFO", logger="benchmarks.export"):
        assert export.main([str(smoke)]) == 0
    assert f"{len(rows) - 1} of {len(rows)} runs already exported" in caplog.text
    assert gone.is_file() and all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # the rest untouched
    again = __import__("pandas").read_csv(smoke / "onnx.csv")
    assert sorted(again.run_id) == sorted(rows.run_id)
    # a model.packed newer than its model.onnx (a run trained again, same sizes) is exported anew
    packed = _by_method(smoke)["float"] / "model.packed"
    stale = packed.parent / "model.onnx"
    before = stale.stat().st_mtime_ns
    os.utime(packed, ns=(before + 10**9, before + 10**9))
    assert export.main([str(smoke)]) == 0
    assert stale.stat().st_mtime_ns > before


@pytest.mark.slow
def test_removed_channels_are_absent_from_the_graph(smoke):
    folder = _by_method(smoke)["self_compression"]
    cm = packing.load(folder / "model.packed")
    # γ = 0.3 on the smoke net removes channels, in training (a shrunk export) or at export (dead ones)
    assert any(layer.shape != layer.full_shape for layer in cm.layers) or any(
        bool(d.any()) for d in dead_outputs(cm).values())
    export.main([str(folder)])
    model = onnx.load(folder / "model.onnx")
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    module = to_module(cm)
    for layer in cm.layers:
        stored = shapes.get(f"{layer.name}.weight.q") or shapes.get(f"{layer.name}.weight")
        assert stored == tuple(module.state_dict()[f"{layer.name}.weight"].shape)
        assert stored[0] <= layer.full_shape[0]
    assert sum(np.prod(s) for n, s in shapes.items() if n.endswith(".weight.q")) < sum(
        np.prod(layer.full_shape) for layer in cm.layers)


def test_a_missing_extra_is_one_line_exit_2(tmp_path):
    code = "import sys; sys.modules['onnxruntime'] = None; from benchmarks.export import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "pip install 'scnn-bench[deploy]'" in p.stderr


def test_a_path_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert export.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a run folder nor a results folder" in err[0]


@pytest.mark.slow
def test_onnxruntime_speed_rows_and_figure(smoke, capsys):
    from benchmarks.timing import speed
    export.main([str(smoke)])
    assert speed.main([str(smoke), "--runtime", "onnxruntime", "--repeats", "1", "--seconds", "0.02"]) == 0
    df = __import__("pandas").read_csv(smoke / "speed_onnxruntime.csv")
    assert len(df) == 4 and set(df.runtime) == {"onnxruntime"}
    assert (df[["latency_ms_b1", "throughput_b256", "infer_speedup"]] > 0).all().all()
    assert (df.float_throughput_b256 > 0).all() and df.float_latency_ms_b1.nunique() == 1  # one yardstick
    from benchmarks.device import host
    assert set(df.cpu_model) == {host("cpu")["cpu_model"]}  # the host every timing holds for
    assert (smoke / "figures" / "accuracy_vs_speedup_by_runtime.png").is_file()
    (smoke / "runs" / df.run_id.iloc[0] / "model.onnx").unlink()
    capsys.readouterr()
    assert speed.main([str(smoke), "--runtime", "onnxruntime", "--repeats", "1"]) == 2
    assert "has no model.onnx; run python -m benchmarks.export" in capsys.readouterr().err
