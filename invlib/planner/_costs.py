"""What each layer of a chain costs to cache, recompute or invert: measured, once per kind of layer.

For layer ``i`` of a chain, with input ``x_i`` and output ``x_{i+1}``, :func:`calibrate` runs the
layer alone on the activation it sees in the chain and records

* ``out_bytes`` ``a_{i+1}``: the output's bytes;
* what plain autograd saves (``torch.autograd.graph.saved_tensors_hooks``): whether the input
  and the output are among the saved tensors (``saves_input``, ``saves_output``), and the bytes of
  the other saved tensors it allocated (``internal``: hidden activations, masks);
* allocator-level transients (:class:`invlib.memory.MemoryTracker`): the forward's peak above
  what it keeps (``forward_extra``), the plain backward's peak above the cotangent and the saved
  tensors (``backward_extra``, parameter gradients accumulated into allocated ``.grad``
  included), and the reverse step's peak above its output and cotangent (``reverse_extra``:
  the rebuilt input, its cotangent, inversion scratch, the parameter gradients);
* seconds (the fastest of a few runs, the estimate least disturbed by a shared machine): forward with a tape (``t_forward``), without one
  (``t_replay``: what a recomputation or the inverting forward costs), plain backward
  (``t_backward``), and one reverse step (``t_reverse``).

Layers that are equal in type, configuration, parameter shapes and input shape are measured
once. The constant parts of a step (the loss, and each checkpoint or inverting container's fixed
cost) are measured alongside (:class:`Costs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..base import Invertible
from ..memory import MemoryTracker
from ..sequential import InvertibleSequential


@dataclass(frozen=True)
class LayerCost:
    """One layer's sizes (bytes) and times (seconds); see the module doc."""

    name: str
    invertible: bool
    in_bytes: int
    out_bytes: int
    saves_input: bool
    saves_output: bool
    internal: int
    forward_extra: int
    backward_extra: int
    reverse_extra: int
    t_forward: float
    t_replay: float
    t_backward: float
    t_reverse: float


@dataclass(frozen=True)
class Costs:
    """The chain's layer costs, plus the constant parts of a step: the loss's backward transient
    (``loss_extra`` bytes), its seconds (``t_loss``), and the fixed seconds of one checkpoint
    segment (``t_checkpoint``) and of one inverting container (``t_container``). ``scale``
    multiplies the layer seconds of cached, recomputed and inverted segments
    (:func:`invlib.planner.fit_seconds` sets it from whole steps)."""

    layers: tuple[LayerCost, ...]
    loss_extra: int
    t_loss: float
    t_checkpoint: float
    t_container: float
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __len__(self) -> int:
        return len(self.layers)


def flatten(module: nn.Module) -> list[nn.Module]:
    """The layers of nested ``nn.Sequential`` and :class:`~invlib.InvertibleSequential` containers,
    in the order they run, as one flat chain."""
    if type(module) is nn.Sequential or isinstance(module, InvertibleSequential):
        return [leaf for child in module for leaf in flatten(child)]
    return [module]


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _params(layer: nn.Module) -> list[Tensor]:
    return [p for p in layer.parameters() if p.requires_grad]


def _key(layer: nn.Module, x: Tensor) -> tuple:
    shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in layer.state_dict().items())
    return type(layer), repr(layer), shapes, tuple(x.shape), x.dtype, layer.training


def _saved(layer: nn.Module, x: Tensor) -> tuple[bool, bool, int]:
    """(saves its input, saves its output, bytes of other saved tensors it allocated)."""
    found: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        found.append(t)
        return t

    before = {t.untyped_storage().data_ptr() for t in (*layer.parameters(), *layer.buffers())}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    x_ptr, y_ptr = x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in found}
    internal = sum(n for p, n in storages.items() if p not in (x_ptr, y_ptr) and p not in before and p)
    return x_ptr in storages, y_ptr in storages, internal


