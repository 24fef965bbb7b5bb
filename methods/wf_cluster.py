"""The clustering maths of weight fixing on one flat tensor of weights: candidate centres, the greedy
selection of one fixing round, and the softmin distance regulariser (see ``methods.weight_fixing``).

Everything here is vectorised over the weights and runs on their device. The selection never builds a
weights × centres matrix (nearest centres come from ``bucketize`` on the midpoints between the sorted
centres, group sizes from one sort and a segmented cumulative mean), so millions of weights cluster in
seconds; the regulariser, which does need every (weight, centre) distance, walks the weights in chunks and
keeps only one derivative per weight for the backward pass. ``python -m methods.wf_cluster`` runs the
ten fixing rounds of each selection on random or stored weights, side by side.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

K_MIN = -7  # smallest power of two of a centre: gamma_0 = 2^-7; smaller weights go to zero
GAMMA0 = 2.0 ** K_MIN
MANTISSA_DEPTH = 10  # further powers of two of a centre reach down to 2^-10 of its leading one
#: elements of the (weights × centres) block the regulariser holds at once (a few such blocks are alive):
#: on a CPU small enough to stay in cache (1 << 18 ran the cpu preset's regulariser in half the time of
#: 1 << 22 on a 2-core EPYC), on a GPU large enough to keep kernel launches few
REG_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}


# --- candidate centres ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CentreGrid:
    """Where the candidate centres come from. ``k_min``: the smallest leading power of two, gamma_0 = 2^k_min,
    below which weights go to zero and only there (this suite's -7; the authors' CIFAR scripts pass 2^-12).
    ``construction``: ``nearest`` (``centre_values``, this suite's) or ``authors`` (``authors_centre_values``).
    The method always uses the default; ``python -m methods.wf_cluster --k-min --construction`` measures what
    the other settings would select."""
    k_min: int = K_MIN
    construction: str = "nearest"

    def __post_init__(self) -> None:
        if self.construction not in CONSTRUCTIONS:
            raise ValueError(f"construction must be one of {', '.join(CONSTRUCTIONS)}, got {self.construction!r}")

    @property
    def gamma0(self) -> float:
        return 2.0 ** self.k_min

    def values(self, order: int, delta: float, k_max: int) -> tuple[float, ...]:
        return CONSTRUCTIONS[self.construction](order, delta, self.k_min, k_max)


@functools.lru_cache(maxsize=None)
def apot_magnitudes(terms: int, k_min: int = K_MIN, k_max: int = 0) -> tuple[float, ...]:
    """Sorted positive sums of at most ``terms`` distinct powers of two (additive powers of two) whose
    leading power 2^k has k_min <= k <= k_max: 2^k (1 + Σ_{i in S} 2^-i), S ⊆ {1..MANTISSA_DEPTH}, |S| < terms.

    Only the leading power is bounded below by gamma_0: the further terms may be smaller, otherwise the
    octave [2^-7, 2^-6) would hold no centre but 2^-7 at any order, while it holds many trained weights."""
    mantissas = {1.0 + math.fsum(2.0 ** -i for i in combo)
                 for m in range(terms) for combo in itertools.combinations(range(1, MANTISSA_DEPTH + 1), m)}
    return tuple(sorted(2.0 ** k * f for k in range(k_min, k_max + 1) for f in mantissas))


def geometric_grid(delta: float, k_min: int = K_MIN, k_max: int = 0) -> list[float]:
    """gamma_0 · r^i up to 2^k_max with r = (1 + delta) / (1 - delta): the spacing at which every magnitude
    in range lies within relative distance delta of a grid point (c / (1 - delta) = c r / (1 + delta))."""
    r = (1 + delta) / (1 - delta)
    n = math.floor(math.log(2.0 ** (k_max - k_min)) / math.log(r) + 1e-9)
    return [2.0 ** k_min * r ** i for i in range(n + 1)]


@functools.lru_cache(maxsize=256)
def centre_values(order: int, delta: float, k_min: int = K_MIN, k_max: int = 0) -> tuple[float, ...]:
    """The sorted candidate centres of ``order`` for threshold ``delta``.

    Order 0: 0 and ±2^k for k_min <= k <= k_max (independent of delta). Order o >= 1: the centres of order
    o - 1 plus, for every point of the geometric grid of ``delta``, the sum of at most o + 1 powers of two
    nearest to it in log distance (ties to the smaller value). Raising the order thus only adds centres,
    placed where the grid asks for them, so a coarse delta adds few values and a fine one many.
    """
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if order == 0:
        mags = {2.0 ** k for k in range(k_min, k_max + 1)}
    else:
        mags = {abs(c) for c in centre_values(order - 1, delta, k_min, k_max)} - {0.0}
        apot = apot_magnitudes(order + 1, k_min, k_max)
        logs = torch.tensor(apot, dtype=torch.float64).log()
        grid = torch.tensor(geometric_grid(delta, k_min, k_max), dtype=torch.float64).log()
        hi = torch.searchsorted(logs, grid).clamp(max=len(apot) - 1)
        lo = (hi - 1).clamp(min=0)
        pick = torch.where((grid - logs[lo]) <= (logs[hi] - grid), lo, hi)
        mags |= {apot[i] for i in pick.tolist()}
    return tuple(sorted([-m for m in mags] + [0.0] + list(mags)))


@functools.lru_cache(maxsize=256)
def authors_centre_values(order: int, delta: float, k_min: int = K_MIN, k_max: int = 0) -> tuple[float, ...]:
    """The candidates of the authors' code (``create_possible_centroids``), for comparison: the geometric grid
    gamma_0 (1 - delta)^-i below 2^k_max, each point written greedily in additive powers of two, first the
    power of two nearest in log2, then up to ``order`` times the one nearest to what is left while that is
    still at least delta of the point; no power below 2^(k_min - order - 1). Unlike ``centre_values``, a
    higher order replaces the lower one's centres rather than adding to them."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    floor = k_min - order - 1

    def pow2(x: float) -> float:
        return math.copysign(2.0 ** max(floor, round(math.log2(abs(x)))), x)

    mags, v = set(), 2.0 ** k_min
    while v < 2.0 ** k_max:
        c = pow2(v)
        for _ in range(order):
            if abs(v - c) >= delta * v:
                c += pow2(v - c)
        mags.add(c)
        v /= 1 - delta
    return tuple(sorted([-m for m in mags] + [0.0] + list(mags)))


#: the candidate constructions a ``CentreGrid`` can use, by name
CONSTRUCTIONS = {"nearest": centre_values, "authors": authors_centre_values}
DEFAULT_GRID = CentreGrid()


def centres(order: int, delta: float, k_max: int = 0, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32, grid: CentreGrid = DEFAULT_GRID) -> torch.Tensor:
    """The candidates of ``grid`` as a sorted tensor (exact in float32: a leading power of two and at most
    four more down to 2^-10 of it span 11 bits; the authors' down to 2^(k_min - order - 1) at most 17)."""
    return torch.tensor(grid.values(order, delta, k_max), device=device, dtype=dtype)


def top_exponent(max_abs: float) -> int:
    """The k_max at which the largest weight lies in range: 0 (the paper's 2^0 = 1) unless weights exceed 1."""
    return max(0, math.ceil(math.log2(max_abs))) if max_abs > 0 else 0


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


# --- regulariser ---------------------------------------------------------------------------------------

def softmin_distance_terms(w: torch.Tensor, c: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight g = Σ_j softmin_j(D_j / tau) D_j with D_j = |w - c_j| / max(|w|, gamma_0), and dg/dw.

    The floor gamma_0 on the denominator (our choice; the paper divides by |w|) keeps the pull on tiny
    weights bounded and points it at zero, where the selection sends every |w| < gamma_0 anyway; for
    |w| >= gamma_0 it is the issue's D. Derivative: with s = softmin weights and E the mean under s,
    dg/dw = E[D'] - (E[D D'] - E[D] E[D']) / tau, D'_j = (sign(w - c_j) - D_j m') / m, m = max(|w|, gamma_0).
    """
    m = w.abs().clamp(min=GAMMA0)
    dm = torch.where(w.abs() > GAMMA0, torch.sign(w), torch.zeros_like(w))
    diff = w[:, None] - c[None, :]
    d = diff.abs() / m[:, None]
    s = torch.softmax(-d / tau, dim=1)
    dd = (torch.sign(diff) - d * dm[:, None]) / m[:, None]
    e_d = (s * d).sum(1)
    e_dd = (s * dd).sum(1)
    e_d_dd = (s * d * dd).sum(1)
    return e_d, e_dd - (e_d_dd - e_d * e_dd) / tau


class _SoftminDistance(torch.autograd.Function):
    """mean_i g(w_i) in chunks of weights; the backward pass needs only the saved dg/dw per weight, so the
    memory is O(N + chunk × C) instead of autograd's several N × C tensors."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, c: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        n = w.numel()
        chunk = max(1, REG_CHUNK_ELEMENTS.get(w.device.type, 1 << 22) // max(1, c.numel()))
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        deriv = torch.empty_like(w)
        for s in range(0, n, chunk):
            g, dg = softmin_distance_terms(w[s:s + chunk], c, tau)
            total += g.sum(dtype=torch.float64)
            deriv[s:s + chunk] = dg
        ctx.save_for_backward(deriv)
        ctx.n = n
        return (total / max(1, n)).to(w.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (deriv,) = ctx.saved_tensors
        return grad_out * deriv / max(1, ctx.n), None, None


def softmin_distance(w: torch.Tensor, c: torch.Tensor, tau: float) -> torch.Tensor:
    """L_reg = mean_i Σ_j softmin_j(D_ij / tau) D_ij over the flat weights ``w`` (differentiable in w)."""
    return _SoftminDistance.apply(w, c, tau)


def fixing_rounds(w: torch.Tensor, delta: float, selection: str, max_order: int = 3,
                  schedule: str = "paper", grid: CentreGrid = DEFAULT_GRID) -> dict[str, float]:
    """The ten fixing rounds of ``weight_fixing`` on the flat weights ``w`` without retraining: what the
    selection alone does (time, fallback, distinct values, entropy, mean relative error of the fixed values)."""
    from benchmarks.accounting.size import entropy

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
        log.debug("round %d: fixed %d (%.2f%%) at delta_t=%.4g; order %d, %d by fallback",
                  t, need, 100 * share, d, order, int(sel.fallback.sum()))
    big = value != 0
    rel = ((w[big] - value[big]).abs() / w[big].abs()).double().mean() if bool(big.any()) else torch.zeros(())
    return {"seconds": seconds, "fallback": fallback, "unique_values": int(torch.unique(value).numel()),
            "entropy_bits": entropy(value), "zero_pct": 100.0 * float((~big).float().mean()),
            "mean_rel_error": float(rel)}


def main(argv: list[str] | None = None) -> int:
    """``python -m methods.wf_cluster``: the selections side by side on random or stored weights."""
    import pandas as pd

    from benchmarks.accounting import packing
    from benchmarks.compressed import decode_layer

    ap = argparse.ArgumentParser(prog="python -m methods.wf_cluster",
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
    rows = [{"delta": d, "selection": s, "k_min": k, "construction": c,
             **fixing_rounds(w, d, s, grid=CentreGrid(k, c))}
            for d in a.delta for s in a.selection for k in a.k_min for c in a.construction]
    print(f"{w.numel()} weights ({a.packed or 'random N(0, 0.02)'}), on {a.device}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.exit(main())
