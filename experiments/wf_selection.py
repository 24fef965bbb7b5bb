"""Weight fixing's two selections side by side, without retraining: the ten fixing rounds of
``methods.weight_fixing`` run on one flat tensor of weights (random, or a stored model's), per selection,
tolerance, centre construction, tolerance schedule and highest order. What the selection alone does to the
weights (time, how many went to the fallback, distinct values, entropy, mean relative error) is what chose
``by_capacity`` as the default and sized the tolerances (docs/methods.md). Prints Markdown; nothing is written.

    python experiments/wf_selection.py --n 6500000
    python experiments/wf_selection.py --packed results/cpu/runs/3474e9a974cd/model.packed --delta 0.005 0.02
"""
from __future__ import annotations

import logging
import sys
import time

import pandas as pd
import torch

from benchmarks.accounting import packing
from benchmarks.accounting.size import entropy
from benchmarks.argparsing import Parser
from benchmarks.compressed import decode_layer
from methods.wf_centres import CONSTRUCTIONS, DEFAULT_GRID, K_MIN, CentreGrid, top_exponent
from methods.wf_cluster import DELTA_SCHEDULES, SELECTIONS, SHARES, delta_at, select


def fixing_rounds(w: torch.Tensor, delta: float, selection: str, max_order: int = 3,
                  schedule: str = "paper", grid: CentreGrid = DEFAULT_GRID) -> dict[str, float]:
    """The ten fixing rounds of ``weight_fixing`` on the flat weights ``w`` without retraining: what the
    selection alone does (time, fallback, distinct values, entropy, mean relative error of the fixed values)."""
    n, dev = w.numel(), w.device
    k_max = top_exponent(float(w.abs().max()))  # as the method sets it
    unfixed = torch.arange(n, device=dev)
    value = torch.zeros_like(w)
    order, fixed, seconds, fallback = 0, 0, 0.0, 0
    for t, share in enumerate(SHARES, start=1):
        d = delta_at(delta, t, len(SHARES), schedule)
        need = round(share * n) - fixed
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sel = select(selection, w[unfixed], need, d, order, max_order, k_max, grid)
        value[unfixed[sel.index]] = sel.value
        keep = torch.ones(len(unfixed), dtype=torch.bool, device=dev)
        keep[sel.index] = False
        unfixed = unfixed[keep]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        order, fixed, fallback = sel.order, fixed + need, fallback + int(sel.fallback.sum())
    big = value != 0
    rel = ((w[big] - value[big]).abs() / w[big].abs()).double().mean() if bool(big.any()) else torch.zeros(())
    return {"seconds": seconds, "fallback": fallback, "unique_values": int(torch.unique(value).numel()),
            "entropy_bits": entropy(value), "zero_pct": 100.0 * float((~big).float().mean()),
            "mean_rel_error": float(rel)}


def main(argv: list[str] | None = None) -> int:
    """The selections side by side on random or stored weights."""
    ap = Parser(prog="python experiments/wf_selection.py",
                                 description="The ten fixing rounds of weight fixing without retraining, per "
                                             "selection: time, fallback, distinct values, entropy, relative error.")
    ap.add_argument("--packed", help="cluster the weights of this model.packed (e.g. a float run's); "
                                     "default: --n random N(0, 0.02) weights")
    ap.add_argument("--n", type=int, default=6_500_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--delta", type=float, nargs="+", default=[0.01])
    ap.add_argument("--selection", choices=list(SELECTIONS), nargs="+", default=list(SELECTIONS))
    ap.add_argument("--k-min", type=int, nargs="+", default=[K_MIN],
                    help=f"zero threshold and smallest leading power 2^k_min of the centres (default {K_MIN}; "
                         "the authors' CIFAR scripts: -12)")
    ap.add_argument("--construction", choices=list(CONSTRUCTIONS), nargs="+", default=["nearest"],
                    help="candidate centres: this suite's (nearest) or the authors' greedy construction")
    ap.add_argument("--schedule", choices=DELTA_SCHEDULES, nargs="+", default=["paper"],
                    help="how the tolerance delta moves over the rounds (default: paper)")
    ap.add_argument("--max-order", type=int, nargs="+", default=[3],
                    help="most powers of two a centre may sum before the fallback fixes the rest (default 3)")
    a = ap.parse_args(argv)
    if a.packed:
        try:
            cm, _ = packing.read_file(a.packed)
        except (OSError, packing.PackedFileError) as e:
            print(f"error: cannot read {a.packed}: {e}", file=sys.stderr)
            return 2
        w = torch.cat([decode_layer(layer, cm.codebook).reshape(-1) for layer in cm.layers]).float()
    else:
        w = torch.randn(a.n, generator=torch.Generator().manual_seed(0)) * 0.02
    w = w.to(a.device)
    rows = [{"delta": d, "selection": s, "k_min": k, "construction": c, "schedule": sch, "max_order": m,
             **fixing_rounds(w, d, s, max_order=m, schedule=sch, grid=CentreGrid(k, c))}
            for d in a.delta for s in a.selection for k in a.k_min for c in a.construction
            for sch in a.schedule for m in a.max_order]
    print(f"{w.numel()} weights ({a.packed or 'random N(0, 0.02)'}), on {a.device}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.exit(main())
