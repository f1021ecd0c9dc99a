"""The book's test networks at any size, each with the cost model's view of it.

A :class:`Network` is a list of shape-preserving invertible layers, an input batch, and the
:class:`invlib.costs.Cost` of the same stack, so that a chapter can put a measured training step
(:func:`invlib.compare.step_memory`) next to the model's prediction without building either by
hand. Four kinds, each ``depth`` repetitions of one block (activation LeakyReLU):

* ``"dense"``: :class:`~invlib.InvertibleLinear` ``(w, w)`` + LeakyReLU, input ``(B, w)``;
* ``"coupling"``: :class:`~invlib.AdditiveCoupling` with ``F, G = Linear(w/2, w/2) + LeakyReLU``;
* ``"conv1d"``: :class:`~invlib.CircularConv1d` ``(C, C, k)`` + LeakyReLU, input ``(B, C, L)``;
* ``"conv2d"``: :class:`~invlib.CircularConv2d` ``(C, C, k, k)`` + LeakyReLU, input ``(B, C, H, W)``.

:data:`POST_NETWORKS` holds the seed post's three configurations at the post's sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import costs
from ._reverse_step import ReconstructionWarning
from .activations import LeakyReLU
from .compare import METHODS, chain, step_memory
from .conv import CircularConv1d, CircularConv2d
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear

__all__ = ["KINDS", "POST_NETWORKS", "Network", "build", "network_cost", "model_bytes"]

KINDS = ("dense", "coupling", "conv1d", "conv2d")
#: Keyword arguments of :func:`build` for the seed post's configurations, from its back-of-the-envelope section.
POST_NETWORKS = {
    "dense, width 64": dict(kind="dense", width=64),
    "dense, width 256": dict(kind="dense", width=256),
    "conv1d, 64 channels, length 256, 8 taps": dict(kind="conv1d", channels=64, size=(256,), kernel=8),
    "conv2d, 64 channels, 256x256, 8x8 taps": dict(kind="conv2d", channels=64, size=(256, 256), kernel=8),
}


@dataclass
class Network:
    """Layers, an input ``x`` (requires grad), and the cost model of the same stack.

    ``modules_per_layer`` counts the modules of one block as ``checkpoint_sequential`` sees them
    (2 for a layer and its activation listed separately, 1 for a coupling block).
    """

    kind: str
    layers: list[nn.Module]
    x: Tensor
    cost: costs.Cost
    modules_per_layer: int

    @property
    def parameters(self) -> list[Tensor]:
        return [p for layer in self.layers for p in layer.parameters()]

    @property
    def layer_output_bytes(self) -> int:
        return self.cost.layer_output * self.x.element_size()

    def param_bytes(self) -> int:
        """Bytes of every parameter (weights and biases): one copy; the gradients are another."""
        return sum(p.numel() * p.element_size() for p in self.parameters)

    def model_bytes(self) -> dict[str, int]:
        """The cost model's activation bytes for each method: :func:`model_bytes` of this stack."""
        return model_bytes(self.cost, self.modules_per_layer, self.x.element_size())

    def measure(self, methods: Sequence[str] = METHODS) -> dict[str, int]:
        """Allocator-level peak bytes of one training step per method, above one copy of the
        gradients (allocated before the step, which accumulates into them). Only the memory is
        used: deep nets with these random weights rebuild inaccurate activations (their values
        grow from layer to layer), and the sweep's warning about that is silenced here."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReconstructionWarning)
            return {m: step_memory(chain(self.layers, m), self.x, self.parameters, accumulate=True).peak_above_grads
                    for m in methods}


def model_bytes(cost: costs.Cost, modules_per_layer: int, element_size: int = 4) -> dict[str, int]:
    """The cost model's activation bytes for each method of ``invlib.compare.METHODS``.

    * ``plain``: what autograd saves (``Cost.saved``);
    * ``checkpoint``: :func:`invlib.costs.checkpoint_elements` with ``round(sqrt(m))`` segments;
    * ``invertible``: the inverting backward's working set plus the inverse's scratch,
      ``Cost.inversion_elements()`` (chunked for circular convolutions).
    """
    checkpoint = costs.checkpoint_elements(cost, modules_per_layer=modules_per_layer)
    return {"plain": element_size * cost.saved, "checkpoint": element_size * checkpoint,
            "invertible": element_size * cost.inversion_elements(chunked=True)}


def network_cost(kind: str, *, depth: int, batch: int, width: int | None = None, channels: int | None = None,
                 size: Sequence[int] | None = None, kernel: int = 3) -> tuple[costs.Cost, int]:
    """The cost model of :func:`build`'s network, and its ``modules_per_layer``, without building it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind in ("dense", "coupling"):
        if width is None:
            raise ValueError(f"build: kind={kind!r} needs width=, got width=None")
        if kind == "dense":
            return costs.dense(width, depth, batch), 2
        if width % 2:
            raise ValueError(f"build: a coupling block splits its width in halves, so width must be even, got {width}")
        return costs.coupling(width, depth, batch), 1
    dims = 1 if kind == "conv1d" else 2
    if channels is None or size is None or len(size) != dims:
        raise ValueError(f"build: kind={kind!r} needs channels= and size= with {dims} entries, "
                         f"got channels={channels}, size={size}")
    model = costs.conv1d if dims == 1 else costs.conv2d
    return model(channels, *size, kernel, depth, batch, padding="circular"), 2


def build(kind: str, *, depth: int, batch: int, width: int | None = None, channels: int | None = None,
          size: Sequence[int] | None = None, kernel: int = 3, slope: float = 0.5, seed: int = 0,
          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Network:
    """Build ``depth`` blocks of ``kind`` (see the module docstring) and a random input batch.

    ``width`` for ``"dense"`` and ``"coupling"`` (even); ``channels``, ``size`` (``(L,)`` or
    ``(H, W)``) and ``kernel`` for the convolutions. Weights come from ``torch.manual_seed(seed)``.
    """
    cost, per = network_cost(kind, depth=depth, batch=batch, width=width, channels=channels, size=size,
                             kernel=kernel)
    torch.manual_seed(seed)
    act = lambda: LeakyReLU(slope)  # noqa: E731
    if kind == "dense":
        layers = [m for _ in range(depth) for m in (InvertibleLinear(width), act())]
        shape = (batch, width)
    elif kind == "coupling":
        half = width // 2
        mlp = lambda: nn.Sequential(nn.Linear(half, half), nn.LeakyReLU(slope))  # noqa: E731
        layers = [AdditiveCoupling(mlp(), mlp()) for _ in range(depth)]
        shape = (batch, width)
    else:
        conv = CircularConv1d if kind == "conv1d" else CircularConv2d
        layers = [m for _ in range(depth) for m in (conv(channels, kernel), act())]
        shape = (batch, channels, *size)
    layers = [layer.to(device=device, dtype=dtype) for layer in layers]
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    return Network(kind, layers, x, cost, per)
