"""Weight fixing's candidate centres (0 and powers of two, then sums of a few powers of two) and the softmin
distance that pulls the weights toward them (see ``methods.weight_fixing``).

The centres are sorted Python tuples, cached per (order, delta, range), so a fixing round builds them once.
The regulariser needs every (weight, centre) distance: it walks the weights in chunks and keeps only one
derivative per weight for the backward pass, so millions of weights fit in memory on a CPU.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

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
