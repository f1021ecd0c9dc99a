"""Mixed precision: how much gradient error inversion adds under ``torch.autocast``.

Under autocast a layer's matmul or convolution runs in half precision, so its output is rounded
to about three (bfloat16) or four (float16) digits. The plain loop keeps every layer's input; an
invertible network rebuilds it from that rounded output, through the inverse. The measure is
the relative error of all parameter gradients together against the same step without autocast
(float32), for both methods:

    error = ||g_autocast - g_float32|| / ||g_float32||.

Two parts make up the plain loop's error: the rounding of the weights, the same for every sample
(a bias, which does not average out over the batch), and the rounding of each sample's
activations. Inversion adds only the second kind, per sample and independent, so its share of
the batch-summed gradient falls like ``1/sqrt(batch)``: the ratio ``invlib / plain`` depends on
the batch size as well as on the layer, and :func:`autocast_survey` reports it at a stated batch
over several seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .activations import ELU, Asinh, LeakyReLU
from .conv import CircularConv1d, CircularConv2d
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .sequential import InvertibleSequential

__all__ = ["AUTOCAST_KINDS", "autocast_errors", "autocast_stack", "autocast_survey"]


def _coupling() -> AdditiveCoupling:
    return AdditiveCoupling(nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 8), nn.Tanh()))


#: Layer type -> (block, activation after it, shape of one sample). Four such pairs make a stack.
AUTOCAST_KINDS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = {
    "InvertibleLinear + LeakyReLU": (lambda: InvertibleLinear(16), lambda: LeakyReLU(0.5), (16,)),
    "LULinear + LeakyReLU": (lambda: LULinear(16), lambda: LeakyReLU(0.5), (16,)),
    "AdditiveCoupling + LeakyReLU": (_coupling, lambda: LeakyReLU(0.5), (16,)),
    "CircularConv1d + Asinh": (lambda: CircularConv1d(4, 3), Asinh, (4, 16)),
    "CircularConv2d + Asinh": (lambda: CircularConv2d(4, 3), Asinh, (4, 8, 8)),
    "InvertibleLinear + Asinh": (lambda: InvertibleLinear(16), Asinh, (16,)),
    "InvertibleLinear + ELU": (lambda: InvertibleLinear(16), ELU, (16,)),
}


def autocast_stack(kind: str, batch: int, *, device: str | torch.device = "cpu",
                   blocks: int = 4) -> tuple[InvertibleSequential, tuple[int, ...]]:
    """``blocks`` pairs (layer, activation) of ``kind`` (a key of :data:`AUTOCAST_KINDS`) in an
    :class:`invlib.InvertibleSequential`, the same parameters on every call (seeded, moved off
    their orthogonal/zero initialisation by ``0.05 * N(0, 1)``), and the input shape for ``batch``.
    """
    if kind not in AUTOCAST_KINDS:
        raise ValueError(f"autocast_stack: kind must be one of {list(AUTOCAST_KINDS)}, got {kind!r}")
    block, activation, sample = AUTOCAST_KINDS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        stack = InvertibleSequential(*[m for _ in range(blocks) for m in (block(), activation())])
        with torch.no_grad():
            for p in stack.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return stack.to(device), (batch, *sample)


def autocast_errors(net: InvertibleSequential, x: Tensor, target: Tensor,
                    dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Relative gradient error under ``torch.autocast(x.device.type, dtype)``, against the same
    step without autocast, for the plain loop over ``net``'s layers and for ``net`` itself.

    Step: ``loss = mean((y - target)**2)`` in float32; error: ``||g - g_ref|| / ||g_ref||`` over
    all parameter gradients concatenated. Returns ``{"plain": ..., "invlib": ...}``.
    """
    def plain(t: Tensor) -> Tensor:
        for layer in net:
            t = layer(t)
        return t

    def gradients(forward: Callable[[Tensor], Tensor], enabled: bool) -> Tensor:
        for p in net.parameters():
            p.grad = None
        with torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
            y = forward(x)
        (y.float() - target).square().mean().backward()
        return torch.cat([p.grad.float().flatten() for p in net.parameters()])

    reference = gradients(plain, enabled=False)
    return {name: float((gradients(forward, enabled=True) - reference).norm() / reference.norm())
            for name, forward in (("plain", plain), ("invlib", net))}


def autocast_survey(kinds: Iterable[str] = AUTOCAST_KINDS, dtypes: Sequence[torch.dtype] = (torch.bfloat16,),
                    *, batch: int = 1024, seeds: Iterable[int] = range(5),
                    device: str | torch.device = "cpu") -> list[dict]:
    """:func:`autocast_errors` of each kind's stack (:func:`autocast_stack`) for each dtype, over
    ``seeds`` (the input and target drawn from each), at ``batch`` samples.

    One row per (kind, dtype): ``layer``, ``dtype``, ``batch``, the per-seed ``plain`` and
    ``invlib`` errors, and ``ratio_median`` / ``ratio_max`` of ``invlib / plain`` over the seeds.
    """
    rows = []
    for kind in kinds:
        stack, shape = autocast_stack(kind, batch, device=device)
        for dtype in dtypes:
            plain, invlib = [], []
            for seed in seeds:
                g = torch.Generator(device=device).manual_seed(seed)
                x = torch.randn(shape, generator=g, device=device)
                target = torch.randn(shape, generator=g, device=device)
                error = autocast_errors(stack, x, target, dtype=dtype)
                plain.append(error["plain"])
                invlib.append(error["invlib"])
            ratios = [b / a for a, b in zip(plain, invlib)]
            rows.append({"layer": kind, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                         "plain": plain, "invlib": invlib,
                         "ratio_median": statistics.median(ratios), "ratio_max": max(ratios)})
    return rows
