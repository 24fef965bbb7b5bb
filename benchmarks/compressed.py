"""The one exported form of a compressed model, common to every method, and its decoding to a float module.

Per compressible layer the integer codes of its weights and how they are coded:

- ``channel``: per output channel a bit depth ``b`` (0 allowed) and a scale, either a power of two ``2^e``
  (integer ``exponents``) or a float32 (``scales``); codes are signed integers in [-2^(b-1), 2^(b-1)-1] and
  decode to ``code * scale``.
- ``group``: per group of ``group_size`` consecutive weights (row-major, last group may be short) a bit depth
  ``b >= 1``; codes in [0, 2^b - 1] decode to ``lo + code * (hi - lo) / (2^b - 1)`` on the tensor's range.
- ``codebook``: indices into one float codebook shared by the whole network.
- ``float``: the float32 values themselves (32 bits each).

An output channel whose weights all decode to zero is dead; a channel of a space is removed when every
producer has it dead, and with it the matching inputs of every consumer. The accounting and the packed file
skip removed weights, and ``to_module`` rebuilds a float network where they are physically absent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks.models import ModelSpec, build_model, topology
from benchmarks.topology import Topology, dead_space_channels, prune_, space_widths, weight_of

SCHEMES = ("channel", "group", "codebook", "float")


@dataclass
class LayerCode:
    name: str
    kind: str
    shape: tuple[int, ...]  # exported (possibly already shrunk) weight shape
    full_shape: tuple[int, ...]  # shape in the float model: the denominator of every percentage
    scheme: str
    codes: torch.Tensor  # int64 codes of ``shape`` (float32 values for the float scheme)
    bits: torch.Tensor | None = None  # int64, per output channel (channel) or per group (group)
    exponents: torch.Tensor | None = None  # int64 per output channel (channel scheme, scale 2^e)
    scales: torch.Tensor | None = None  # float32 per output channel (channel scheme, float scale)
    lo: float = 0.0  # group scheme: the tensor's range
    hi: float = 0.0
    group_size: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown coding scheme {self.scheme!r} for {self.name}; use one of {SCHEMES}")
        self.shape, self.full_shape = tuple(self.shape), tuple(self.full_shape)
        # a plugin's export is checked here, where the layer is named, rather than deep in the accounting
        if tuple(self.codes.shape) != self.shape:
            raise ValueError(f"layer {self.name}: codes of shape {tuple(self.codes.shape)} for a layer of shape "
                             f"{self.shape}; a layer's codes have its exported shape")
        if (len(self.shape) != len(self.full_shape) or self.shape[2:] != self.full_shape[2:]
                or any(not 1 <= s <= f for s, f in zip(self.shape, self.full_shape))):
            raise ValueError(f"layer {self.name}: exported shape {self.shape} does not fit its full shape "
                             f"{self.full_shape} (channels may only shrink; kernel dimensions stay)")

    @property
    def out_channels(self) -> int:
        return self.shape[0]


@dataclass
class CompressedModel:
    arch: ModelSpec
    topology: Topology
    layers: list[LayerCode]
    others: dict[str, torch.Tensor] = field(default_factory=dict)  # BatchNorm and biases, float32
    codebook: torch.Tensor | None = None  # float32, shared by every ``codebook`` layer
    # Per layer, the dead output channels as a packed file lists them (set by the reader, whose codes for
    # unstored weights are only placeholders); None: found from the decoded weights (``dead_outputs``).
    dead: dict[str, torch.Tensor] | None = None

    def layer(self, name: str) -> LayerCode:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def codebook_bits(self) -> int:
        """Fixed-length index width into the shared codebook."""
        k = 0 if self.codebook is None else len(self.codebook)
        return max(1, (k - 1).bit_length())


def decode_layer(layer: LayerCode, codebook: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 weights of the exported shape (before structural removal)."""
    c = layer.codes
    if layer.scheme == "float":
        return c.float()
    if layer.scheme == "channel":
        scale = layer.scales.double() if layer.scales is not None else torch.pow(2.0, layer.exponents.double())
        return (c.double() * scale.view(-1, *([1] * (c.dim() - 1)))).float()
    if layer.scheme == "group":
        b = group_bits_per_weight(layer).view(c.shape).double()
        step = (layer.hi - layer.lo) / (torch.pow(2.0, b) - 1)
        return (layer.lo + c.double() * step).float()
    return codebook[c.long()]


def group_bits_per_weight(layer: LayerCode) -> torch.Tensor:
    n = layer.codes.numel()
    return layer.bits.repeat_interleave(layer.group_size)[:n]