def _measure(layer: nn.Module, x: Tensor, repeats: int, t_container: float) -> LayerCost:
    x = x.detach().requires_grad_(x.is_floating_point())
    params = _params(layer)
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)  # allocated beforehand, as in a step that accumulates
    rng = torch.random.get_rng_state()
    saves_input, saves_output, internal = _saved(layer, x)
    with torch.no_grad():
        y0 = layer(x)
    out_bytes = y0.numel() * y0.element_size()
    g = torch.randn_like(y0)
    with MemoryTracker() as m:
        y = layer(x)
    forward_extra = max(0, m.peak_bytes - m.live_bytes)
    backward_extra = 0
    if y.requires_grad:
        with MemoryTracker() as m:
            torch.autograd.backward(y, g)
        backward_extra = m.peak_bytes
    del y

    def taped() -> None:
        layer(x)

    def replay() -> None:
        with torch.no_grad():
            layer(x)

    def plain_step() -> None:
        y = layer(x)
        if y.requires_grad:
            torch.autograd.backward(y, g)

    t_forward = _seconds(taped, repeats)
    t_replay = _seconds(replay, repeats)
    t_backward = max(0.0, _seconds(plain_step, repeats) - t_forward)
    invertible = isinstance(layer, Invertible)
    reverse_extra, t_reverse = 0, float("inf")
    if invertible:
        net = InvertibleSequential(layer)
        y = net(x)
        with MemoryTracker() as m:
            torch.autograd.backward(y, g)
        reverse_extra = m.peak_bytes
        del y

        def inverted_step() -> None:
            torch.autograd.backward(net(x), g)

        t_reverse = max(0.0, _seconds(inverted_step, repeats) - t_replay - t_container)
    for p, before in zip(params, grads):
        p.grad = before
    torch.random.set_rng_state(rng)
    return LayerCost(type(layer).__name__, invertible, x.numel() * x.element_size(), out_bytes,
                     saves_input, saves_output, internal, forward_extra, backward_extra, reverse_extra,
                     t_forward, t_replay, t_backward, t_reverse)


def _loss(y: Tensor, repeats: int) -> tuple[int, float]:
    y = y.detach().requires_grad_(True)
    with MemoryTracker() as m:
        y.square().mean().backward()
    return m.peak_bytes, _seconds(lambda: y.square().mean().backward(), repeats)


def _fixed_costs(x: Tensor, repeats: int) -> tuple[float, float]:
    """Seconds a checkpoint segment and an inverting container add to a step, beyond their layers:
    measured on a cheap parameter-free invertible layer as ``2 t(one layer) - t(two layers)``."""
    from torch.utils.checkpoint import checkpoint

    from ..activations import LeakyReLU

    small = torch.randn(8, 8, dtype=x.dtype if x.is_floating_point() else None, requires_grad=True)
    a, b = LeakyReLU(0.5), LeakyReLU(0.5)

    def ckpt(layers: list[nn.Module]) -> Callable[[], None]:
        def run(t: Tensor) -> Tensor:
            for layer in layers:
                t = layer(t)
            return t
        return lambda: checkpoint(run, small, use_reentrant=False).sum().backward()

    def inverted(layers: list[nn.Module]) -> Callable[[], None]:
        net = InvertibleSequential(*layers)
        return lambda: net(small).sum().backward()

    t_ck = 2 * _seconds(ckpt([a]), repeats) - _seconds(ckpt([a, b]), repeats)
    t_inv = 2 * _seconds(inverted([a]), repeats) - _seconds(inverted([a, b]), repeats)
    return max(0.0, t_ck), max(0.0, t_inv)


def measure_layers(layers: Sequence[nn.Module], example_input: Tensor, repeats: int = 5) -> Costs:
    """Measure every layer of the chain ``layers`` on the activations ``example_input`` produces
    (layers equal in kind and shape are measured once), the loss ``mean(y**2)`` and the fixed
    costs; parameter gradients, random state and buffers are left as they were (modules in
    training mode run their forward a few times, so batch norm's running statistics move)."""
    layers = list(layers)
    if not layers:
        raise ValueError("invlib.plan: the chain has no layers")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"invlib.plan: example_input must be a torch.Tensor, got {type(example_input).__name__}")
    buffers = [(b, b.detach().clone()) for layer in layers for b in layer.buffers()]
    t_checkpoint, t_container = _fixed_costs(example_input, repeats)
    measured: dict[tuple, LayerCost] = {}
    found = []
    x = example_input.detach()
    for layer in layers:
        key = _key(layer, x)
        if key not in measured:
            measured[key] = _measure(layer, x, repeats, t_container)
        found.append(measured[key])
        with torch.no_grad():
            x = layer(x)
    loss_extra, t_loss = _loss(x, repeats)
    with torch.no_grad():
        for b, value in buffers:
            b.copy_(value)
    return Costs(tuple(found), loss_extra, t_loss, t_checkpoint, t_container)
