"""The stacks the benchmark trains, and the FLOP model of one step of each.

``width`` is the number of features per sample for every net: ``dense``, ``lu`` and
``coupling`` take ``(batch, width)``; ``conv1d`` takes ``(batch, C, width // C)``; ``conv2d``
takes ``(batch, C, S, S)`` with ``C * S * S == width``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invlib import costs
from invlib.activations import LeakyReLU
from invlib.conv import CircularConv1d, CircularConv2d
from invlib.coupling import AdditiveCoupling
from invlib.linear import InvertibleLinear
from invlib.lu_linear import LULinear
from invlib._prepare import kept_layers
from invlib.linear import prefer_inverse

NETS = ("dense", "lu", "coupling", "conv1d", "conv2d")
KERNEL_SIZE = 3
DEFAULT_CHANNELS = {"conv1d": 16, "conv2d": 4}


def conv_shape(net: str, width: int, channels: int | None) -> tuple[int, ...]:
    """``(C, *spatial)`` of one sample of ``width`` features; ``ValueError`` if it does not fit."""
    c = channels or DEFAULT_CHANNELS[net]
    if net == "conv1d":
        if width % c:
            raise ValueError(f"--widths {width} must be a multiple of --channels {c} for conv1d")
        return (c, width // c)
    side = math.isqrt(width // c)
    if c * side * side != width:
        raise ValueError(f"--widths {width} must be channels * side**2 for conv2d (channels={c}); "
                         f"try --widths {c * max(side, 1) ** 2}")
    return (c, side, side)


def build(net: str, depth: int, width: int, batch: int, channels: int | None = None,
          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[list[nn.Module], Tensor]:
    """Layers of ``net`` at ``depth`` (each an invertible layer and, but for coupling, a
    ``LeakyReLU(0.5)``) and an input batch that requires grad, on ``device`` in ``dtype``.

    A slope of 0.5 keeps the inverse's ``1/slope`` gain, compounded over depth, from driving
    values into denormals or inf, which would distort the timings.
    """
    if net == "coupling":
        if width % 2:
            raise ValueError(f"--widths {width} must be even for coupling blocks")
        half = width // 2

        def sub() -> nn.Module:
            return nn.Sequential(nn.Linear(half, half), nn.LeakyReLU())

        layers: list[nn.Module] = [AdditiveCoupling(sub(), sub()) for _ in range(depth)]
        shape: tuple[int, ...] = (width,)
    elif net in ("dense", "lu"):
        kind = InvertibleLinear if net == "dense" else LULinear
        layers = [m for _ in range(depth) for m in (kind(width), LeakyReLU(0.5))]
        shape = (width,)
    elif net in ("conv1d", "conv2d"):
        shape = conv_shape(net, width, channels)
        kind = CircularConv1d if net == "conv1d" else CircularConv2d
        layers = [m for _ in range(depth) for m in (kind(shape[0], KERNEL_SIZE), LeakyReLU(0.5))]
    else:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    layers = [layer.to(device=device, dtype=dtype) for layer in layers]
    x = torch.randn((batch, *shape), device=device, dtype=dtype, requires_grad=True)
    return layers, x


def model_flops(net: str, depth: int, width: int, batch: int, channels: int | None = None) -> dict[str, float]:
    """The cost model's FLOPs of one plain and one inverting step, and their ratio."""
    if net == "dense":
        steps = {m: costs.dense_step(width, depth, batch, m, **dense_plan(width, depth, batch))
                 for m in costs.STEP_METHODS}
    elif net == "lu":
        steps = {m: costs.dense_step(width, depth, batch, m, weight="lu") for m in costs.STEP_METHODS}
    elif net == "coupling":
        steps = {m: costs.coupling_step(width, depth, batch, m) for m in costs.STEP_METHODS}
    else:
        c, *spatial = conv_shape(net, width, channels)
        steps = {m: costs.conv_step(c, tuple(spatial), KERNEL_SIZE, depth, batch, m,
                                    refactorised=conv_refactorised(c, tuple(spatial), depth, batch))
                 for m in costs.STEP_METHODS}
    return {"plain": steps["plain"].total, "invertible": steps["invertible"].total,
            "ratio": costs.step_ratio(steps["invertible"], steps["plain"])}


def dense_plan(width: int, depth: int, batch: int, element: int = 4, keep: int = 0) -> dict:
    """What invlib does for a stack of ``depth`` dense layers of ``width`` on ``batch`` samples
    (``invlib.linear``): whether its steps multiply by inverses, and how many layers it factorises
    a second time because the check before the sweep did not keep their factors (it keeps at
    most ``keep`` bytes, ``scratch_bytes``; none by default). For :func:`invlib.costs.dense_step`."""
    formed = prefer_inverse(batch, width)
    size = width * width * element
    kept = kept_layers(depth, size + (0 if formed else 8 * width), 3 * size, batch * width * element, keep)
    return dict(inverse=formed, refactorised=depth - kept)


def conv_refactorised(channels: int, spatial: tuple[int, ...], depth: int, batch: int, element: int = 4,
                      keep: int = 0) -> int:
    """Convolutions whose frequency factors the check before the sweep did not keep (at most
    ``keep`` bytes; none by default), factorised again in their step; for
    :func:`invlib.costs.conv_step`."""
    freqs = math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
    kept = freqs * (2 * element * channels**2 + 8 * channels)
    return depth - min(depth, keep // kept)
