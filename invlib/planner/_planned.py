"""Running a plan: a chain whose segments are cached, checkpointed or inverted.

``Planned(layers, plan)`` holds the layers (one ``nn.ModuleList``, so parameters, state dicts and
``.to()`` are those of the chain) and differentiates each segment of the plan its way:

* ``cache``: the layers run as they are, under autograd;
* ``recompute``: ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which replays
  the random-number state (dropout draws the same masks) and the autocast state; on top of that
  the recomputation runs with each sub-module's training mode and its training-mode buffers as
  they were before the forward, and the buffers' current values are put back after it, so batch
  norm normalises with the same statistics and its running statistics move once per step;
* ``invert``: an :class:`~invlib.InvertibleSequential` over the segment's layers (built once,
  not registered as a sub-module), with every guarantee of that container.

Layers that are not :class:`~invlib.Invertible` can be cached or recomputed, never inverted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..sequential import InvertibleSequential
from ._costs import flatten
from ._search import KINDS, Plan


class Planned(nn.Module):
    """The chain ``layers`` run by ``plan`` (a :class:`Plan` or its segments ``(kind, first, last)``).
    ``layers``: a sequence of modules, or a module whose nested ``nn.Sequential`` and
    ``InvertibleSequential`` containers are flattened (:func:`invlib.planner.flatten`), as
    :func:`invlib.plan` flattens it.

    ``forward(x)`` returns ``f_{D-1}(... f_0(x))``; without autograd (``torch.no_grad()``, or nothing
    requiring grad) the layers simply run in order. Iterating yields the layers, so
    ``for layer in planned: x = layer(x)`` is the plain baseline over the same modules.
    """

    def __init__(self, layers: nn.Module | Sequence[nn.Module], plan: Plan | Sequence[tuple[str, int, int]]) -> None:
        super().__init__()
        # a module is flattened as invlib.plan flattens it, so the plan's layer indices match
        layers = flatten(layers) if isinstance(layers, nn.Module) else list(layers)
        segments = tuple(plan.segments if isinstance(plan, Plan) else (tuple(s) for s in plan))
        expected = 0
        for kind, first, last in segments:
            if kind not in KINDS or first != expected or last < first or last >= len(layers):
                raise ValueError(f"Planned: segments must be (kind, first, last) with kind in {KINDS}, covering "
                                 f"layers 0..{len(layers) - 1} in order; got {segments}")
            expected = last + 1
        if expected != len(layers):
            raise ValueError(f"Planned: the segments cover layers 0..{expected - 1} of {len(layers)}; got {segments}")
        self.layers = nn.ModuleList(layers)
        self.segments = segments
        # The inverting containers share the layers; kept out of the module tree (no duplicate
        # parameters or state-dict keys). InvertibleSequential refuses layers that are not Invertible.
        self._inverted = {first: InvertibleSequential(*layers[first:last + 1])
                          for kind, first, last in segments if kind == "invert"}

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def extra_repr(self) -> str:
        return ", ".join(f"{kind} {first}-{last}" for kind, first, last in self.segments)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            for layer in self.layers:
                x = layer(x)
            return x
        for kind, first, last in self.segments:
            if kind == "cache":
                for layer in self.layers[first:last + 1]:
                    x = layer(x)
            elif kind == "invert":
                x = self._inverted[first](x)
            else:
                layers = list(self.layers[first:last + 1])
                x = checkpoint(_Run(layers), x, use_reentrant=False, context_fn=_replay_context(layers))
        return x


class _Run:
    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _replay_context(layers: list[nn.Module]):
    """``context_fn`` for ``checkpoint``: the forward records each sub-module's mode and copies the
    buffers of those in training mode; the recomputation runs with them and restores the current ones."""
    modules = [m for layer in layers for m in layer.modules()]
    record: dict[str, list] = {}

    def make():
        @contextmanager
        def forward():
            record["modes"] = [m.training for m in modules]
            record["buffers"] = [(m, name, b.detach().clone()) for m in modules if m.training
                                 for name, b in m._buffers.items() if b is not None]
            yield

        @contextmanager
        def recompute():
            modes = [m.training for m in modules]
            for m, mode in zip(modules, record["modes"]):
                m.training = mode
            current = []
            with torch.no_grad():
                for m, name, old in record["buffers"]:
                    b = m._buffers[name]
                    current.append((b, b.detach().clone()))
                    b.copy_(old)
            try:
                yield
            finally:
                with torch.no_grad():
                    for b, value in current:
                        b.copy_(value)
                for m, mode in zip(modules, modes):
                    m.training = mode

        return forward(), recompute()

    return make
