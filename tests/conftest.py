"""Shared fixtures for the invlib tests."""

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test in float64 with a fixed seed, restoring the default dtype afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
