"""How channels flow between the compressible layers of a model, and channel surgery.

A *space* is a set of channels that several layers agree on: the output channels of a conv (after its
BatchNorm, activation and pooling) or a residual sum fed by several convs. A channel of a space can only be
removed when every layer producing it is dead there, and removing it also removes the matching input
channels of every layer consuming it. Models declare their topology explicitly (see ``models.py``) so that
accounting and surgery need no graph tracing and work identically on a training model and a decoded one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

OUTPUT_SPACE = "logits"  # the classifier's outputs: never pruned


@dataclass(frozen=True)
class Node:
    """One compressible layer: where its inputs come from and where its outputs go.

    ``in_factor`` is the number of input features per channel of ``in_space`` (H·W for a linear layer
    after a spatial flatten, 1 otherwise). ``bn`` names the BatchNorm that follows the layer, if any.
    """

    name: str
    kind: str  # "conv" or "linear"
    in_space: str
    out_space: str
    bn: str | None = None
    in_factor: int = 1


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]

    def producers(self, space: str) -> list[Node]:
        return [n for n in self.nodes if n.out_space == space]

    def consumers(self, space: str) -> list[Node]:
        return [n for n in self.nodes if n.in_space == space]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no compressible layer named {name!r}")

    @property
    def spaces(self) -> list[str]:
        """Spaces whose channels may be removed: produced inside the net and not the logits."""
        return sorted({n.out_space for n in self.nodes if n.out_space != OUTPUT_SPACE})

    def as_dict(self) -> list[dict]:
        return [n.__dict__.copy() for n in self.nodes]


def dead_space_channels(topo: Topology, dead_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per space, the channels that every producer has dead (``dead_out``: layer name -> bool per channel).

    At least one channel of each space is kept so that the network stays a valid module.
    """
    dead: dict[str, torch.Tensor] = {}
    for space in topo.spaces:
        masks = [dead_out[n.name] for n in topo.producers(space)]
        d = torch.stack(masks).all(dim=0)
        if bool(d.all()):
            d = d.clone()
            d[0] = False
        dead[space] = d
    return dead


def weight_of(module: nn.Module) -> nn.Parameter:
    """The stored (not the transformed) weight parameter, also when a method parametrizes it."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def slice_param_(p: torch.Tensor, dim: int, keep: torch.Tensor,
                 optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
    """Keep only ``keep`` along ``dim`` of ``p`` in place, and the optimizer state that mirrors it.

    The parameter object stays the same, so optimizers keep referring to it; only its data and its
    state (momentum, Adam moments) shrink.
    """
    old = p.shape[dim]
    fmt = (torch.channels_last if p.dim() == 4 and not p.is_contiguous()
           and p.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    p.data = p.data.index_select(dim, keep.to(p.device)).contiguous(memory_format=fmt)  # keep the layout
    p.grad = None
    for opt in optimizers:
        state = opt.state.get(p, {})
        for k, v in state.items():
            if torch.is_tensor(v) and v.dim() > dim and v.shape[dim] == old:
                state[k] = v.index_select(dim, keep.to(v.device)).contiguous()


def _input_index(keep: torch.Tensor, factor: int) -> torch.Tensor:
    """Input features of a flattened (channel-major) tensor that belong to the kept channels."""
    if factor == 1:
        return keep
    return (keep[:, None] * factor + torch.arange(factor)[None, :]).reshape(-1)


def prune_(model: nn.Module, topo: Topology, dead: dict[str, torch.Tensor],
           optimizers: Sequence[torch.optim.Optimizer] = ()) -> dict[str, torch.Tensor]:
    """Physically remove the dead channels of every space; returns the kept indices per space.

    Slices producers' output channels (weight, bias, BatchNorm), consumers' input channels, and the
    optimizer state of everything sliced. Callers slice their own per-channel tensors with the result.
    """
    modules = dict(model.named_modules())
    keep_all: dict[str, torch.Tensor] = {}
    for space, d in dead.items():
        if not bool(d.any()):
            continue
        keep = torch.nonzero(~d.cpu()).flatten()
        keep_all[space] = keep
        for n in topo.producers(space):
            m = modules[n.name]
            slice_param_(weight_of(m), 0, keep, optimizers)
            if getattr(m, "bias", None) is not None:
                slice_param_(m.bias, 0, keep, optimizers)
            _set_out(m, len(keep))
            if n.bn is not None:
                bn = modules[n.bn]
                for t in (bn.weight, bn.bias):
                    if t is not None:
                        slice_param_(t, 0, keep, optimizers)
                for buf in ("running_mean", "running_var"):
                    b = getattr(bn, buf)
                    if b is not None:
                        setattr(bn, buf, b.index_select(0, keep.to(b.device)).contiguous())
                bn.num_features = len(keep)
        for n in topo.consumers(space):
            m = modules[n.name]
            idx = _input_index(keep, n.in_factor)
            slice_param_(weight_of(m), 1, idx, optimizers)
            _set_in(m, len(idx))
    return keep_all


def _set_out(m: nn.Module, n: int) -> None:
    if isinstance(m, nn.Conv2d):
        m.out_channels = n
    else:
        m.out_features = n


def _set_in(m: nn.Module, n: int) -> None:
    if isinstance(m, nn.Conv2d):
        m.in_channels = n
    else:
        m.in_features = n


def space_widths(model: nn.Module, topo: Topology) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {s: weight_of(modules[topo.producers(s)[0].name]).shape[0] for s in topo.spaces}


def fit_shapes_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every tensor of ``model`` the shape it has in ``state`` (a state dict saved after surgery), so
    that a freshly built model can load a shrunk one; the layers' size attributes follow."""
    params = dict(model.named_parameters())
    owners = dict(model.named_modules())
    for key, saved in state.items():
        if key in params:
            if params[key].shape != saved.shape:
                params[key].data = torch.empty_like(saved, device=params[key].device)
            continue
        mod_name, _, attr = key.rpartition(".")
        m = owners.get(mod_name)
        buf = m._buffers.get(attr) if m is not None else None
        if buf is not None and buf.shape != saved.shape:
            m._buffers[attr] = torch.empty_like(saved, device=buf.device)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = weight_of(m)
            _set_out(m, w.shape[0])
            _set_in(m, w.shape[1])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.num_features = m.running_mean.numel()
