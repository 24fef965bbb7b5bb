"""Weight fixing (Subia-Waud & Dasmahapatra, "Weight Fixing Networks", ECCV 2022, arXiv 2210.13554).

The weights (and biases) of every conv and linear layer, first and last included — optionally the
BatchNorm affine parameters too — form one flat vector clustered onto one codebook shared by the whole
network, with no per-layer scale. Starting from the trained float model, ten rounds fix a cumulative
share of that vector (``wf_cluster.SHARES``); between rounds the weights not yet fixed retrain with a fresh Adam
(the fixed ones have their gradients zeroed and their values re-imposed after every step, so they never
move) for ``epochs_per_round`` epochs (the paper's 3, at the authors' Adam 2e-5 for CIFAR ResNets). Each
round is one training phase; ``on_phase_start`` fixes before the phase retrains.

Centres (``wf_centres.centre_values``): 0 and ±2^k (2^-7 <= |c| <= 2^k_max) at order 0; order o >= 1 adds,
per point of the geometric grid of ratio (1 + δ_t) / (1 - δ_t) from 2^-7, the nearest sum of at most o + 1
powers of two. k_max = 0 (the paper's |c| <= 1) unless the starting weights exceed 1 in magnitude (it is
fixed at ``prepare`` to the smallest power of two covering them). Selection
(``wf_cluster.select_one_at_a_time``, the authors' greedy): the centre nearest to the most unfixed weights
takes, from the unfixed weights of its sign, the longest run by increasing |w - c| / |w| whose mean stays
<= δ_t; the counts are taken again and the next centre chosen, until the round's share is met exactly;
|w| < 2^-7 always go to 0. When the most popular centre can take nothing, the order rises; every round
starts again at order 0, as in the authors' code. Past ``max_order`` the closest remaining weights go to
their nearest centre whatever their distance (the fallback, counted in ``fallback_fixed``; the authors
double δ instead). ``selection="by_capacity"`` is the first version: every weight in its nearest centre's
group, all groups at once, largest first, the order kept for later rounds. δ_t = δ (T - t + 1) with t = 1..T, the
paper's 10δ … δ (``delta_schedule="9to1"``: the first version's max(δ, δ (T - t)), 9δ … δ, δ).

Regulariser: ``α · L_reg``, L_reg = mean_i Σ_j softmin_j(D_ij / τ) D_ij over the unfixed weights and the
centres chosen so far (the values fixed weights hold, as in the authors' code; ``reg_centres="candidates"``:
every candidate centre of the current order, the first version), α = stopgrad(λ · CE / L_reg). We floor the denominator of D at 2^-7 (see
``wf_centres.softmin_distance_terms``) and compute it exactly in chunks of weights.

A conv output channel whose weights are all fixed to 0 is dead: the accounting removes it, so (as in
``self_compression``) its BatchNorm output is zeroed in training and its BatchNorm affine parameters are
zeroed in the export, and the decoded artifact computes what was trained. Biases (only tinycnn's ``fc``
has one) and BatchNorm parameters are fixed with the weights but export as float32 in ``others``, outside
the codebook, as for every method.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from benchmarks.accounting.size import entropy
from benchmarks.compressed import CompressedModel, LayerCode, export_layers, full_shapes
from benchmarks.models import ModelSpec, topology
from benchmarks.topology import weight_of
import methods.wf_centres as wf_centres
import methods.wf_cluster as wf_cluster
from methods.base import ConfigError, Method, Phase
from methods.registry import register

log = logging.getLogger(__name__)

ROUNDS = len(wf_cluster.SHARES)


@register("weight_fixing")
class WeightFixing(Method):
    @dataclass(frozen=True)
    class Config:
        delta: float = 0.01  # relative-distance threshold δ of the last rounds: the size/accuracy knob
        lam: float = 0.4  # λ: the regulariser's share of the task loss (0: no regulariser)
        tau: float = 0.05  # softmin temperature
        lr: float = 2e-5  # Adam learning rate of each round's retraining
        grad_clip: float = 1.0  # global gradient-norm clip of the retraining (0: none)
        max_order: int = 3  # highest order of additive powers of two before the fallback
        fix_batchnorm: bool = False  # also fix BatchNorm weights and biases
        delta_schedule: str = "paper"  # round thresholds: "paper" (10δ … δ) or "9to1" (9δ … δ, δ: the first version)
        reg_centres: str = "chosen"  # the regulariser pulls toward the centres "chosen" so far (the authors'
        # code) or toward every "candidate" centre of the current order (the first version)
        selection: str = "one_at_a_time"  # "one_at_a_time" (the authors' greedy) or "by_capacity" (the first version)
        epochs_per_round: int = 3  # retraining epochs after each fixing (the paper's 3); 0: the preset's
        # method epochs shared over the ten rounds (the first version: 1 a round on the cpu preset)

        def validate(self) -> None:
            if self.delta_schedule not in wf_cluster.DELTA_SCHEDULES:
                raise ConfigError(f"weight_fixing.delta_schedule must be one of {', '.join(wf_cluster.DELTA_SCHEDULES)}, "
                                  f"got {self.delta_schedule!r}")
            if self.selection not in wf_cluster.SELECTIONS:
                raise ConfigError(f"weight_fixing.selection must be one of {', '.join(wf_cluster.SELECTIONS)}, "
                                  f"got {self.selection!r}")
            if not self.epochs_per_round >= 0:
                raise ConfigError(f"weight_fixing.epochs_per_round must be >= 0, got {self.epochs_per_round}")
            if self.reg_centres not in ("chosen", "candidates"):
                raise ConfigError(f"weight_fixing.reg_centres must be 'chosen' or 'candidates', got {self.reg_centres!r}")
            first = wf_cluster.delta_at(1.0, 1, ROUNDS, self.delta_schedule)  # the first round's multiple of delta
            if not (0 < self.delta and self.delta * first < 1):
                raise ConfigError(f"weight_fixing.delta must lie in (0, {1 / first:.4f}) so that the first "
                                  f"round's threshold {first:g}·delta stays below 1, got {self.delta}")
            if not (self.lam >= 0 and math.isfinite(self.lam)):
                raise ConfigError(f"weight_fixing.lam must be a finite number >= 0, got {self.lam}")
            if not self.tau > 0:
                raise ConfigError(f"weight_fixing.tau must be > 0, got {self.tau}")
            if not self.lr > 0:
                raise ConfigError(f"weight_fixing.lr must be > 0, got {self.lr}")
            if not self.grad_clip >= 0:
                raise ConfigError(f"weight_fixing.grad_clip must be >= 0, got {self.grad_clip}")
            if not 0 <= self.max_order <= 4:
                raise ConfigError(f"weight_fixing.max_order must lie in [0, 4], got {self.max_order}")

    knob = "delta"
    default_grid = {
        "smoke": {"delta": [0.01, 0.05], "epochs_per_round": [1]},  # plumbing, not the paper's budget
        # three points: each costs 30 epochs (3 a round) on the cpu preset, ~35 min on a 2-core CPU
        "cpu": {"delta": [0.005, 0.02, 0.08]},
        "paper": {"delta": [0.005, 0.0075, 0.01, 0.015, 0.02, 0.04, 0.08]},
    }
    needs_float_model = True

    # --- setup -----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        self.topo = topology(model)
        modules = dict(model.named_modules())
        names = []
        for n in self.topo.nodes:
            names.append(f"{n.name}.weight")
            if getattr(modules[n.name], "bias", None) is not None:
                names.append(f"{n.name}.bias")
        if self.config.fix_batchnorm:
            names += [f"{n.bn}.{k}" for n in self.topo.nodes if n.bn is not None for k in ("weight", "bias")
                      if getattr(modules[n.bn], k) is not None]
        self.names = names
        params = self._params(model)
        self.sizes = [p.numel() for p in params]
        dev = params[0].device
        self.n = sum(self.sizes)
        self.fixed = torch.zeros(self.n, dtype=torch.bool, device=dev)  # flat, in ``names`` order
        self.value = torch.zeros(self.n, dtype=params[0].dtype, device=dev)
        with torch.no_grad():
            self.k_max = wf_centres.top_exponent(float(self._flat(params).abs().max()))
        self.round, self.order, self.fallback_fixed = 0, 0, 0
        self.unfixed = torch.arange(self.n, device=dev)
        self.round_start = torch.zeros(0, device=dev)
        self.centres = wf_centres.centres(0, self.delta_t, self.k_max, dev, self.value.dtype)
        self.dead: dict[str, torch.Tensor | None] = {n.name: None for n in self.topo.nodes}
        for n in self.topo.nodes:
            if n.bn is not None:
                modules[n.bn].register_forward_hook(self._dead_hook(n.name))
        return model

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[k] for k in self.names]

    @staticmethod
    def _flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in params])

    def _views(self, flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [v.view(p.shape) for v, p in zip(flat.split(self.sizes), params)]

    def _dead_hook(self, layer: str):
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor | None:
            dead = self.dead[layer]
            if dead is None:
                return None
            return out * (~dead).to(out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
        return hook

    @property
    def delta_t(self) -> float:
        return wf_cluster.delta_at(self.config.delta, max(1, self.round), ROUNDS, self.config.delta_schedule)

    # --- the rounds ------------------------------------------------------------------------------
    def phases(self, epochs: int) -> list[Phase]:
        e = self.config.epochs_per_round or max(1, round(epochs / ROUNDS))
        return [Phase(e, optimizer="adam", lr=self.config.lr, schedule="constant", weight_decay=0.0,
                      grad_clip=self.config.grad_clip or None) for _ in range(ROUNDS)]

    @torch.no_grad()
    def on_phase_start(self, model: nn.Module, phase: int) -> None:
        """Fix the cumulative share of round ``phase + 1`` before that round's retraining."""
        self.round = phase + 1
        params = self._params(model)
        dev = params[0].device
        self.fixed, self.value = self.fixed.to(dev), self.value.to(dev)
        target = round(wf_cluster.SHARES[min(phase, ROUNDS - 1)] * self.n)
        need = target - int(self.fixed.sum())
        flat = self._flat(params).detach()
        free = torch.nonzero(~self.fixed).squeeze(1)
        sel = wf_cluster.select(self.config.selection, flat[free], need, self.delta_t, self.order,
                                self.config.max_order, self.k_max)
        idx = free[sel.index]
        self.fixed[idx] = True
        self.value[idx] = sel.value
        self.order = sel.order
        n_fb = int(sel.fallback.sum())
        self.fallback_fixed += n_fb
        if n_fb:
            log.warning("weight fixing round %d: %d weights fixed to their nearest centre beyond delta_t=%.4g "
                        "(nothing more fitted at max_order=%d)", self.round, n_fb, self.delta_t, self.config.max_order)
        self._impose(params)
        self._mark_dead(model)
        self._pick_centres()
        self.unfixed = torch.nonzero(~self.fixed).squeeze(1)
        self.round_start = flat[self.unfixed].clone()  # how far retraining moves them: epoch_metrics
        log.info("weight fixing round %d: %.2f%% fixed (delta_t=%.4g, order %d)", self.round,
                 100.0 * target / self.n, self.delta_t, self.order)

    def _pick_centres(self) -> None:
        """The regulariser's centres: the values fixed so far, or every candidate of the current order."""
        chosen = torch.unique(self.value[self.fixed])
        if self.config.reg_centres == "chosen" and len(chosen):
            self.centres = chosen
        else:
            self.centres = wf_centres.centres(self.order, self.delta_t, self.k_max, self.value.device, self.value.dtype)

    def _impose(self, params: Sequence[nn.Parameter]) -> None:
        for p, m, v in zip(params, self._views(self.fixed, params), self._views(self.value, params)):
            p.data.copy_(torch.where(m, v, p.data))

    def _mark_dead(self, model: nn.Module) -> None:
        """Output channels whose weights are all 0 (only fixing makes exact zeros, so once per round)."""
        modules = dict(model.named_modules())
        for n in self.topo.nodes:
            if n.bn is not None:
                w = weight_of(modules[n.name]).detach()
                dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
                self.dead[n.name] = dead if bool(dead.any()) else None

    # --- training hooks --------------------------------------------------------------------------
    def penalty(self, model: nn.Module, task_loss: torch.Tensor) -> torch.Tensor | None:
        if self.config.lam == 0 or len(self.unfixed) == 0:
            return None
        w = self._flat(self._params(model))[self.unfixed]
        reg = wf_centres.softmin_distance(w, self.centres, self.config.tau)
        alpha = torch.where(reg > 0, self.config.lam * task_loss / reg, torch.zeros_like(reg)).detach()
        return alpha * reg

    def after_backward(self, model: nn.Module) -> None:
        params = self._params(model)
        for p, m in zip(params, self._views(self.fixed, params)):
            if p.grad is not None:
                p.grad.masked_fill_(m, 0.0)

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self._impose(self._params(model))  # exact, whatever the optimizer's momentum or epsilon did

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        vals = self.value[self.fixed]
        with torch.no_grad():
            now = self._flat(self._params(model))[self.unfixed]
            moved = float((now - self.round_start).abs().mean()) if len(now) else 0.0
            size = float(now.abs().mean()) if len(now) else 0.0
        # mean |Δw| of the unfixed weights since this round's fixing: whether retraining moves them at all
        return {"mean_abs_dw": moved, "mean_abs_w_unfixed": size,
                "round": self.round, "share_fixed": float(self.fixed.sum()) / self.n,
                "unique_fixed": int(torch.unique(vals).numel()), "entropy_fixed": entropy(vals),
                "order": self.order, "delta_t": self.delta_t, "fallback_fixed": self.fallback_fixed,
                "n_centres": len(wf_centres.centre_values(self.order, self.delta_t, wf_centres.K_MIN, self.k_max))}

    def state_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "value": self.value, "round": self.round, "order": self.order,
                "fallback_fixed": self.fallback_fixed, "k_max": self.k_max, "dead": self.dead,
                "round_start": self.round_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.fixed.device
        self.fixed, self.value = state["fixed"].to(dev), state["value"].to(dev)
        self.round, self.order, self.fallback_fixed, self.k_max = (state[k] for k in ("round", "order",
                                                                                     "fallback_fixed", "k_max"))
        self.dead = {k: None if v is None else v.to(dev) for k, v in state["dead"].items()}
        self._pick_centres()
        self.unfixed = torch.nonzero(~self.fixed).squeeze(1)
        self.round_start = state["round_start"].to(dev)

    # --- export ----------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, model: nn.Module, spec: ModelSpec) -> CompressedModel:
        """Every compressible layer as indices into one codebook: the sorted distinct values of all their
        weights (before the last round, the unfixed weights are simply more codebook entries)."""
        modules = dict(model.named_modules())
        shapes = full_shapes(spec)
        ws = [weight_of(modules[n.name]).detach().float().cpu().contiguous() for n in self.topo.nodes]
        codebook = torch.unique(torch.cat([w.reshape(-1) for w in ws]))
        layers = [LayerCode(n.name, n.kind, tuple(w.shape), shapes[n.name], "codebook",
                            torch.searchsorted(codebook, w.reshape(-1)).view(w.shape))
                  for n, w in zip(self.topo.nodes, ws)]
        cm = export_layers(model, spec, layers, codebook)
        for n, w in zip(self.topo.nodes, ws):  # dead channels output exactly zero in the decoded model too
            dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
            if n.bn is not None and bool(dead.any()):
                for k in ("weight", "bias"):
                    cm.others[f"{n.bn}.{k}"][dead] = 0.0
        return cm
