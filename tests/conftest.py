import logging

import pytest
import torch

from benchmarks.models import ModelSpec, build_model


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    logging.getLogger("benchmarks").setLevel(logging.WARNING)


@pytest.fixture
def tiny():
    spec = ModelSpec("tinycnn", 1.0)
    return spec, build_model(spec).eval()


@pytest.fixture
def small_resnet():
    spec = ModelSpec("resnet9", 0.125)
    return spec, build_model(spec).eval()


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode outputs depend on every channel."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
