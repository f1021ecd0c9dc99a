"""Where a stack of invertible layers loses digits: per layer, a condition estimate and round-trip errors.

Backward by inversion is only as accurate as the activations it rebuilds. For layer ``i`` with
input ``x_i`` and output ``x_{i+1} = f_i(x_i)``, :func:`diagnose` reports

* ``condition``: the layer's condition number where it has a data-independent one: the 1-norm
  estimate ``cond_1(W) = ||W||_1 ||W^{-1}||_1`` of a dense or circular-convolution weight, from
  the same LU factors and Hager-Higham estimator its inverse uses (``invlib._verdict``, ``invlib._condition``), and
  ``max(a, 1/a)`` for a LeakyReLU of slope ``a``; ``None`` for layers whose conditioning depends
  on the data or on sub-networks (coupling blocks, ``Asinh``, ``ELU``);
* ``round_trip``: ``||f_i^{-1}(f_i(x_i)) - x_i|| / ||x_i||``, the error one inversion adds;
* ``rebuilt``: ``||x~_i - x_i|| / ||x_i||`` where ``x~_i`` is rebuilt from the network's output
  through the inverses of layers ``D-1, ..., i``, as the constant-memory backward rebuilds it
  (restarting from the stored activation at every anchor when the network has ``anchor_every``).

Rounding error grows roughly like the product of the condition numbers it passes through
(bi-Lipschitz bounds: Behrmann et al., "Understanding and mitigating exploding inverses in
invertible neural networks", AISTATS 2021): a ``rebuilt`` error far above ``round_trip`` says
the stack is too deep or too badly conditioned for its dtype; anchoring, better-conditioned
weights or slopes nearer 1 bring it down. The diagnostic runs one forward and ``2 D`` inverses
without gradients and keeps every activation: use it on a small batch, not inside training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._lu import lu_factor
from ._verdict import LUTally, check_lu
from .activations import LeakyReLU
from .base import Invertible, work_dtype
from .conv import _CircularConv
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .sequential import InvertibleSequential

__all__ = ["LayerDiagnosis", "Diagnosis", "diagnose", "condition_estimate"]


@dataclass(frozen=True)
class LayerDiagnosis:
    """One row of a :class:`invlib.Diagnosis`: layer ``index`` and its class name ``kind``;
    ``condition``, its condition number (``None`` where none is defined without the data);
    ``round_trip``, ``||f^{-1}(f(x_i)) - x_i|| / ||x_i||``; ``rebuilt``, the relative error of
    ``x_i`` rebuilt from the network's output, as the backward pass rebuilds it."""

    index: int
    kind: str
    condition: float | None
    round_trip: float
    rebuilt: float


@dataclass(frozen=True)
class Diagnosis:
    """Per-layer rows, printed as a table; ``anchor_every`` is the network's option (``None``: none)."""

    rows: tuple[LayerDiagnosis, ...]
    anchor_every: int | None = None

    @property
    def condition(self) -> list[float | None]:
        return [r.condition for r in self.rows]

    @property
    def round_trip(self) -> list[float]:
        return [r.round_trip for r in self.rows]

    @property
    def rebuilt(self) -> list[float]:
        return [r.rebuilt for r in self.rows]

    def __str__(self) -> str:
        width = max([len("kind")] + [len(r.kind) for r in self.rows])
        lines = [f"{'layer':>5}  {'kind':<{width}}  {'condition':>9}  {'round trip':>10}  {'rebuilt':>9}"]
        for r in self.rows:
            cond = "-" if r.condition is None else f"{r.condition:.1e}"
            lines.append(f"{r.index:>5}  {r.kind:<{width}}  {cond:>9}  {r.round_trip:>10.1e}  {r.rebuilt:>9.1e}")
        anchors = "none" if self.anchor_every is None else f"every {self.anchor_every} layers"
        lines.append(f"(relative errors; rebuilt from the output as backward does; anchors: {anchors})")
        return "\n".join(lines)

    __repr__ = __str__


