"""Every way the book trains without (all of) the activation cache, on one small network each.

The reader's guide (the book's page *Should I use this?*) compares eight methods on blocks of width
``W = 64`` and a batch of ``B = 64``:

* :func:`stored_per_block`: what one more block adds to a training step's peak memory,
  ``(peak(8) - peak(2)) / 6``, in activations of the batch (``B * W`` floats), measured with
  :class:`invlib.memory.MemoryTracker`, gradients allocated beforehand;
* :func:`flop_ratio`: FLOPs of a training step at depth 8 over plain backprop's, counted with
  ``FlopCounterMode`` plus what it cannot see (LU factorisations and triangular solves of dense
  layers from :func:`invlib.costs.dense`; the FFT model :func:`invlib.costs.conv_step` for
  convolutions);
* :func:`gradient_error`: the relative error ``|g - g*| / |g*|`` of the float32 gradient (weights
  and input together) against float64 plain autograd on the same weights.

Step *times* are measured by :mod:`invlib.bench` (``invlib.bench.run``), which runs the same
kinds of network at any size, on CPU or GPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from . import costs
from ._bench.peers import peer_forward
from .activations import LeakyReLU
from .compare import chain, step_memory
from .conv import CircularConv1d
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear
from .lu_linear import LULinear

__all__ = ["METHODS", "W", "B", "CHANNELS", "DEPTHS", "build", "stored_per_block", "flop_ratio",
           "gradient_error", "lu_plain_ratio"]

W, B, CHANNELS = 64, 64, 8
DEPTHS = (2, 8)
METHODS = ("plain autograd", "checkpointing", "invlib coupling", "invlib dense, LU solve",
           "invlib dense, LU factors", "invlib circular conv", "MemCNN", "RevLib")
_DENSE = {"invlib dense, LU solve": lambda: InvertibleLinear(W),
          "invlib dense, LU factors": lambda: LULinear(W),
          "invlib circular conv": lambda: CircularConv1d(CHANNELS, 3)}


def _branch() -> nn.Module:
    return nn.Sequential(nn.Linear(W // 2, W // 2), nn.LeakyReLU(0.5))


def build(method: str, depth: int) -> tuple[Callable[[Tensor], Tensor], Tensor, list[nn.Module]]:
    """``(forward, x, layers)``: ``depth`` blocks trained by ``method``, seeded by the depth.

    Coupling methods share one kind of block (two ``Linear + LeakyReLU(0.5)`` halves); the dense
    and convolutional rows are ``depth`` layers each followed by ``invlib.LeakyReLU(0.5)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.manual_seed(depth)
    x = torch.randn(B, W, requires_grad=True)
    if method in _DENSE:
        layers = [m for _ in range(depth) for m in (_DENSE[method](), LeakyReLU(0.5))]
        if method == "invlib circular conv":
            x = torch.randn(B, CHANNELS, W // CHANNELS, requires_grad=True)
        return chain(layers, "invertible"), x, layers
    layers = [AdditiveCoupling(_branch(), _branch()) for _ in range(depth)]
    if method in ("MemCNN", "RevLib"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return peer_forward(method.lower(), layers), x, layers
    kind = {"plain autograd": "plain", "checkpointing": "checkpoint", "invlib coupling": "invertible"}[method]
    return chain(layers, kind), x, layers


def _params(layers: list[nn.Module]) -> list[Tensor]:
    return [p for layer in layers for p in layer.parameters()]


def stored_per_block(method: str) -> float:
    """Growth of the step's peak from depth 2 to 8, per block, in activations of the batch."""
    peaks = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        for depth in DEPTHS:
            forward, x, layers = build(method, depth)
            peaks.append(step_memory(forward, x, _params(layers), accumulate=True).peak_above_grads)
    return (peaks[1] - peaks[0]) / (DEPTHS[1] - DEPTHS[0]) / (B * W * 4)


def _counted(forward: Callable[[Tensor], Tensor], x: Tensor) -> int:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        with FlopCounterMode(display=False) as counter:
            forward(x).square().mean().backward()
    return counter.get_total_flops()


def flop_ratio(method: str) -> float:
    """FLOPs of one training step at depth 8 over plain backprop's through the same kind of layer."""
    d = DEPTHS[1]
    forward, x, _ = build(method, d)
    if method == "invlib circular conv":   # the FFT model: FFTs, frequency responses, complex LU, solves
        steps = [costs.conv_step(CHANNELS, (W // CHANNELS,), 3, d, B, m) for m in ("invertible", "plain")]
        return costs.step_ratio(*steps)
    if method in ("invlib dense, LU solve", "invlib dense, LU factors"):
        c = costs.dense(W, depth=d, batch=B)
        plain = c.flops_forward + c.flops_backward
        # unseen by the counter: LU solve factorises twice per step (the check, then the reverse
        # step) and solves; stored factors only solve
        unseen = 2 * c.flops_lu + c.flops_solve if method.endswith("solve") else c.flops_solve
        return (_counted(forward, x) + unseen) / plain
    plain_forward, x_plain, _ = build("plain autograd", d)
    return _counted(forward, x) / _counted(plain_forward, x_plain)


def lu_plain_ratio() -> float:
    """FLOPs of plain backprop through ``LULinear`` layers (``W = PLU`` rebuilt and differentiated
    at every call) over plain backprop through dense layers, at depth 8."""
    d = DEPTHS[1]
    torch.manual_seed(0)
    layers = [m for _ in range(d) for m in (LULinear(W), LeakyReLU(0.5))]
    c = costs.dense(W, depth=d, batch=B)
    return _counted(chain(layers, "plain"), torch.randn(B, W, requires_grad=True)) / (c.flops_forward + c.flops_backward)


def _gradient(forward: Callable[[Tensor], Tensor], x: Tensor, layers: list[nn.Module]) -> Tensor:
    params = _params(layers)
    x.requires_grad_()
    for p in params:
        p.grad = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        forward(x).square().mean().backward()
    return torch.cat([x.grad.flatten()] + [p.grad.flatten() for p in params]).double()


def gradient_error(method: str) -> float:
    """Relative error of the float32 gradient (input and weights) against float64 plain autograd.

    The reference is computed first, on float64 copies; the method then gets a fresh copy of the
    input (MemCNN frees its input's storage during the forward pass).
    """
    forward, x, layers = build(method, DEPTHS[1])
    x = x.detach().clone()
    exact_layers = [copy.deepcopy(layer).double() for layer in layers]
    exact = _gradient(chain(exact_layers, "plain"), x.double(), exact_layers)
    got = _gradient(forward, x.clone(), layers)
    return float(torch.linalg.vector_norm(got - exact) / torch.linalg.vector_norm(exact))
