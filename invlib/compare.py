"""One training step of a chain of layers, by plain autograd, checkpointing or inversion.

:func:`chain` differentiates the same list of layers three ways; :func:`step_memory`,
:func:`step_seconds` and :func:`compare_methods` measure ``loss = mean(chain(x)**2);
loss.backward()`` with :func:`invlib.memory.track_memory` for ``x.device``, with the parameter
gradients absent (``zero_grad()``'s default) or already allocated before the step (accumulation).
The book's memory chapters and ``benchmarks/`` use these, so they report the same quantities.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .activations import ELU, Asinh, LeakyReLU
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .memory import track_memory
from .sequential import InvertibleSequential

__all__ = ["METHODS", "chain", "mixed_net", "training_step", "StepMemory", "step_memory", "step_seconds",
           "interleaved_seconds", "StepReport", "compare_methods"]

METHODS = ("plain", "checkpoint", "invertible")


def chain(layers: Sequence[nn.Module], method: str) -> Callable[[Tensor], Tensor]:
    """The composition ``x -> layers[-1](... layers[0](x))``, differentiated by ``method``.

    * ``"plain"``: ``for layer in layers: x = layer(x)``; autograd keeps what every layer saves.
    * ``"checkpoint"``: ``torch.utils.checkpoint.checkpoint_sequential`` with ``round(sqrt(n))``
      segments, non-reentrant: keeps each segment's input and reruns the segment in backward.
    * ``"invertible"``: ``invlib.InvertibleSequential(*layers)``: keeps the output only and
      rebuilds each layer's input from its output with ``inverse`` in backward.

    The layers are shared, not copied, so every method sees the same weights.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one module, got an empty sequence")
    if method == "plain":
        def forward(x: Tensor) -> Tensor:
            for layer in layers:
                x = layer(x)
            return x
        return forward
    if method == "checkpoint":
        net = nn.Sequential(*layers)
        segments = max(1, round(math.sqrt(len(layers))))
        return lambda x: torch.utils.checkpoint.checkpoint_sequential(
            net, segments, x, use_reentrant=False)
    if method == "invertible":
        return InvertibleSequential(*layers)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def mixed_net(width: int = 8, *, seed: int = 0, invertible: bool = True,
              dtype: torch.dtype = torch.float64) -> nn.Module:
    """One of each kind of dense layer, as a user would stack them: ``InvertibleLinear``,
    ``LeakyReLU(0.5)``, ``AdditiveCoupling(MLP, MLP)``, ``LULinear``, ``Asinh``,
    ``AdditiveCoupling(MLP, MLP)``, ``ELU``, where ``MLP = Linear, Tanh, Linear`` on ``width/2``.

    Built from ``seed`` alone (the same network on every call), parameters moved off their
    orthogonal/zero initialisation so that no comparison passes by symmetry. ``invertible``:
    an :class:`invlib.InvertibleSequential`, else an ``nn.Sequential`` of the same layers (plain backprop).
    ``width`` must be even. Used by the training-loop tests and chapter, and by
    :func:`invlib.distributed.ddp_agreement` (it is picklable through ``functools.partial``).
    """
    if width < 2 or width % 2:
        raise ValueError(f"mixed_net: width must be an even int >= 2, got {width!r}")
    default = torch.get_default_dtype()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float64)  # the same draws whatever the caller's default
        try:
            half = width // 2
            mlp = lambda: nn.Sequential(nn.Linear(half, half), nn.Tanh(), nn.Linear(half, half))  # noqa: E731
            layers = [InvertibleLinear(width), LeakyReLU(0.5), AdditiveCoupling(mlp(), mlp()), LULinear(width),
                      Asinh(), AdditiveCoupling(mlp(), mlp()), ELU()]
            net = (InvertibleSequential if invertible else nn.Sequential)(*layers).to(dtype)
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        finally:
            torch.set_default_dtype(default)
    return net


