"""Shared fixtures for the invlib tests."""

import pytest
import torch
from torch import nn


@pytest.fixture
def float64():
    """Run a test in float64 with a fixed seed, restoring the default dtype afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def perturbed(layer: nn.Module, scale: float = 0.1) -> nn.Module:
    """Move parameters off their (orthogonal, zero-bias) init so no test passes by symmetry."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer
