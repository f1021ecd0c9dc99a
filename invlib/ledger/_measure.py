"""Measurements that several claims share (cached), and the FLOP estimates the cost model lacks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import costs
from .. import reference as ref
from ..compare import chain, step_memory
from ..coupling import AdditiveCoupling
from ..sequential import InvertibleSequential


def coupling_blocks(width: int, depth: int, seed: int = 0) -> list[AdditiveCoupling]:
    torch.manual_seed(seed)
    half = width // 2
    mlp = lambda: nn.Sequential(nn.Linear(half, half), nn.LeakyReLU(0.5))  # noqa: E731
    return [AdditiveCoupling(mlp(), mlp()) for _ in range(depth)]


@functools.lru_cache(maxsize=None)
def coupling_peaks(width: int = 64, batch: int = 64) -> dict[tuple[str, int], float]:
    """Peak of one training step above the gradients, in activations of the batch, for plain
    autograd and :class:`~invlib.InvertibleSequential` over coupling blocks at depths 2 and 8
    (:func:`invlib.compare.step_memory`, exact bytes)."""
    act = width * batch * 4
    out = {}
    for depth in (2, 8):
        blocks = coupling_blocks(width, depth)
        params = [p for b in blocks for p in b.parameters()]
        x = torch.randn(batch, width, requires_grad=True)
        for method in ("plain", "checkpoint", "invertible"):
            peak = step_memory(chain(blocks, method), x, params, accumulate=True).peak_above_grads
            out[method, depth] = peak / act
    return out


def step_flops(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        forward(x).square().mean().backward()
    return counter.get_total_flops()


@functools.lru_cache(maxsize=None)
def coupling_flops(width: int = 64, batch: int = 64) -> dict[tuple[str, int], int]:
    """Matrix-multiply FLOPs of one training step (``FlopCounterMode``), plain and invertible,
    over coupling blocks at depths 4 and 8."""
    out = {}
    for depth in (4, 8):
        blocks = coupling_blocks(width, depth)
        x = torch.randn(batch, width, requires_grad=True)
        out["plain", depth] = step_flops(chain(blocks, "plain"), x)
        out["invertible", depth] = step_flops(InvertibleSequential(*blocks), x)
    return out


def inversion_overhead(cost: costs.Cost) -> float:
    """FLOPs of inverting a dense stack (LU + solves) per FLOP of its training step."""
    return (cost.flops_lu + cost.flops_solve) / (cost.flops_forward + cost.flops_backward)


def conv_inverse_flops(channels: int, spatial: tuple[int, ...], batch: int) -> float:
    """Leading-order FLOPs of inverting one circular convolution in the Fourier domain.

    With ``n_f`` the ``rfftn`` frequencies of the spatial shape (``N`` pixels): complex LU of
    every ``C x C`` response, ``(8/3) C^3 n_f`` (a complex multiply-add is 8 real FLOPs); two
    complex triangular solves per sample and frequency, ``8 B C^2 n_f``; a forward and an inverse
    real FFT of every channel, ``2 * 2.5 B C N log2 N``. Forming the responses
    (``8 C^2 k n_f``) is left out. An estimate, not a count: ``FlopCounterMode`` sees none of it.
    """
    n = math.prod(spatial)
    n_f = math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
    c, b = channels, batch
    return 8 / 3 * c**3 * n_f + 8 * b * c * c * n_f + 5 * b * c * n * math.log2(n)


def raises(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except ValueError:
        return True
    return False


def tiny_net(depth: int = 6, width: int = 8, seed: int = 0):
    layers = ref.random_layers(width=width, depth=depth, seed=seed)
    x = np.random.default_rng(1).standard_normal(width)
    return layers, x
