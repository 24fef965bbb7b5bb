"""The fixing rounds of weight fixing on one flat tensor of weights: the threshold schedule, each weight's
nearest centre, and the greedy selections of one round (see ``methods.weight_fixing``; the centres and the
regulariser are ``methods.wf_centres``).

Everything here is vectorised over the weights and runs on their device. The selection never builds a
weights × centres matrix (nearest centres come from ``bucketize`` on the midpoints between the sorted
centres, group sizes from one sort and a segmented cumulative mean), so millions of weights cluster in
seconds. ``python experiments/wf_selection.py`` runs the ten fixing rounds of each selection on random or
stored weights, side by side.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from methods.wf_centres import DEFAULT_GRID, GAMMA0, CentreGrid, centres

log = logging.getLogger(__name__)


# --- rounds --------------------------------------------------------------------------------------------

DELTA_SCHEDULES = ("paper", "9to1")
#: cumulative share of the flat weight vector fixed after each of weight fixing's rounds
SHARES = (0.3, 0.6, 0.8, 0.9, 0.95, 0.975, 0.99, 0.9975, 0.999, 1.0)


def delta_at(delta: float, t: int, rounds: int, schedule: str = "paper") -> float:
    """The threshold of round t (1-based), loose early, delta at the end: the paper's delta (T - t + 1)
    (10δ … δ over ten rounds), or this suite's first version, max(delta, delta (T - t)) (9δ … δ, δ)."""
    if schedule == "paper":
        return delta * (rounds - t + 1)
    return max(delta, delta * (rounds - t))


# --- selection -----------------------------------------------------------------------------------------

def nearest(w: torch.Tensor, c: torch.Tensor, gamma0: float = GAMMA0) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each weight's centre and its relative distance |w - c| / |w| (float64), in O(N log C).

    Weights with |w| < gamma_0 belong to the zero centre, whatever is nearest; their distance is reported
    as |w| / gamma_0 (in [0, 1): the order in which zero takes them, smallest first)."""
    mids = (c[1:] + c[:-1]) / 2
    j = torch.bucketize(w, mids)
    small = w.abs() < gamma0
    zero = int(torch.searchsorted(c, torch.zeros((), dtype=c.dtype, device=c.device)))
    j = torch.where(small, torch.full_like(j, zero), j)
    wd = w.double()
    rel = torch.where(small, wd.abs() / gamma0, (wd - c.double()[j]).abs() / wd.abs().clamp(min=gamma0))
    return j, rel


def group_prefixes(j: torch.Tensor, rel: torch.Tensor, delta: float, zero: int,
                   n_centres: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every centre, how many of its nearest weights it can fix: the longest run, by increasing relative
    distance, whose mean stays <= delta (every weight for the zero centre).

    Returns (perm, rank, capacity): ``perm`` orders the weights by (centre, distance), ``rank`` is each
    sorted weight's position within its centre's group and ``capacity`` the prefix length per centre.
    """
    # one sort on (centre, distance): distances of nearest centres are < 1 (clamped here for safety)
    perm = torch.argsort(j.double() * 4 + rel.clamp(max=3.5))
    js, rs = j[perm], rel[perm]
    counts = torch.bincount(js, minlength=n_centres)
    starts = torch.cumsum(counts, 0) - counts
    first = starts[js]
    rank = torch.arange(len(js), device=js.device) - first
    csum = torch.cumsum(rs, 0)
    seg = csum - (csum - rs)[first]  # sum of the group's distances up to and including this weight
    ok = (seg / (rank + 1) <= delta) | (js == zero)
    capacity = torch.bincount(js[ok], minlength=n_centres)
    return perm, rank, capacity


@dataclass
class Selection:
    """What one fixing round fixes, as positions into the flat vector it was given."""

    index: torch.Tensor  # int64 positions of the weights fixed this round
    value: torch.Tensor  # their centre values (dtype of the weights)
    fallback: torch.Tensor  # bool per fixed weight: fixed to its nearest centre regardless of delta
    order: int  # the order in effect after the round


