"""Cache, recompute or invert: the fastest training step of a chain of layers within a memory budget.

``invlib.plan(layers, example_input, budget_bytes)`` measures each layer once
(:func:`calibrate`), searches the segmentations of the chain into cached, checkpointed and
inverted segments with a dynamic program (:func:`search`), and returns a :class:`Plan` with its
predicted peak bytes and step seconds; :class:`Planned` runs it. Budgets count the bytes a step
allocates above the model, its gradients and its input (what :func:`invlib.compare.step_memory`
measures with the gradients allocated beforehand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._costs import Costs, LayerCost, flatten, measure_layers
from ._fit import all_inverted, fit_seconds
from ._planned import Planned
from ._search import KINDS, Plan, evaluate, search

__all__ = ["Costs", "KINDS", "LayerCost", "Plan", "Planned", "all_inverted", "calibrate", "evaluate",
           "fit_seconds", "flatten", "measure_layers", "minimum_peak", "plan", "plan_for", "search"]


def calibrate(layers: nn.Module | Sequence[nn.Module], example_input: Tensor, repeats: int = 5) -> Costs:
    """Each layer's sizes and seconds (:func:`measure_layers`), with the seconds fitted to three
    whole steps (:func:`fit_seconds`). Parameter gradients are left as they were; batch norm's
    running statistics are restored; the random state moves."""
    chain = _chain(layers)
    costs = measure_layers(chain, example_input, repeats)
    grads = [(p, None if p.grad is None else p.grad.clone()) for layer in chain for p in layer.parameters()]
    buffers = [(b, b.detach().clone()) for layer in chain for b in layer.buffers()]
    fitted = fit_seconds(costs, chain, example_input, repeats)
    for p, g in grads:
        p.grad = g
    with torch.no_grad():
        for b, value in buffers:
            b.copy_(value)
    return fitted


def _chain(layers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    return flatten(layers) if isinstance(layers, nn.Module) else list(layers)


def minimum_peak(costs: Costs, kinds: Sequence[str] = KINDS, tolerance: float = 0.005, bins: int = 1000) -> int:
    """The smallest budget (bytes) for which :func:`search` finds a plan (within ``tolerance``,
    relative): a bisection from the all-cached (or all-recomputed) plan's peak down."""
    if "cache" not in kinds and "recompute" not in kinds:
        segments = (("invert", 0, len(costs) - 1),)
    else:
        segments = ((kinds[0] if kinds[0] != "invert" else "recompute", 0, len(costs) - 1),)
    hi = float(evaluate(segments, costs)[0])
    lo = 0.0
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2
        if search(costs, mid, bins=bins, kinds=kinds) is None:
            lo = mid
        else:
            hi = mid
    return int(math.ceil(hi))


def plan_for(costs: Costs, budget_bytes: float, kinds: Sequence[str] = KINDS, bins: int = 1000) -> Plan:
    """:func:`invlib.plan` from costs already measured (:func:`invlib.planner.calibrate`)."""
    segments = search(costs, budget_bytes, bins=bins, kinds=kinds)
    # The program rounds memory up to bins; a plan it may have rounded out is tried exactly.
    candidates = [] if segments is None else [segments]
    if "cache" in kinds:
        candidates.append((("cache", 0, len(costs) - 1),))
    fitting = [(seconds, c) for c in candidates for peak, seconds in [evaluate(c, costs)] if peak <= budget_bytes]
    segments = min(fitting)[1] if fitting else None
    if segments is None:
        least = minimum_peak(costs, kinds, bins=bins)
        raise ValueError(
            f"invlib.plan: no plan fits a budget of {budget_bytes:,.0f} bytes ({budget_bytes / 2**20:.3f} MiB); "
            f"the feasible minimum for this chain and input is {least:,} bytes ({least / 2**20:.3f} MiB)"
            + ("" if set(kinds) == set(KINDS) else f" with segment kinds {tuple(kinds)}"))
    peak, seconds = evaluate(segments, costs)
    return Plan(segments, peak, seconds, int(budget_bytes))


def plan(layers: nn.Module | Sequence[nn.Module], example_input: Tensor, budget_bytes: float,
         kinds: Sequence[str] = KINDS) -> Plan:
    """The fastest plan for the chain ``layers`` (a sequence, or a module whose nested
    ``nn.Sequential`` and ``InvertibleSequential`` containers are flattened,
    :func:`invlib.planner.flatten`) on
    ``example_input`` whose predicted peak is within ``budget_bytes``. Run it with
    ``invlib.planner.Planned(layers, plan)``. ``ValueError`` states the feasible minimum if the budget is below it."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not budget_bytes > 0:
        raise ValueError(f"invlib.plan: budget_bytes must be a positive number of bytes, got {budget_bytes!r}")
    return plan_for(calibrate(_chain(layers), example_input), budget_bytes, kinds)