def _quietly(estimate: Callable[[], float]) -> float:
    """Run a layer's check (``invlib._verdict``) for its estimate: no warning, and ``inf`` for a refusal."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(estimate())
        except ValueError:  # singular to working precision
            return math.inf


def condition_estimate(layer: Invertible, x: Tensor | None = None) -> float | None:
    """The condition number of ``layer`` as :func:`invlib.diagnose` reports it (``None``: none defined).

    ``x``: an input of the layer; needed only for circular convolutions, whose frequency
    responses depend on the spatial size. Singular weights give ``inf``; no warning is raised.
    """
    if isinstance(layer, LeakyReLU):
        a = layer.negative_slope
        return max(a, 1.0 / a)
    if isinstance(layer, InvertibleLinear):
        def dense() -> float:
            weight = layer.weight.detach().to(work_dtype(layer.weight))
            lu, pivots = lu_factor(weight)
            return check_lu(lu, pivots, weight, owner="diagnose")
        return _quietly(dense)
    if isinstance(layer, LULinear):
        def factored() -> float:
            lower, upper = (t.detach().to(work_dtype(t)) for t in layer._factors())
            return layer.condition(lower, upper)
        return _quietly(factored)
    if isinstance(layer, _CircularConv) and x is not None:
        def convolution() -> float:
            weight = layer.weight.detach().to(work_dtype(layer.weight))
            response = layer._response(tuple(x.shape[2:]), weight).flatten(0, -3)
            lu, pivots = lu_factor(response)
            tally = LUTally(owner="diagnose", weight=weight)
            tally.add(lu, pivots, response)
            return tally.finish()
        return _quietly(convolution)
    return None


def _relative(approx: Tensor, exact: Tensor) -> float:
    scale = float(exact.norm())
    return float((approx - exact).norm()) / scale if scale > 0 else float((approx - exact).norm())


def diagnose(net: InvertibleSequential | Iterable[Invertible], x: Tensor,
             context: Tensor | None = None) -> Diagnosis:
    """Per layer of ``net`` on input ``x``: condition estimate, round-trip and rebuilt errors.

    ``net``: an :class:`invlib.InvertibleSequential` (its ``anchor_every`` is honoured) or any
    sequence of :class:`invlib.Invertible` layers; ``x``: a batch of the first layer's input
    shape; ``context``: handed to conditional layers, as ``InvertibleSequential`` does.
    Returns a :class:`invlib.Diagnosis`; ``print`` it for a table.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"diagnose: x must be a torch.Tensor (a batch for the first layer), got {type(x).__name__}")
    layers = list(net)
    for index, layer in enumerate(layers):
        if not isinstance(layer, Invertible):
            raise TypeError(f"diagnose: layer {index} must be an invlib.Invertible, got {type(layer).__name__}; "
                            "pass an InvertibleSequential or a list of invlib layers")
    if not layers:
        raise ValueError("diagnose: net has no layers; pass at least one invlib layer")
    anchor_every = getattr(net, "anchor_every", None)

    def call(layer: Invertible, method: str, t: Tensor) -> Tensor:
        extra = (context,) if context is not None and layer.takes_context else ()
        return getattr(layer, method)(t, *extra)

    with torch.no_grad():
        activations = [x]
        for layer in layers:
            activations.append(call(layer, "forward", activations[-1]))
        rebuilt: list[Tensor] = [activations[-1]] * (len(layers) + 1)
        for index in reversed(range(len(layers))):
            above = rebuilt[index + 1]
            if anchor_every is not None and (index + 1) % anchor_every == 0 and index + 1 < len(layers):
                above = activations[index + 1]  # the stored anchor
            rebuilt[index] = call(layers[index], "inverse", above)
        rows = []
        for index, layer in enumerate(layers):
            x_i = activations[index]
            round_trip = call(layer, "inverse", activations[index + 1])
            rows.append(LayerDiagnosis(index, type(layer).__name__, condition_estimate(layer, x_i),
                                       _relative(round_trip, x_i), _relative(rebuilt[index], x_i)))
    return Diagnosis(tuple(rows), anchor_every)
