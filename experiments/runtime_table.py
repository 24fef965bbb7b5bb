"""Does compression pay at run time? Each grid point's measured speed-up over its float net in PyTorch eager
and in onnxruntime, beside the weights and multiply-accumulates it keeps.

Per curve (a method, or one of its variants) and knob value, means ± std over seeds of: weights remaining and
MACs remaining (``speed.csv``), and the speed-up at batch 256 (throughput) and batch 1 (latency) over the
float net, as ``python -m benchmarks.timing.speed OUT`` measured it in PyTorch (``speed.csv``, CPU rows) and
``... --runtime onnxruntime`` in onnxruntime's CPU provider (``speed_onnxruntime.csv``, every run's
``model.onnx`` from ``python -m benchmarks.export OUT``). Each speed-up is a ratio measured side by side in one
process, interleaved with the float net; the host and date each file was measured on are printed under the
table. Prints Markdown; nothing is written.

    python experiments/runtime_table.py results/cpu
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from benchmarks.argparsing import Parser
from benchmarks.harness.rundir import missing_runs
from benchmarks.report.runs import REFERENCES, curve_label, load
from benchmarks.report.tables import plus_minus

RUNTIMES = {"PyTorch": "speed.csv", "onnxruntime": "speed_onnxruntime.csv"}
SPEEDS = {"infer_speedup": "batch 256", "latency_speedup_b1": "batch 1"}


def read_timings(out: Path) -> dict[str, pd.DataFrame]:
    """Per runtime, its CPU timing rows (``run_id`` and the speed-ups), for the files ``out`` has."""
    found = {}
    for runtime, name in RUNTIMES.items():
        f = out / name
        if f.is_file():
            rows = pd.read_csv(f)
            found[runtime] = rows[rows.device == "cpu"] if "device" in rows else rows
    return found


def runtime_table(runs_table: pd.DataFrame, timings: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per grid point with a timing in every runtime given (finished runs only)."""
    ok = runs_table[runs_table.status == "ok"].drop(columns=["macs_remaining_pct", "infer_speedup"])
    macs = timings.get("PyTorch", pd.DataFrame(columns=["run_id", "macs_remaining_pct"]))
    ok = ok.merge(macs[["run_id", "macs_remaining_pct"]], on="run_id", how="left")
    for runtime, rows in timings.items():
        keep = rows[["run_id", *SPEEDS]].rename(columns={k: f"{runtime}: {k}" for k in SPEEDS})
        ok = ok.merge(keep, on="run_id", how="inner")
    rows = []
    for (method, params, model), g in ok.groupby(["method", "params", "model"], sort=True):
        knob = g.knob.dropna().iloc[0] if g.knob.notna().any() else None
        row = {"method": curve_label(method, json.loads(params), knob, ok[ok.method == method].params),
               "setting": f"{knob}={json.loads(params)[knob]}" if knob else "—", "model": model, "seeds": len(g),
               "weights remaining %": plus_minus(g.weights_remaining_pct.mean(), g.weights_remaining_pct.std(), 1),
               "MACs remaining %": plus_minus(g.macs_remaining_pct.mean(), g.macs_remaining_pct.std(), 1)}
        for runtime in timings:
            for key, batch in SPEEDS.items():
                col = g[f"{runtime}: {key}"]
                row[f"{runtime} speed-up, {batch}"] = plus_minus(col.mean(), col.std(), 2)
        row["order"] = (method not in REFERENCES, model, method, -g.weights_remaining_pct.mean())
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)


def provenance(timings: dict[str, pd.DataFrame]) -> list[str]:
    """One line per runtime: when, on which CPU, with which library version it was measured."""
    lines = []
    for runtime, rows in timings.items():
        where = ", ".join(sorted(set(rows.cpu_model.astype(str)))) if "cpu_model" in rows else "host not recorded"
        version = {"PyTorch": "torch", "onnxruntime": "onnxruntime"}[runtime]
        versions = ", ".join(sorted(set(rows[version].astype(str)))) if version in rows else "?"
        lines.append(f"- {runtime} ({RUNTIMES[runtime]}): measured {', '.join(sorted(set(rows.measured.astype(str))))} "
                     f"on {where}, {version} {versions}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results/cpu", help="results folder (default: %(default)s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (error := missing_runs(out)) is not None:
        print(error, file=sys.stderr)
        return 2
    timings = read_timings(out)
    if not timings:
        print(f"error: {out} has no timings; run python -m benchmarks.timing.speed {out} (and, after python -m "
              f"benchmarks.export {out}, with --runtime onnxruntime)", file=sys.stderr)
        return 2
    table = runtime_table(load(out).table, timings)
    if table.empty:
        print(f"error: no finished run of {out} has a timing in every runtime measured", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    print()
    print("\n".join(provenance(timings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