def bits_per_weight(layer: LayerCode, codebook_bits: int) -> torch.Tensor:
    """The stored width of every weight's code, in the exported shape."""
    if layer.scheme == "float":
        return torch.full(layer.shape, 32, dtype=torch.int64)
    if layer.scheme == "codebook":
        return torch.full(layer.shape, codebook_bits, dtype=torch.int64)
    if layer.scheme == "channel":
        return layer.bits.view(-1, *([1] * (len(layer.shape) - 1))).expand(layer.shape).clone()
    return group_bits_per_weight(layer).view(layer.shape)


def dead_outputs(cm: CompressedModel) -> dict[str, torch.Tensor]:
    """Per layer, the output channels whose weights all decode to zero (as listed, for a model read from a file)."""
    if cm.dead is not None:
        return dict(cm.dead)
    return {layer.name: (decode_layer(layer, cm.codebook).reshape(layer.out_channels, -1) == 0).all(dim=1)
            for layer in cm.layers}


def remaining_mask(cm: CompressedModel, dead_out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per layer, a bool tensor of its exported shape: the weights still present after structural removal."""
    dead_out = dead_outputs(cm) if dead_out is None else dead_out
    dead_space = dead_space_channels(cm.topology, dead_out)
    masks = {}
    for layer in cm.layers:
        node = cm.topology.node(layer.name)
        in_alive = torch.ones(layer.shape[1], dtype=torch.bool)
        if node.in_space in dead_space:
            in_alive = (~dead_space[node.in_space]).repeat_interleave(node.in_factor)
        m = (~dead_out[layer.name])[:, None] & in_alive[None, :]
        masks[layer.name] = m.view(*m.shape, *([1] * (len(layer.shape) - 2))).expand(layer.shape)
    return masks


def to_module(cm: CompressedModel) -> nn.Module:
    """An ordinary float module of the same architecture, removed channels physically absent."""
    model = build_model(cm.arch)
    topo = topology(model)
    if topo != cm.topology:
        raise ValueError(f"stored topology does not match model {cm.arch.name!r}")
    shrink = {s: torch.arange(cm.layer(topo.producers(s)[0].name).shape[0]) for s in topo.spaces}
    full = space_widths(model, topo)
    prune_(model, topo, {s: torch.arange(full[s]) >= len(k) for s, k in shrink.items()})
    state = {k: v.clone() for k, v in cm.others.items()}
    dead = dead_outputs(cm)  # decoded once, for the masks and for the channels removed below
    masks = remaining_mask(cm, dead)
    for layer in cm.layers:
        state[f"{layer.name}.weight"] = decode_layer(layer, cm.codebook) * masks[layer.name]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"exported tensors do not fit the model: missing {missing}, unexpected {unexpected}")
    prune_(model, topo, dead_space_channels(topo, dead))
    return model.eval()


def other_tensor_refs(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm parameters and statistics and layer biases, uncopied (also for a model on the meta device)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, k)
                if t is not None:
                    out[f"{name}.{k}"] = t
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            out[f"{name}.bias"] = m.bias
    return out


def other_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm parameters and statistics and layer biases: everything stored besides the weights."""
    return {k: t.detach().float().cpu().clone() for k, t in other_tensor_refs(model).items()}


def export_layers(model: nn.Module, spec: ModelSpec, layers: list[LayerCode],
                  codebook: torch.Tensor | None = None) -> CompressedModel:
    return CompressedModel(spec, topology(model), layers, other_tensors(model), codebook)


def full_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every layer's weight shape in the unpruned network. It builds that network with its default init,
    which draws from the global RNG: methods call it from ``export()`` every epoch, so those draws are part of
    every stored run's random stream (DiffQ's noise on a CPU). Caching it, or building on the meta device,
    would change the results of runs whose ids stay the same; do that only as a deliberate change of results."""
    model = build_model(spec)
    return {n.name: tuple(weight_of(dict(model.named_modules())[n.name]).shape) for n in topology(model).nodes}


def export_float(model: nn.Module, spec: ModelSpec) -> CompressedModel:
    """The float model as it is: 32 bits per weight, nothing removed."""
    modules = dict(model.named_modules())
    shapes = full_shapes(spec)
    layers = []
    for n in topology(model).nodes:
        w = modules[n.name].weight.detach().float().cpu().clone()
        layers.append(LayerCode(n.name, n.kind, tuple(w.shape), shapes[n.name], "float", w))
    return export_layers(model, spec, layers)
