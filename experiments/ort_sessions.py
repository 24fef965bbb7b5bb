"""What makes a compressed model fast in onnxruntime: the exported file's 8-bit weights, or the same network
with float32 weights, timed against the float net.

``benchmarks.export`` stores 8-bit codes with ``DequantizeLinear`` (self-compression) or with
``Cast``/``Gather``/``Mul`` (weight fixing, DiffQ), so that the file is small. onnxruntime folds constant
subgraphs into float initializers when it builds a session, but by default it keeps ``DequantizeLinear``
nodes for its QDQ fusions; such a weight is then recomputed on every call and cannot be fused with
BatchNorm or pre-packed for the convolution. For chosen finished runs of a results folder this times, against
the float run's ``model.onnx`` in the default session (interleaved, median of rounds; batch 256 throughput and
batch 1 latency): the exported file in the default session, the same file with the QDQ rewrites off
(``session.disable_quant_qdq``, as ``benchmarks.export`` checks it), and the same network exported with
float32 weights (``to_onnx(cm, eight_bit=False)``). Prints Markdown; nothing is written. Time nothing else
meanwhile.

    python experiments/ort_sessions.py results/cpu            # seed 0 of each method's default curve
    python experiments/ort_sessions.py results/cpu --runs ID ID --repeats 5
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from benchmarks.accounting import packing
from benchmarks.argparsing import Parser
from benchmarks.device import host
from benchmarks.export import MissingExtra, session, to_onnx
from benchmarks.harness.rundir import missing_runs
from benchmarks.report.runs import curve_labels, load
from benchmarks.timing.speed import BATCHES, _ort_seconds

FORMS = {"exported, default session": "default", "exported, QDQ rewrites off": "exact",
         "float32 weights, default session": "float32"}


def sessions(folder: Path) -> dict[str, object]:
    """The three forms of one run's network, as onnxruntime sessions."""
    data = (folder / "model.onnx").read_bytes()
    plain, _ = to_onnx(packing.load(folder / "model.packed"), eight_bit=False)
    return {"default": session(data, exact=False), "exact": session(data), "float32": session(plain, exact=False)}


def measure(out: Path, run_ids: list[str], repeats: int, min_seconds: float) -> pd.DataFrame:
    """One row per (run, form): speed-ups over the float run at both batch sizes."""
    runs = load(out)
    table = runs.table.set_index("run_id")
    floats = [i for i in table.index if table.loc[i, "method"] == "float" and table.loc[i, "status"] == "ok"]
    if not floats:
        raise ValueError(f"{out} has no finished float run to time against")
    ref = session((out / "runs" / floats[0] / "model.onnx").read_bytes(), exact=False)
    forms = {i: sessions(out / "runs" / i) for i in run_ids}
    xs = {b: np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32) for b in BATCHES}
    times: dict[tuple, list[float]] = {}
    for r in tqdm(range(repeats), desc="onnxruntime forms", disable=None):
        for i in run_ids:
            for form, s in forms[i].items():
                for b in BATCHES:
                    pair = [(("float", i, form, b), ref), ((i, form, b), s)]
                    for key, sess in pair if r % 2 == 0 else pair[::-1]:
                        times.setdefault(key, []).append(_ort_seconds(sess, xs[b], min_seconds))
    labels = curve_labels(runs.table[runs.table.status == "ok"])
    rows = []
    for i in run_ids:
        row = table.loc[i]
        params = json.loads(row.params)
        knob = f"{row.knob}={params[row.knob]}" if isinstance(row.knob, str) else "—"
        out_row = {"method": labels[row.series], "setting": knob, "seed": row.seed,
                   "weights remaining %": round(row.weights_remaining_pct, 1)}
        for title, form in FORMS.items():
            for b in BATCHES:
                speedup = statistics.median(times[("float", i, form, b)]) / statistics.median(times[(i, form, b)])
                out_row[f"{title}, batch {b}"] = round(speedup, 2)
        rows.append(out_row)
    return pd.DataFrame(rows)


def seed0_points(out: Path) -> list[str]:
    """Seed 0's finished run of every grid point on each method's default curve (the one its name alone
    labels; the float model and controls aside)."""
    t = load(out).table
    t = t[t.status == "ok"]
    labels = curve_labels(t)
    t = t[(t.seed == 0) & ~t.method.isin(["float", "float_control"]) & (t.series.map(labels) == t.method)]
    return list(t.sort_values(["method", "weights_remaining_pct"]).run_id)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results/cpu", help="results folder (default: %(default)s)")
    ap.add_argument("--runs", nargs="+", metavar="ID", help="run ids (default: seed 0 of each method's default curve)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is kept (default 3)")
    ap.add_argument("--seconds", type=float, default=0.5, help="each timing lasts at least this long (default 0.5)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (error := missing_runs(out)) is not None:
        print(error, file=sys.stderr)
        return 2
    if args.repeats < 1 or not args.seconds > 0:
        print("error: --repeats must be at least 1 and --seconds above 0", file=sys.stderr)
        return 2
    run_ids = args.runs or seed0_points(out)
    missing = [i for i in run_ids if not (out / "runs" / i / "model.onnx").is_file()]
    if missing:
        print(f"error: run {missing[0]} has no model.onnx; run python -m benchmarks.export {out} first", file=sys.stderr)
        return 2
    try:
        table = measure(out, run_ids, args.repeats, args.seconds)
    except (MissingExtra, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    h = host("cpu")
    import onnxruntime
    print(f"\nSpeed-up over the float run's model.onnx (default session), median of {args.repeats} interleaved "
          f"rounds of ≥ {args.seconds} s; {h['cpu_model']}, {h['cpu_count']} cores, onnxruntime "
          f"{onnxruntime.__version__}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
