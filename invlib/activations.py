"""Elementwise invertible activations whose reverse step needs only the output ``y``.

For a strictly monotone scalar ``y = sigma(x)`` the derivative can be written as a function of
``y`` alone, so the reverse step is ``x = sigma^{-1}(y)``, ``x_bar = y_bar * sigma'(sigma^{-1}(y))``
with no recomputation and no stored input. ReLU is absent on purpose: it maps all of
``x <= 0`` to 0 and has no inverse.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_tensor
from ._verdict import SINGULAR, WARN, Verdicts
from .base import Invertible, full_precision, half_precision, work_dtype


def _check(t: object, name: str, owner: str) -> Tensor:
    return check_tensor(t, name=name, owner=owner, layout="(...) of any shape")


class LeakyReLU(Invertible):
    """``y = x`` for ``x >= 0``, ``y = a x`` otherwise, with slope ``a = negative_slope > 0``.

    Inverse ``x = y`` for ``y >= 0``, ``x = y / a`` otherwise (``a > 0`` keeps the sign of ``x``):
    itself a LeakyReLU, of slope ``1/a``, so it runs as one fused kernel. Reverse:
    ``x_bar = y_bar`` where ``x > 0``, ``a y_bar`` elsewhere, with PyTorch's own
    ``leaky_relu_backward`` (the same rule, at ``x = 0`` too, as autograd's). Shapes: any, elementwise.
    Conditioning: the Jacobian's condition number is ``kappa = max(a, 1/a)``. Elementwise the
    inverse is exact to rounding, but as soon as a neighbouring layer mixes entries, the negative
    part ``a x`` is known only to within ``eps`` times the largest entry, and ``y / a`` amplifies
    that by ``1/a``: about ``log10(kappa)`` digits are lost per layer, and deep stacks compound it.

    * ``kappa > 1/eps`` of float64 (``a < 2.2e-16`` or ``a > 4.5e15``): ``ValueError``. Even in
      float64, the most precise dtype torch computes in, the negative part falls below the
      rounding error of the positive part and no digit of it survives the inverse; no dtype the
      layer could later run in helps, so refusing at construction is safe.
    * ``kappa > 1/sqrt(eps)`` of float32 (``a < 3.5e-4`` or ``a > 2.9e3``): ``UserWarning``. In
      float32 (torch's default dtype) this one layer loses more than half of the ~7 digits, the
      threshold at which the matrix layers warn; in float64 it costs ``log10(kappa)`` of ~16.
      The dtype is unknown at construction, so this warns rather than refuses.

    The usual 0.01 (``kappa = 100``) passes both; prefer slopes near 1 in deep invertible nets.
    """

    reverse_in_place = True
    draws_random = False

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        a = float(negative_slope)
        if not 0.0 < a < math.inf:
            raise ValueError(
                f"negative_slope must be > 0 and finite for LeakyReLU to be invertible, got "
                f"{a}; use a positive slope such as 0.01 (0.5 for deep stacks)"
            )
        kappa = max(a, 1.0 / a)
        eps64, eps32 = torch.finfo(torch.float64).eps, torch.finfo(torch.float32).eps
        if kappa > 1.0 / eps64:
            raise ValueError(
                f"negative_slope = {a:.3e} makes LeakyReLU's inverse lose every digit: its condition "
                f"number max(a, 1/a) = {kappa:.3e} exceeds 1/eps = {1 / eps64:.3e} even in float64; use a "
                "slope between 1e-3 and 1e3, such as 0.01 (0.5 for deep stacks)"
            )
        if kappa > 1.0 / math.sqrt(eps32):
            warnings.warn(
                f"LeakyReLU: negative_slope = {a:.3e} is badly conditioned: max(a, 1/a) = {kappa:.3e} > "
                f"1/sqrt(eps) = {1 / math.sqrt(eps32):.3e} of float32, so its inverse loses about "
                f"{math.log10(kappa):.0f} digits per layer ({-math.log10(eps32):.0f} in float32, "
                f"{-math.log10(eps64):.0f} in float64); prefer a slope between 1e-3 and 1e3",
                UserWarning, stacklevel=2)
        self.negative_slope = a

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(_check(x, "x", "LeakyReLU"), self.negative_slope)

    def inverse(self, y: Tensor) -> Tensor:
        return F.leaky_relu(_check(y, "y", "LeakyReLU"), 1.0 / self.negative_slope)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), full_precision(y):
            if overwrite and y.dtype == y_bar.dtype:  # rebuild both in place: y -> x, y_bar -> x_bar
                x = F.leaky_relu_(y, 1.0 / self.negative_slope)
                x_bar = torch.ops.aten.leaky_relu_backward.grad_input(
                    y_bar, x, self.negative_slope, False, grad_input=y_bar)
            else:
                x = F.leaky_relu(y, 1.0 / self.negative_slope)
                x_bar = torch.ops.aten.leaky_relu_backward(y_bar.to(x.dtype), x, self.negative_slope, False)
        return x, x_bar

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Asinh(Invertible):
    """``y = asinh(x)``, a smooth odd bijection of R onto R; inverse ``x = sinh(y)``.

    Derivative ``1 / sqrt(1 + x^2) = 1 / cosh(y)``, so reverse is ``x_bar = y_bar / cosh(y)``.
    Shapes: any, elementwise. Grows like ``log(2|x|)``, so it compresses large inputs; the inverse
    expands them again by ``cosh(y)``, which overflows only for ``|y| > ~710`` in float64
    (``|x| > ~1e308``) and ``|y| > ~89`` in float32.
    """

    draws_random = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.asinh(_check(x, "x", "Asinh"))

    def inverse(self, y: Tensor) -> Tensor:
        return torch.sinh(_check(y, "y", "Asinh"))

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), full_precision(y):
            y = y.to(work_dtype(y, y_bar))  # half precision: sinh/cosh in float32
            return torch.sinh(y), y_bar.to(y.dtype) / torch.cosh(y)


class ELU(Invertible):
    """``y = x`` for ``x > 0``, ``y = alpha (exp(x) - 1)`` otherwise: a bijection R -> (-alpha, inf).

    Inverse ``x = y`` for ``y > 0``, ``x = log1p(y / alpha)`` otherwise, defined only for
    ``y > -alpha`` (``ValueError`` outside). Derivative ``alpha exp(x) = y + alpha`` for ``x <= 0``,
    so reverse is ``x_bar = y_bar * (y + alpha)`` there. Conditioning: as ``y -> -alpha`` the
    inverse's slope ``1/(y + alpha)`` blows up; outputs within rounding of ``-alpha`` (inputs below about
    -36.7 in float64 and -16.6 in float32, where ``exp(x)`` drops below half an ulp of 1) cannot
    be inverted. ``inverse`` already reduces ``y`` to its minimum for that check, so it also names
    NaN/inf in ``y`` (for free) instead of blaming the range. Half precision (autocast or half
    parameters): bfloat16 rounds ``y`` onto ``-alpha`` already below ``x = -6.2`` (float16 below
    -8.3), and an output rebuilt from a half-precision layer above can land on or below it; the
    reverse step clamps such ``y`` to ``-alpha (1 - eps/2)``, the closest value that precision
    resolves, rather than fail a backward the plain loop completes. Clevert et al. 2015, arXiv 1511.07289.
    """

    draws_random = False
    observes = True

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < float(alpha) < math.inf:
            raise ValueError(f"alpha must be > 0 and finite for ELU to be invertible, got {float(alpha)}; "
                             "use e.g. alpha=1.0")
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(_check(x, "x", "ELU"), self.alpha)

    def inverse(self, y: Tensor) -> Tensor:
        y = _check(y, "y", "ELU")
        lowest, highest = (float(t) for t in torch.aminmax(y.detach())) if y.numel() else (0.0, 0.0)
        if not math.isfinite(lowest) or not math.isfinite(highest):
            count = int((~torch.isfinite(y.detach())).sum())
            raise ValueError(
                f"ELU.inverse: y contains NaN or inf ({count} of {y.numel()} entries; min(y) = {lowest}, "
                f"max(y) = {highest}); ELU maps finite x to finite y, so they come from the network's input "
                "or output, or from the inverse of a layer after this one; check those for overflow"
            )
        if not lowest > -self.alpha:
            raise ValueError(
                f"ELU.inverse: y must be > -alpha = {-self.alpha} (the range of ELU), got min(y) = {lowest}; "
                "such y was not produced by this layer's forward, or rounded onto the asymptote"
            )
        return torch.where(y > 0, y, torch.log1p(y / self.alpha))

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                prepared: object = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Invertible.reverse`. ``prepared`` (inside :class:`InvertibleSequential`): the
        check before the sweep judged this layer from its forward's inputs, so the range is not
        read here (no host read); a ``y`` rebuilt on or below ``-alpha`` (rounding in the layers
        above) is kept at the closest output the working precision resolves, and the sweep's
        comparison of the rebuilt input with the forward's reports what that costs."""
        half = half_precision(y)  # before autocast is switched off
        with torch.no_grad(), full_precision(y):
            y = y.to(work_dtype(y, y_bar))  # half precision: log1p in float32
            if half is not None or prepared is not None:
                # A y rebuilt from a half-precision layer above is known to about one unit of that
                # precision; near the asymptote that can land on or below -alpha. Keep it at the
                # closest output the forward could resolve, -alpha (1 - eps/2): x >= log(eps/2).
                eps = torch.finfo(half if half is not None else y.dtype).eps
                y = y.clamp(min=-self.alpha * (1 - eps / 2))
                x = torch.where(y > 0, y, torch.log1p(y / self.alpha))
            else:
                x = self.inverse(y)
            y_bar = y_bar.to(y.dtype)
            x_bar = torch.where(y > 0, y_bar, y_bar * (y + self.alpha))
        return x, x_bar

    def observe(self, x: Tensor) -> Tensor | None:
        """The smallest input (a device scalar): how close the outputs come to the asymptote."""
        return x.detach().amin() if x.numel() else None

    def kappa(self, x_min: Tensor) -> Tensor:
        """Condition number of the inverse over inputs ``>= x_min``: the ratio of the largest to
        the smallest slope, ``max(1, alpha) / min(1, alpha e^{x_min})``; ``e^{-x_min}`` for ``alpha = 1``."""
        smallest = torch.clamp(self.alpha * torch.exp(torch.clamp(x_min, max=0.0)), max=1.0)
        return max(1.0, self.alpha) / smallest

    @classmethod
    def judge(cls, states: list, budget: object, verdicts: Verdicts) -> None:
        """Judge each ELU's inverse from its forward's smallest input (``observe``), on the device,
        by the thresholds of the matrix layers: singular above ``1/eps`` (the outputs round onto
        ``-alpha``), badly conditioned above ``1/sqrt(eps)``, ``eps`` of the dtype the inverse
        computes in (float32 for half precision)."""
        for state in states:
            if state.observed is None:  # an empty batch: nothing to invert
                continue
            x_min = state.observed.to(work_dtype(state.observed))
            eps = torch.finfo(x_min.dtype).eps
            kappa = torch.where(torch.isfinite(x_min), state.layer.kappa(x_min), math.inf)
            code = torch.where(kappa > 1.0 / eps, SINGULAR, torch.where(kappa > 1.0 / math.sqrt(eps), WARN, 0))
            verdicts.put(state.index, code, partial(_explain_elu, state.layer, x_min, eps))
            state.prepared = True

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def _explain_elu(layer: ELU, x_min: Tensor, eps: float) -> float:
    low = float(x_min)
    value = float(layer.kappa(x_min)) if math.isfinite(low) else math.inf
    if not math.isfinite(low):
        raise ValueError(f"ELU: its input contains NaN or inf (smallest entry {low}); they come from the "
                         "network's input or an earlier layer; check those for overflow")
    if value > 1.0 / eps:
        raise ValueError(
            f"ELU: the inverse is singular to working precision: the smallest input was {low:.4g}, where the "
            f"output alpha (e^x - 1) lies within rounding of -alpha = {-layer.alpha}; the inverse's slope ratio "
            f"kappa = {value:.3e} > 1/eps = {1 / eps:.3e}, so x cannot be rebuilt from y; scale the inputs of "
            "this layer down (e.g. normalise the layer before it) or use LeakyReLU or Asinh")
    warnings.warn(
        f"ELU: the inverse is badly conditioned: the smallest input was {low:.4g}, where the inverse amplifies "
        f"rounding errors by kappa = {value:.3e} > 1/sqrt(eps) = {1 / math.sqrt(eps):.3e}; expect to lose about "
        f"{math.log10(value):.0f} of {-math.log10(eps):.0f} significant digits in the rebuilt input and the "
        "gradients; keep this layer's inputs away from large negative values or compute in float64",
        UserWarning, stacklevel=5)
    return value
