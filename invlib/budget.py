"""The largest batch and the largest depth that train within a memory budget, per method.

The memory of one training step of a :class:`invlib.networks.Network` is

    total = 2 P + X + cache(method) + overhead(method)

with ``P`` the parameter bytes (weights and their gradients), ``X`` the input batch, ``cache``
the cost model's activation bytes for the method (:meth:`invlib.networks.Network.model_bytes`: what autograd
saves, the checkpoint segments, or the inverting backward's working set and scratch), and
``overhead`` what the model does not count: the temporaries of the loss's backward and of the
layer whose backward is running. The overhead does not grow with depth; it is
``alpha * layer_output + beta``, and :func:`calibrate` measures ``alpha`` and ``beta`` once, from
two steps of depth 2 near the size in question. :func:`largest_batch` and :func:`largest_depth`
then search the model, and a caller confirms the answer by measuring the step at that size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .networks import Network, build, model_bytes, network_cost

__all__ = ["Overhead", "calibrate", "predicted_bytes", "measured_bytes", "largest_batch", "largest_depth"]

ELEMENT = 4  # float32


@dataclass(frozen=True)
class Overhead:
    """Step temporaries beyond the model's cache: ``per_output`` layer outputs plus ``fixed`` bytes."""

    per_output: float
    fixed: float


def measured_bytes(net: Network, method: str) -> int:
    """Measured bytes of one training step: ``2 P + X`` plus the allocator-level peak of the step."""
    return 2 * net.param_bytes() + net.x.numel() * net.x.element_size() + net.measure([method])[method]


def _block_param_bytes(spec: dict[str, Any]) -> int:
    return build(depth=1, batch=1, **spec).param_bytes()


def predicted_bytes(spec: dict[str, Any], method: str, depth: int, batch: int, overhead: Overhead,
                    block_param_bytes: int | None = None) -> float:
    """The model's bytes of one float32 training step of ``build(**spec, depth=, batch=)``.

    ``spec`` holds :func:`invlib.networks.build`'s size arguments (``kind``, ``width`` or
    ``channels``/``size``/``kernel``); ``block_param_bytes`` (one block's parameters, built once
    if not given) avoids building the whole network."""
    sizes = {k: v for k, v in spec.items() if k not in ("device", "dtype", "seed", "slope")}
    cost, per = network_cost(depth=depth, batch=batch, **sizes)
    pb = _block_param_bytes(spec) if block_param_bytes is None else block_param_bytes
    return (2 * pb * depth + ELEMENT * cost.layer_output + model_bytes(cost, per, ELEMENT)[method]
            + overhead.per_output * ELEMENT * cost.layer_output + overhead.fixed)


def calibrate(spec: dict[str, Any], method: str, batches: tuple[int, int] = (4, 8), depth: int = 2) -> Overhead:
    """Fit ``overhead = alpha * layer_output + beta`` to two measured steps at ``batches``, ``depth``."""
    rows = []
    for b in batches:
        net = build(depth=depth, batch=b, **spec)
        extra = net.measure([method])[method] - net.model_bytes()[method]
        rows.append((net.layer_output_bytes, extra))
    (o1, e1), (o2, e2) = rows
    alpha = (e2 - e1) / (o2 - o1)
    return Overhead(alpha, e1 - alpha * o1)


def _largest(fits: Callable[[int], bool], limit: int) -> int:
    """Largest ``n`` in ``[1, limit]`` with ``fits(n)`` (``fits`` monotone); 0 if even 1 does not fit."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def largest_batch(spec: dict[str, Any], method: str, budget: float, depth: int,
                  overhead: Overhead | None = None, limit: int = 2**24) -> int:
    """Largest batch whose predicted step fits ``budget`` bytes at ``depth`` (0 if none).

    Without ``overhead`` it is calibrated twice: at batches 64 and 256, then again at half the
    first answer and the answer itself, where the step's largest temporary is the one that sets
    the peak at that size (for a dense layer it is a ``w x w`` gradient at small batch and a
    batch-sized one at large batch, so a fit at small batches does not extrapolate)."""
    pb = _block_param_bytes(spec)
    search = lambda ov: _largest(lambda b: predicted_bytes(spec, method, depth, b, ov, pb) <= budget, limit)  # noqa: E731
    if overhead is not None:
        return search(overhead)
    first = search(calibrate(spec, method, batches=(64, 256)))
    if first < 4:
        return first
    return search(calibrate(spec, method, batches=(first // 2, first)))


def largest_depth(spec: dict[str, Any], method: str, budget: float, batch: int,
                  overhead: Overhead | None = None, limit: int = 2**20) -> int:
    """Largest depth whose predicted step fits ``budget`` bytes at ``batch`` (0 if none); at most
    ``limit``. Without ``overhead`` it is calibrated at ``batch // 2`` and ``batch``."""
    pb = _block_param_bytes(spec)
    if overhead is None:
        overhead = calibrate(spec, method, batches=(max(1, batch // 2), max(2, batch)))
    return _largest(lambda d: predicted_bytes(spec, method, d, batch, overhead, pb) <= budget, limit)