def select_by_capacity(w: torch.Tensor, need: int, delta: float, order: int, max_order: int,
                       k_max: int = 0, grid: CentreGrid = DEFAULT_GRID) -> Selection:
    """Fix exactly ``need`` of the weights ``w`` (flat, all unfixed) at threshold ``delta``, every centre's
    group in one pass (this suite's first version; ``select_one_at_a_time`` is the authors' greedy).

    Each weight belongs to its nearest centre; a centre can take the longest run of its weights, by
    increasing relative distance, whose mean relative distance stays <= delta (``group_prefixes``). Centres
    take their groups largest first until ``need`` is met (the last one its closest weights only). A
    centre's leftovers are all farther than delta, so it can take nothing more at this order: when all
    groups are taken and weights are still needed, the order rises (new centres split the leftovers up);
    past ``max_order`` the closest remaining weights are fixed to their nearest centre (the fallback),
    so that the round's share is met exactly.
    """
    n = w.numel()
    if not 0 <= need <= n:
        raise ValueError(f"cannot fix {need} of {n} weights")
    dev = w.device
    free = torch.ones(n, dtype=torch.bool, device=dev)
    idx_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    fb_parts: list[torch.Tensor] = []
    while need > 0:
        c = centres(order, delta, k_max, dev, w.dtype, grid)
        pos = torch.nonzero(free).squeeze(1)
        j, rel = nearest(w[pos], c, grid.gamma0)
        zero = int(torch.searchsorted(c, torch.zeros((), dtype=c.dtype, device=dev)))
        perm, rank, cap = group_prefixes(j, rel, delta, zero, len(c))
        if int(cap.sum()) == 0:
            if order < max_order:
                order += 1
                continue
            fixed, vals = _fallback(pos, j, rel, need, c)  # closest first, threshold ignored
            idx_parts.append(fixed)
            val_parts.append(vals)
            fb_parts.append(torch.ones(need, dtype=torch.bool, device=dev))
            log.debug("fallback: %d weights fixed beyond delta=%.4g at order %d", need, delta, order)
            break
        by_size = torch.argsort(cap, descending=True, stable=True)
        before = torch.cumsum(cap[by_size], 0) - cap[by_size]
        quota = torch.zeros_like(cap)
        quota[by_size] = (need - before).clamp(min=0).minimum(cap[by_size])
        chosen = perm[rank < quota[j[perm]]]
        idx_parts.append(pos[chosen])
        val_parts.append(c[j[chosen]])
        fb_parts.append(torch.zeros(len(chosen), dtype=torch.bool, device=dev))
        free[pos[chosen]] = False
        need -= len(chosen)
        if need > 0 and order < max_order:
            order += 1  # every group is taken; what a centre left is farther than delta from it
    if not idx_parts:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return Selection(empty, w.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=dev), order)
    return Selection(torch.cat(idx_parts), torch.cat(val_parts), torch.cat(fb_parts), order)


