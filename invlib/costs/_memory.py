"""What dropping the activation cache buys: a larger model, a saving, a batch size.

Memory is counted as ``M = c P + A``: ``P`` weight elements kept in ``c`` copies (``c = 1`` weights
only, the seed post's accounting; 2 with SGD's gradients; 3 with momentum; 4 with Adam's two moments)
and ``A`` cached activation elements (``cache="post"``: one output per layer; ``"autograd"``: what
autograd really saves). Dropping the cache frees ``A``. These ratios take the deep-stack limit:
the constant working set of the inverting backward (``Cost.cache_elements("none")``, three layer
outputs) is neglected, which is fair only when ``depth`` is well above 3.
"""

from __future__ import annotations

from collections.abc import Callable

from invlib.costs._model import Cost, copies


def _cache(cost: Cost, cache: str) -> int:
    if cache not in ("post", "autograd"):
        raise ValueError(f"cache must be 'post' or 'autograd' (the cache that is dropped), got {cache!r}")
    return cost.cache_elements(cache)


def larger_model_factor(cost: Cost, optimizer: str | None = None, cache: str = "post") -> float:
    """How many times more weights fit in the same memory once the cache is dropped.

        c P' = c P + A   =>   P' / P = 1 + A / (c P)

    The model grows *by* ``A / (c P)`` (as a percentage: "x% larger") and *to* ``1 + A / (c P)``
    times its size. ``A`` and ``P`` both grow linearly with depth, so the factor does not depend on it.
    """
    return 1 + _cache(cost, cache) / (copies(optimizer) * cost.params)


def savings_fraction(cost: Cost, optimizer: str | None = None, cache: str = "post") -> float:
    """Fraction of the training memory that the cache takes: ``A / (c P + A)``."""
    a = _cache(cost, cache)
    return a / (copies(optimizer) * cost.params + a)


def batch_where_cache_equals_params(cost: Cost, optimizer: str | None = None, cache: str = "post") -> float:
    """Batch size at which the cache ``A`` equals the weight memory ``c P``: ``B* = c P B / A``.

    ``A`` is linear in the batch ``B`` and ``P`` does not depend on it, so ``B*`` is the same for any
    ``cost.batch``. For a dense stack under the post's convention (``A = w B d``, ``P = w^2 d``),
    ``B* = c w``; with autograd's real cache and a LeakyReLU (``A = 2 w B d``), ``B* = c w / 2``.
    """
    return copies(optimizer) * cost.params * cost.batch / _cache(cost, cache)


def break_even_depth(make: Callable[[int], Cost], cache: str = "autograd", chunked: bool = True,
                     limit: int = 100_000) -> int:
    """The first depth ``d`` at which inverting saves memory: the cache of ``make(d)`` exceeds the
    inverting backward's peak (working set plus scratch, :meth:`Cost.inversion_elements`).

    ``make(d)`` builds the stack's :class:`Cost` at depth ``d``; ``cache`` is the cache dropped
    (``"post"`` or ``"autograd"``). Dense layers by LU solve at one sample break even near ``w/2``
    against autograd's cache (``w`` against the post's). ``ValueError`` if none below ``limit``.
    """
    for d in range(1, limit):
        c = make(d)
        if _cache(c, cache) > c.inversion_elements(chunked):
            return d
    raise ValueError(f"costs.break_even_depth: inverting never saves memory below depth {limit}")
