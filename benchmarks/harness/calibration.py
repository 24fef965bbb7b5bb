"""BatchNorm calibration: before an artifact is packed and scored, its BatchNorm running statistics are
re-estimated over training batches of the network it decodes to.

Why: running statistics are an exponential average over recent training steps (momentum 0.1: mostly the
last ten or so, each through the weights of its own step), so they describe a network that no longer exists
when weights move late — bit depths falling at the end of a self-compression or DiffQ schedule, channels
removed in the last epochs. Measured post hoc on the `cpu` preset
(``experiments/bn_reestimation.py``; README, "Self-compression recipe"): +0.73 ± 0.28 points for
self-compression at γ = 0.1 (3 seeds), +5.2 at γ = 0.3 with lr_bits 0.05, 44 → 82 % for a constant b/e rate,
+1.15 on average for DiffQ, nothing for weight fixing (±0.06) and −0.06 ± 0.04 for the float control. So it
runs for every method, controls and the float baseline included, in one way: ``RunSpec.bn_batches``
augmented training batches of the run's batch size, drawn with the run's seed, weights untouched (at most one
epoch's worth: 2,048 synthetic images give 16 batches of 128).

It works on the decoded network (``to_module``), not on the training-time modules, so that quantization
noise (DiffQ) or straight-through estimators play no part: the statistics are those of exactly the network
the packed file holds. The trained modules and the artifact then differ only in these statistics.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from benchmarks.accounting import packing
from benchmarks.accounting.size import size_report
from benchmarks.compressed import CompressedModel, dead_outputs, to_module
from benchmarks.data import Dataset, Split, batches
from benchmarks.harness.rundir import packed_digest
from benchmarks.topology import dead_space_channels
from benchmarks.train import evaluate

#: training batches a grid calibrates every artifact with unless told otherwise (``run_all.py --bn-batches``):
#: 20 batches of 512 are ~10k images, a fifth of a CIFAR-10 epoch, as in the measurements above
BN_BATCHES = 20
STATS = ("running_mean", "running_var")


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, split: Split, n_batches: int, batch_size: int = 512,
                         seed: int = 0) -> nn.Module:
    """Replace every BatchNorm's running mean and variance by their plain average over ``n_batches``
    augmented training batches of the network as it now is (weights untouched). Running statistics are an
    exponential average over training steps, so they lag weights that moved late (bit depths falling at the
    end of a schedule): this measures how much accuracy that lag costs."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    channels_last = split.images.device.type == "cpu"
    with torch.no_grad():  # the statistics update in the forward pass; no graph is needed
        for i, (x, _) in enumerate(batches(split, batch_size, gen, train=True, channels_last=channels_last)):
            if i == n_batches:
                break
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was)
    return model


def calibrate_batchnorm(cm: CompressedModel, split: Split, n_batches: int, batch_size: int,
                        seed: int, decoded: nn.Module | None = None) -> CompressedModel:
    """``cm`` with every BatchNorm's running mean and variance re-estimated (``reestimate_batchnorm``) on
    the network it decodes to (``decoded``, when the caller has it already: its statistics are replaced).
    Removed channels keep their stored (unused) statistics."""
    model = (decoded if decoded is not None else to_module(cm)).to(split.images.device)
    reestimate_batchnorm(model, split, n_batches, batch_size, seed)
    dead = dead_space_channels(cm.topology, dead_outputs(cm))
    space_of = {n.bn: n.out_space for n in cm.topology.nodes if n.bn is not None}
    others = dict(cm.others)
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        for stat in STATS:
            key = f"{name}.{stat}"
            if key not in others:
                raise ValueError(f"the artifact stores no {key}; it cannot be calibrated")
            d = dead.get(space_of.get(name, ""))
            keep = torch.arange(len(others[key])) if d is None else torch.nonzero(~d.cpu()).flatten()
            new = others[key].clone()
            new[keep] = getattr(m, stat).detach().float().cpu()
            others[key] = new
    return replace(cm, others=others)


def pack_and_score(cm: CompressedModel, path: Path, data: Dataset, bn_batches: int, batch_size: int,
                   seed: int) -> dict:
    """Calibrate ``cm`` (when ``bn_batches``), write it to ``path`` and score what was written: the
    accuracy and size record of a run's ``result.json``, and with calibration the accuracy the artifact
    had before it (``accuracy_before_calibration``: the same network with the training's statistics)."""
    device = data.train.images.device
    out = {}
    if bn_batches:
        decoded = to_module(cm).to(device)
        out["accuracy_before_calibration"] = evaluate(decoded, data.test)
        cm = calibrate_batchnorm(cm, data.train, bn_batches, batch_size, seed, decoded)
    packing.save(cm, path)
    blob = path.read_bytes()
    artifact, layout = packing.read(blob, str(path))  # score what was written, not what is in memory
    out["packed_sha256"] = packed_digest(blob)  # what a finished run's file is checked against
    out["accuracy"] = evaluate(to_module(artifact).to(device), data.test)
    out["size"] = size_report(artifact, layout).as_dict()
    return out
