"""benchmarks.timing.speed: one row per finished run, positive timings, MACs equal to a direct count."""
import pandas as pd
import pytest
import torch

import run_all
from benchmarks.accounting import packing
from benchmarks.compressed import to_module
from benchmarks.models import ModelSpec, build_model, topology
from benchmarks.timing import speed
from benchmarks.topology import prune_


def test_macs_hand_count_of_tinycnn_and_a_pruned_copy():
    model = build_model(ModelSpec("tinycnn"))
    shapes = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    x, expected = torch.zeros(1, 3, 32, 32), 0

    def hook(m, i, o):
        nonlocal expected
        expected += (o.shape[2] * o.shape[3] * m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                     if isinstance(m, torch.nn.Conv2d) else m.in_features * m.out_features)
    handles = [m.register_forward_hook(hook) for m in shapes]
    model.eval()(x)
    for h in handles:
        h.remove()
    assert speed.count_macs(model) == expected > 0
    topo = topology(model)
    space = topo.spaces[0]
    channels = dict(model.named_modules())[topo.producers(space)[0].name].weight.shape[0]
    prune_(model, topo, {space: torch.arange(channels) < 2})  # two channels go, with their consumers' inputs
    assert speed.count_macs(model) < expected


@pytest.mark.slow
def test_speed_on_the_smoke_grid(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_all.main(["--preset", "smoke", "--out", str(out), "-q", "--methods", "float,self_compression",
                         "--grid", "self_compression.gamma=0.3"]) == 0
    assert speed.main([str(out), "--repeats", "1", "--seconds", "0.05"]) == 0
    df = pd.read_csv(out / "speed.csv")
    assert len(df) == 2 and set(df.device) == {"cpu"}
    assert df.cpu_model.notna().all() and (df.cpu_count > 0).all()  # the host every timing holds for
    assert (df[["latency_ms_b1", "float_latency_ms_b1", "throughput_b256", "float_throughput_b256"]] > 0).all().all()
    for _, row in df.iterrows():
        decoded = to_module(packing.load(out / "runs" / row.run_id / "model.packed"))
        assert row.macs == speed.count_macs(decoded)
    assert df.set_index("method").macs_remaining_pct["float"] == 100.0
    assert df.set_index("method").macs_remaining_pct["self_compression"] < 100.0
    results = pd.read_csv(out / "results.csv")
    assert results.infer_speedup.notna().all() and (results.macs > 0).all()
    assert (out / "figures" / "accuracy_vs_speedup.png").is_file()
    assert speed.main([str(tmp_path / "nowhere")]) == 2


def test_runtime_table_reads_both_runtimes_per_grid_point(tmp_path):
    """Two seeds of one self-compression point and a float run: each runtime's speed-ups as mean ± std over
    the seeds, the MACs from speed.csv, and the host and date of each file under the table."""
    import pandas as pd
    from conftest import load_experiment, stored_result

    table = load_experiment("runtime_table")
    runs = {"f": ("float", {}, None, 100.0), "a": ("self_compression", {"gamma": 0.1}, "gamma", 30.0),
            "b": ("self_compression", {"gamma": 0.1}, "gamma", 34.0)}
    for i, (run_id, (method, params, knob, weights)) in enumerate(runs.items()):
        stored_result(tmp_path, run_id, method, params, size={"weights_remaining_pct": weights},
                      spec={"seed": i}, knob=knob)
    common = {"device": "cpu", "measured": "2026-12-02", "cpu_model": "some CPU"}
    pd.DataFrame([{"run_id": r, "macs_remaining_pct": m, "infer_speedup": s, "latency_speedup_b1": 1.0, "torch": "t",
                   **common} for r, m, s in (("f", 100, 1.0), ("a", 70, 1.2), ("b", 80, 1.4))]
                 ).to_csv(tmp_path / "speed.csv", index=False)
    pd.DataFrame([{"run_id": r, "infer_speedup": s, "latency_speedup_b1": s, "onnxruntime": "o", **common}
                  for r, s in (("f", 1.0), ("a", 2.0), ("b", 3.0))]).to_csv(tmp_path / "speed_onnxruntime.csv",
                                                                            index=False)
    t = table.runtime_table(__import__("benchmarks.report.runs", fromlist=["load"]).load(tmp_path).table,
                            table.read_timings(tmp_path)).set_index("method")
    sc = t.loc["self_compression"]
    assert (sc.seeds, sc["weights remaining %"], sc["MACs remaining %"]) == (2, "32.0 ± 2.8", "75.0 ± 7.1")
    assert sc["PyTorch speed-up, batch 256"] == "1.30 ± 0.14" and sc["onnxruntime speed-up, batch 1"] == "2.50 ± 0.71"
    assert t.loc["float", "onnxruntime speed-up, batch 256"] == "1.00"
    lines = table.provenance(table.read_timings(tmp_path))
    assert lines == ["- PyTorch (speed.csv): measured 2026-12-02 on some CPU, torch t",
                     "- onnxruntime (speed_onnxruntime.csv): measured 2026-12-02 on some CPU, onnxruntime o"]
