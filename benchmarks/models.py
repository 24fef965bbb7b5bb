"""CIFAR-10 networks whose every conv and linear layer is compressible, each declaring its channel topology.

``resnet9`` is the ResNet-9 of David Page's "How to train your ResNet" (the airbench family): at width 1.0 it
is the paper-size net (6.57 M weights); a width multiplier gives the narrower CPU variants from the same
code. ``tinycnn`` (conv-BN-conv-linear through a spatial flatten) is the smoke and test net.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmarks.topology import OUTPUT_SPACE, Node, Topology

RESNET9_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class ModelSpec:
    name: str = "resnet9"
    width: float = 1.0
    num_classes: int = 10

    def as_dict(self) -> dict:
        return asdict(self)


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ResNet9(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        c = [max(1, round(w * width)) for w in RESNET9_WIDTHS]
        self.prep = conv_bn(3, c[0])
        self.layer1 = conv_bn(c[0], c[1], pool=True)
        self.res1a = conv_bn(c[1], c[1])
        self.res1b = conv_bn(c[1], c[1])
        self.layer2 = conv_bn(c[1], c[2], pool=True)
        self.layer3 = conv_bn(c[2], c[3], pool=True)
        self.res3a = conv_bn(c[3], c[3])
        self.res3b = conv_bn(c[3], c[3])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c[3], num_classes, bias=False)
        self.scale = 0.125  # Page's logit scaling: keeps early training stable at high learning rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.prep(x))
        x = x + self.res1b(self.res1a(x))
        x = self.layer3(self.layer2(x))
        x = x + self.res3b(self.res3a(x))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.scale

    @staticmethod
    def topology() -> Topology:
        def cb(name: str, i: str, o: str) -> Node:
            return Node(f"{name}.0", "conv", i, o, bn=f"{name}.1")
        return Topology((
            cb("prep", "input", "prep"),
            cb("layer1", "prep", "s1"),
            cb("res1a", "s1", "s1a"),
            cb("res1b", "s1a", "s1"),  # residual sum: s1 = layer1 + res1b
            cb("layer2", "s1", "s2"),
            cb("layer3", "s2", "s3"),
            cb("res3a", "s3", "s3a"),
            cb("res3b", "s3a", "s3"),  # residual sum: s3 = layer3 + res3b
            Node("fc", "linear", "s3", OUTPUT_SPACE),
        ))


class TinyCNN(nn.Module):
    """conv-BN-ReLU-pool, conv-BN-ReLU-pool, flatten (4x4 per channel), linear."""

    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        c1, c2 = max(1, round(8 * width)), max(1, round(16 * width))
        self.conv1 = conv_bn(3, c1, pool=True)
        self.conv2 = conv_bn(c1, c2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(c2 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv2(self.conv1(x))), 1))

    @staticmethod
    def topology() -> Topology:
        return Topology((
            Node("conv1.0", "conv", "input", "c1", bn="conv1.1"),
            Node("conv2.0", "conv", "c1", "c2", bn="conv2.1"),
            Node("fc", "linear", "c2", OUTPUT_SPACE, in_factor=16),
        ))


MODELS = {"resnet9": ResNet9, "tinycnn": TinyCNN}
MAX_WIDTH = 2.0  # ResNet-9 at 2× has 26 M weights; the packed reader refuses nets above 2^25 (×2.26)


def parse_model(text: str) -> ModelSpec:
    """A network named on the command line: ``resnet9`` (width 1.0) or ``<name>x<width>``, e.g.
    ``resnet9x0.5``; ``ValueError`` with the fix when the name or width is not one this suite builds."""
    text = text.strip()
    name, sep, width = (text, "", "") if text in MODELS else text.rpartition("x")
    if name not in MODELS:
        raise ValueError(f"unknown model {text!r}; write <name> or <name>x<width> with a name among "
                         f"{', '.join(sorted(MODELS))} (e.g. resnet9x0.5)")
    try:
        w = float(width) if sep else 1.0
    except ValueError:
        raise ValueError(f"model {text!r} has width {width!r}, not a number; write e.g. {name}x0.5") from None
    if not 0 < w <= MAX_WIDTH:  # NaN fails this too
        raise ValueError(f"model {text!r}: width must be in (0, {MAX_WIDTH:g}], got {width}")
    return ModelSpec(name, w)


def model_label(spec: ModelSpec) -> str:
    """``<name>x<width>`` (``resnet9x0.5``, ``resnet9x1.0``): the form ``parse_model`` reads and the tables'
    ``model`` column shows."""
    return f"{spec.name}x{float(spec.width)}"


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.name not in MODELS:
        raise ValueError(f"unknown model {spec.name!r}; choose one of {sorted(MODELS)}")
    return MODELS[spec.name](width=spec.width, num_classes=spec.num_classes)


def topology(model: nn.Module) -> Topology:
    return type(model).topology()
