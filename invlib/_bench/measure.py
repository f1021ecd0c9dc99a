"""Time and peak memory of one training step by several methods, measured side by side.

Each round runs one step of every method in turn, so drifts of a shared machine hit all of them
alike; the first ``warmup`` rounds are dropped and the median of the rest is reported. Peak
memory comes afterwards, from one untimed step per method with the parameter gradients allocated
beforehand, so it is the step's working memory above the model and one copy of its gradients
(:func:`invlib.compare.step_memory`: the dispatch tracker on CPU, the CUDA allocator's peak
statistics on CUDA, where :func:`invlib.compare.step_seconds` synchronises around each step).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from invlib.compare import interleaved_seconds, step_memory


@dataclass(frozen=True)
class Measured:
    """Step times (seconds), loss and peak bytes above model and gradients of one method."""

    seconds: tuple[float, ...]
    loss: float
    peak_bytes: int

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def time_steps(forwards: dict[str, Callable[[Tensor], Tensor]], x: Tensor, params: Sequence[Tensor],
               repeats: int, warmup: int, tick: Callable[[], None] = lambda: None,
               ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of ``repeats`` steps ``loss = mean(forward(x)**2); loss.backward()`` per forward,
    run interleaved after ``warmup`` untimed rounds, and each forward's last loss. ``tick`` is
    called after every step (a progress bar). ``ValueError`` if the methods disagree on the loss
    (they must compute the same function) or it is not finite."""
    times, losses = interleaved_seconds(forwards, x, params, repeats, warmup, tick)
    values = list(losses.values())
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite loss {losses}; lower the depth or use --dtype float64")
    if max(values) - min(values) > 1e-3 * max(abs(v) for v in values):
        raise ValueError(f"the methods disagree on the loss {losses}")
    return times, losses


def measure(forwards: dict[str, Callable[[Tensor], Tensor]], x: Tensor, params: Sequence[Tensor],
            repeats: int, warmup: int, tick: Callable[[], None] = lambda: None) -> dict[str, Measured]:
    """:func:`time_steps`, then one untimed step per forward for its peak memory."""
    times, losses = time_steps(forwards, x, params, repeats, warmup, tick)
    peaks = {}
    for name, forward in forwards.items():
        peaks[name] = step_memory(forward, x, params, accumulate=True).peak_bytes
        tick()
    return {m: Measured(tuple(times[m]), losses[m], peaks[m]) for m in forwards}