def training_step(forward: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """One step: ``y = forward(x)``, ``loss = mean(y**2)``, ``loss.backward()``; returns the loss."""
    loss = forward(x).square().mean()
    loss.backward()
    return loss.item()


def _reset_grads(x: Tensor, params: Sequence[Tensor], accumulate: bool) -> None:
    x.grad = None
    for p in params:
        p.grad = torch.zeros_like(p) if accumulate else None


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step: ``peak_bytes``, ``live_bytes`` after it, and ``grad_bytes``,
    the parameter gradients it had to allocate (0 when they existed before the step)."""

    peak_bytes: int
    live_bytes: int
    grad_bytes: int

    @property
    def peak_above_grads(self) -> int:
        """Peak minus one copy of the parameter gradients (the step's working memory)."""
        return self.peak_bytes - self.grad_bytes


def step_memory(forward: Callable[[Tensor], Tensor], x: Tensor, params: Iterable[Tensor],
                accumulate: bool = False) -> StepMemory:
    """Measure one :func:`training_step` with :func:`invlib.memory.track_memory` on ``x.device``.

    ``params`` are the trainable parameters. With ``accumulate=False`` their gradients are set to
    ``None`` first, so the step allocates them (counted in ``grad_bytes``); with ``True`` they are
    allocated as zeros beforehand, outside the measurement, and the step adds into them.
    ``x.grad`` is reset to ``None`` either way, so an input gradient is part of the step.
    """
    params = [p for p in params if p.requires_grad]
    _reset_grads(x, params, accumulate)
    with track_memory(x.device) as tracker:
        training_step(forward, x)
    grad_bytes = 0 if accumulate else sum(p.numel() * p.element_size() for p in params)
    return StepMemory(tracker.peak_bytes, tracker.live_bytes, grad_bytes)


def step_seconds(forward: Callable[[Tensor], Tensor], x: Tensor,
                 params: Iterable[Tensor]) -> tuple[float, float]:
    """Wall-clock seconds and loss of one :func:`training_step` (gradients reset to ``None`` first)."""
    _reset_grads(x, list(params), accumulate=False)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    loss = training_step(forward, x)
    sync()
    return time.perf_counter() - start, loss


def interleaved_seconds(forwards: dict[str, Callable[[Tensor], Tensor]], x: Tensor, params: Sequence[Tensor],
                        steps: int, warmup: int, tick: Callable[[], None] = lambda: None,
                        ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of ``steps`` :func:`invlib.compare.step_seconds` per forward, and each forward's last loss.

    Rounds are interleaved (every forward once per round), so slow drifts of a shared machine hit
    all forwards alike; the first ``warmup`` rounds are not recorded. ``tick`` runs after every
    step (a progress bar).
    """
    times: dict[str, list[float]] = {name: [] for name in forwards}
    losses: dict[str, float] = {}
    for round_ in range(warmup + steps):
        for name, forward in forwards.items():
            seconds, losses[name] = step_seconds(forward, x, params)
            if round_ >= warmup:
                times[name].append(seconds)
            tick()
    return times, losses


@dataclass(frozen=True)
class StepReport:
    """Timings of several steps of one method, its loss, and its memory with fresh and allocated
    grads (the loss lets a caller check that every method computed the same function)."""

    seconds: tuple[float, ...]
    loss: float
    fresh: StepMemory
    accumulate: StepMemory

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def compare_methods(layers: Sequence[nn.Module], x: Tensor, methods: Sequence[str] = METHODS,
                    steps: int = 5, warmup: int = 1) -> dict[str, StepReport]:
    """Time and measure training steps of ``layers`` by each method, side by side.

    Runs ``warmup + steps`` rounds; each round runs one step of every method in turn, so slow
    drifts of the machine hit all methods alike, and the first ``warmup`` rounds are dropped.
    Memory is measured afterwards, one untimed step per method and gradient regime.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    params = list({id(p): p for layer in layers for p in layer.parameters()}.values())
    forwards = {m: chain(layers, m) for m in methods}
    times, losses = interleaved_seconds(forwards, x, params, steps, warmup)
    return {m: StepReport(tuple(times[m]), losses[m],
                          step_memory(forward, x, params, accumulate=False),
                          step_memory(forward, x, params, accumulate=True))
            for m, forward in forwards.items()}
