"""The seed post's back-of-the-envelope numbers, as the post states them, next to the model's.

The seed post, "An Analogy to the Adjoint Method for Invertible Discrete NNs" (2024), section "Back of the
Envelope Calculations". Memory figures are for one sample (batch 1), no bias, one cached output per
layer. :func:`post_memory_claims` recomputes each percentage under three readings and reports which
ones round to the post's figure; :func:`post_flops` transcribes the post's three FLOP items literally.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from invlib._checks import check_positive_int
from invlib.costs._model import Cost, conv1d, conv2d, dense


@dataclass(frozen=True)
class PostFlops:
    """The post's FLOP items for ``d`` dense layers of width ``w``, exactly as written.

    * ``forward`` (item 1): ``2 w^3 d``. A batch of ``B`` costs ``2 B w^2 d``; this is that count at
      ``B = w``; for the single sample the post's memory figures assume, it is ``w`` times too large.
    * ``backward`` (item 2): ``2 (w^2 d)^2 d = 2 w^4 d^3``, as if a Jacobian with respect to all
      ``w^2 d`` parameters were formed. Reverse mode never forms it: the backward costs ``2 x`` the
      forward, ``4 B w^2 d``, so it does not dominate and the inversion's overhead does not vanish.
    * ``inversion`` (item 3): ``(8/3) n^3 d`` with ``n = w``: an LU (``2/3 n^3``) followed by a forward
      and a back substitution (``2 n^2``) for each of the ``n`` columns of the identity, ignoring their
      zeros. Exploiting them gives the textbook ``2 n^3`` for an explicit inverse; solving with the LU
      factors, as the post's closing remark suggests, needs only the ``(2/3) n^3`` factorisation.
    * ``apply`` (item 3): ``2 w^3 d`` to apply the inverses, again the count for ``B = w`` samples.
    """

    forward: int
    backward: int
    inversion: float
    apply: int


def post_flops(width: int, depth: int) -> PostFlops:
    """The post's FLOP formulas for ``depth`` dense layers of ``width`` (see :class:`PostFlops`)."""
    w = check_positive_int(width, name="width", owner="costs.post_flops")
    d = check_positive_int(depth, name="depth", owner="costs.post_flops")
    return PostFlops(forward=2 * w**3 * d, backward=2 * (w * w * d) ** 2 * d, inversion=8 * w**3 * d / 3,
                     apply=2 * w**3 * d)


@dataclass(frozen=True)
class PostClaim:
    """One percentage from the post, and the arithmetic behind it (``A`` cache, ``P`` weights).

    * ``growth = A / P``: how much *larger* a model fits once the cache is dropped;
    * ``factor = (P + A) / P``: how many *times* as large that model is;
    * ``savings = A / (P + A)``: the share of memory the cache takes;
    * ``matches``: the readings that round to ``post_percent`` at the post's precision.
    """

    claim: str
    post_percent: str
    cost: Cost
    growth: float
    factor: float
    savings: float
    matches: tuple[str, ...]


def _claim(claim: str, post_percent: str, cost: Cost) -> PostClaim:
    a, p = cost.activations, cost.params
    readings = {"growth": a / p, "factor": (p + a) / p, "savings": a / (p + a)}
    step = Decimal(post_percent)
    matches = tuple(name for name, value in readings.items()
                    if Decimal(repr(100 * value)).quantize(step, rounding=ROUND_HALF_UP) == step)
    return PostClaim(claim, post_percent, cost, matches=matches, **readings)


def post_memory_claims() -> tuple[PostClaim, ...]:
    """The post's four memory percentages, each recomputed from :mod:`invlib.costs` (batch 1).

    Under the post's accounting (weights only, one output per layer) its numbers are ``A / P`` for
    the dense and 1-d convolution cases, but ``(P + A) / P`` for the 2-d convolution: there
    ``A / P = 16``, a model 1600% larger (17 times as large), not 1700% larger. The dense "savings"
    are ``A / P`` too; the share of memory, ``A / (P + A)``, is 1.54% rather than 1.6% at width 64.
    """
    return (
        _claim("dense layer, width 64: skipping the cache saves this much memory", "1.6", dense(64)),
        _claim("dense layer, width 256: the same saving", "0.4", dense(256)),
        _claim("conv1d, kernel 8x64x64, input 256x64: a model this much larger fits", "50",
               conv1d(64, 256, 8)),
        _claim("conv2d, kernel 8x8x64x64, input 256x256x64: a model this much larger fits", "1700",
               conv2d(64, 256, 256, 8)),
    )