def _fallback(pos: torch.Tensor, j: torch.Tensor, rel: torch.Tensor, need: int,
              c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the weights at ``pos`` (with ``nearest``'s centre ``j`` and distance ``rel``), the ``need`` closest
    to their nearest centre, and those centres: past ``max_order`` the round's share is met whatever the
    distance."""
    take = torch.argsort(rel, stable=True)[:need]
    return pos[take], c[j[take]]


def _prefix_within(rel_sorted: torch.Tensor, delta: float) -> int:
    """How many of the ascending distances form the longest run from the start whose mean is <= delta (the
    running mean of an ascending sequence never falls, so it is a count)."""
    run = torch.cumsum(rel_sorted, 0) / torch.arange(1, len(rel_sorted) + 1, device=rel_sorted.device)
    return int((run <= delta).sum())


def select_one_at_a_time(w: torch.Tensor, need: int, delta: float, order: int, max_order: int,
                         k_max: int = 0, grid: CentreGrid = DEFAULT_GRID) -> Selection:
    """Fix exactly ``need`` of the weights ``w`` (flat, all unfixed) one centre at a time, as the authors'
    code does: the centre nearest to the most unfixed weights takes, from all unfixed weights of its sign,
    the longest run by increasing |w - c| / |w| whose mean stays <= delta (capped at what is still needed);
    the counts are taken again without those weights, and so on. When the most popular centre can take
    nothing, the order rises (new centres split its group); past ``max_order`` the closest remaining weights
    go to their nearest centre (the fallback). Weights with |w| < gamma_0 belong to the zero centre, and
    only they.

    Vectorised: the weights are sorted once; the nearest-centre counts are updated by what each step fixes;
    a centre's candidates by increasing relative distance are the sorted weights inside
    [c / (1 + R), c / (1 - R)] (for c > 0), a window widened until the run ends inside it. A step thus
    costs O(window + C), not O(N), and a million weights cluster in a few seconds.
    """
    n = w.numel()
    if not 0 <= need <= n:
        raise ValueError(f"cannot fix {need} of {n} weights")
    dev = w.device
    ws, perm = torch.sort(w)
    free = torch.ones(n, dtype=torch.bool, device=dev)  # over sorted positions
    small = ws.abs() < grid.gamma0
    idx_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    fb_parts: list[torch.Tensor] = []
    c = centres(order, delta, k_max, dev, w.dtype, grid)
    j, _ = nearest(ws, c, grid.gamma0)
    counts = torch.bincount(j, minlength=len(c))
    while need > 0:
        a = int(torch.argmax(counts))
        v = float(c[a])
        if v == 0:  # the zero centre takes tiny weights only, smallest first
            cand = torch.nonzero(free & small).squeeze(1)
            take = cand[torch.argsort(ws[cand].abs(), stable=True)[:need]]
        else:
            take = _run_of(ws, free & ~small, v, delta, need)
        if len(take) == 0:
            if order < max_order:
                order += 1
                c = centres(order, delta, k_max, dev, w.dtype, grid)
                j, _ = nearest(ws, c, grid.gamma0)
                counts = torch.bincount(j[free], minlength=len(c))
                continue
            left = torch.nonzero(free).squeeze(1)
            pos, vals = _fallback(left, *nearest(ws[left], c, grid.gamma0), need, c)
            idx_parts.append(perm[pos])
            val_parts.append(vals)
            fb_parts.append(torch.ones(need, dtype=torch.bool, device=dev))
            log.debug("fallback: %d weights fixed beyond delta=%.4g at order %d", need, delta, order)
            break
        free[take] = False
        counts -= torch.bincount(j[take], minlength=len(c))
        idx_parts.append(perm[take])
        val_parts.append(torch.full((len(take),), v, dtype=w.dtype, device=dev))
        fb_parts.append(torch.zeros(len(take), dtype=torch.bool, device=dev))
        need -= len(take)
    if not idx_parts:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return Selection(empty, w.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=dev), order)
    return Selection(torch.cat(idx_parts), torch.cat(val_parts), torch.cat(fb_parts), order)


def _run_of(ws: torch.Tensor, eligible: torch.Tensor, v: float, delta: float, need: int) -> torch.Tensor:
    """Sorted positions of the eligible weights (``ws`` ascending) that the nonzero centre ``v`` takes: its
    longest run by increasing relative distance with mean <= delta, at most ``need``, only weights of its sign."""
    r = min(0.5, 2 * delta)
    while True:
        if r < 1:  # |w - v| <= r |w| with w of v's sign: w between v / (1 + r) and v / (1 - r)
            lo_v, hi_v = sorted((v / (1 + r), v / (1 - r)))
            lo = int(torch.searchsorted(ws, torch.tensor(lo_v, dtype=ws.dtype, device=ws.device)))
            hi = int(torch.searchsorted(ws, torch.tensor(hi_v, dtype=ws.dtype, device=ws.device), right=True))
        else:  # every weight of v's sign
            zero = int(torch.searchsorted(ws, torch.zeros((), dtype=ws.dtype, device=ws.device)))
            lo, hi = (zero, len(ws)) if v > 0 else (0, zero)
        pos = lo + torch.nonzero(eligible[lo:hi]).squeeze(1)
        wd = ws[pos].double()
        rel = (wd - v).abs() / wd.abs()
        rel, order = torch.sort(rel, stable=True)
        k = _prefix_within(rel, delta)
        if k < len(pos) or r >= 1:  # the run ended inside the window (or the window is everything)
            return pos[order[:min(k, need)]]
        r = 1.0 if r >= 0.5 else min(0.5, 2 * r)


#: the selections a round can use, by their ``weight_fixing.selection`` name
SELECTIONS = {"one_at_a_time": select_one_at_a_time, "by_capacity": select_by_capacity}


def select(selection: str, w: torch.Tensor, need: int, delta: float, order: int, max_order: int,
           k_max: int = 0, grid: CentreGrid = DEFAULT_GRID) -> Selection:
    """One round of ``selection``, given the order the previous round ended at: the authors' greedy starts
    every round again at order 0, the first version goes on from ``order``."""
    start = 0 if selection == "one_at_a_time" else order
    return SELECTIONS[selection](w, need, delta, start, max_order, k_max, grid)
