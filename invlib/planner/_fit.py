"""Fitting the per-layer seconds to whole steps.

A layer timed alone runs faster or slower than inside a step of the whole chain (caches are warm
or cold, the allocator's pattern differs, autograd's engine overhead is spread differently). So
:func:`fit_seconds` times three whole steps, interleaved, and scales each kind's layer seconds
so that the model reproduces them (the fastest of ``repeats`` interleaved steps each):

    T(all cached)      = t_loss +                      s_cache     * C
    T(one checkpoint)  = t_loss + t_checkpoint +       s_recompute * R
    T(all inverted)    = t_loss + s_cache * C' + n t_container + s_invert * I

with ``C``, ``R``, ``I`` the sums of the isolated layer seconds of each kind over the layers the
plan runs that way (``C'``: the layers that cannot be inverted, cached in the third plan, whose
``n`` inverting containers are the maximal runs of invertible layers). Plans at other budgets
mix the three kinds; their predicted seconds are checked against measured ones in the book.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor, nn

from ..base import Invertible
from ..compare import interleaved_seconds
from ._costs import Costs
from ._planned import Planned
from ._search import _CACHE, _INVERT, _RECOMPUTE, _layer_seconds


def all_inverted(layers: Sequence[nn.Module]) -> tuple[tuple[str, int, int], ...]:
    """Segments inverting every maximal run of :class:`~invlib.Invertible` layers and caching the rest."""
    segments: list[tuple[str, int, int]] = []
    for i, layer in enumerate(layers):
        kind = "invert" if isinstance(layer, Invertible) else "cache"
        if segments and segments[-1][0] == kind:
            segments[-1] = (kind, segments[-1][1], i)
        else:
            segments.append((kind, i, i))
    return tuple(segments)


def _clamp(value: float) -> float:
    return min(4.0, max(0.25, value))


def fit_seconds(costs: Costs, layers: Sequence[nn.Module], x: Tensor, repeats: int = 5) -> Costs:
    """``costs`` with ``scale`` fitted to three whole steps (module doc); each scale is kept
    within [1/4, 4], so one disturbed timing cannot make the model absurd."""
    layers = list(layers)
    D = len(layers)
    plans = {"cache": (("cache", 0, D - 1),), "recompute": (("recompute", 0, D - 1),)}
    inverted = all_inverted(layers)
    if any(kind == "invert" for kind, _, _ in inverted):
        plans["invert"] = inverted
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    times, _ = interleaved_seconds({k: Planned(layers, s) for k, s in plans.items()}, x, params, repeats, 1)
    measured = {k: min(v) for k, v in times.items()}
    unit = replace(costs, scale=(1.0, 1.0, 1.0))
    C = sum(_layer_seconds(_CACHE, c, unit) for c in costs.layers)
    R = sum(_layer_seconds(_RECOMPUTE, c, unit) for c in costs.layers)
    s_cache = _clamp((measured["cache"] - costs.t_loss) / C) if C > 0 else 1.0
    s_recompute = _clamp((measured["recompute"] - costs.t_loss - costs.t_checkpoint) / R) if R > 0 else 1.0
    s_invert = 1.0
    if "invert" in plans:
        cached = sum(_layer_seconds(_CACHE, costs.layers[i], unit)
                     for kind, a, b in inverted if kind == "cache" for i in range(a, b + 1))
        I = sum(_layer_seconds(_INVERT, costs.layers[i], unit)
                for kind, a, b in inverted if kind == "invert" for i in range(a, b + 1))
        runs = sum(kind == "invert" for kind, _, _ in inverted)
        rest = measured["invert"] - costs.t_loss - s_cache * cached - runs * costs.t_container
        s_invert = _clamp(rest / I) if I > 0 else 1.0
    return replace(costs, scale=(s_cache, s_recompute, s_invert))
