"""Elementwise invertible activations whose reverse step needs only the output ``y``.

For a strictly monotone scalar ``y = sigma(x)`` the derivative can be written as a function of
``y`` alone, so the reverse step is ``x = sigma^{-1}(y)``, ``x_bar = y_bar * sigma'(sigma^{-1}(y))``
with no recomputation and no stored input. ReLU is absent on purpose: it maps all of
``x <= 0`` to 0 and has no inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_tensor
from .base import Invertible


def _check(t: object, name: str, owner: str) -> Tensor:
    return check_tensor(t, name=name, owner=owner, layout="(...) of any shape")


class LeakyReLU(Invertible):
    """``y = x`` for ``x >= 0``, ``y = a x`` otherwise, with slope ``a = negative_slope > 0``.

    Inverse ``x = y`` for ``y >= 0``, ``x = y / a`` otherwise (``a > 0`` keeps the sign of ``x``):
    itself a LeakyReLU, of slope ``1/a``, so it runs as one fused kernel. Reverse:
    ``x_bar = y_bar`` where ``x > 0``, ``a y_bar`` elsewhere, with PyTorch's own
    ``leaky_relu_backward`` (the same rule, at ``x = 0`` too, as autograd's). Shapes: any, elementwise.
    Conditioning: the Jacobian's condition number is ``max(a, 1/a)``; a small slope (the usual
    0.01) amplifies rounding error of negative outputs by ``1/a`` per layer in the inverse, and
    deep stacks of such layers can lose all digits. Prefer slopes near 1 in deep invertible nets.
    """

    reverse_in_place = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < float(negative_slope) < math.inf:
            raise ValueError(
                f"negative_slope must be > 0 and finite for LeakyReLU to be invertible, got "
                f"{float(negative_slope)}; use a positive slope such as 0.01 (0.5 for deep stacks)"
            )
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(_check(x, "x", "LeakyReLU"), self.negative_slope)

    def inverse(self, y: Tensor) -> Tensor:
        return F.leaky_relu(_check(y, "y", "LeakyReLU"), 1.0 / self.negative_slope)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            if overwrite:  # rebuild both in place: y becomes x, y_bar becomes x_bar
                x = F.leaky_relu_(y, 1.0 / self.negative_slope)
                x_bar = torch.ops.aten.leaky_relu_backward.grad_input(
                    y_bar, x, self.negative_slope, False, grad_input=y_bar)
            else:
                x = F.leaky_relu(y, 1.0 / self.negative_slope)
                x_bar = torch.ops.aten.leaky_relu_backward(y_bar, x, self.negative_slope, False)
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

    def forward(self, x: Tensor) -> Tensor:
        return torch.asinh(_check(x, "x", "Asinh"))

    def inverse(self, y: Tensor) -> Tensor:
        return torch.sinh(_check(y, "y", "Asinh"))

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return torch.sinh(y), y_bar / torch.cosh(y)


class ELU(Invertible):
    """``y = x`` for ``x > 0``, ``y = alpha (exp(x) - 1)`` otherwise: a bijection R -> (-alpha, inf).

    Inverse ``x = y`` for ``y > 0``, ``x = log1p(y / alpha)`` otherwise, defined only for
    ``y > -alpha`` (``ValueError`` outside). Derivative ``alpha exp(x) = y + alpha`` for ``x <= 0``,
    so reverse is ``x_bar = y_bar * (y + alpha)`` there. Conditioning: as ``y -> -alpha`` the
    inverse's slope ``1/(y + alpha)`` blows up; outputs within rounding of ``-alpha`` (inputs below about
    -36.7 in float64 and -16.6 in float32, where ``exp(x)`` drops below half an ulp of 1) cannot
    be inverted. Clevert et al. 2015, arXiv 1511.07289.
    """

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
        lowest = float(y.detach().min()) if y.numel() else 0.0
        if not lowest > -self.alpha:
            raise ValueError(
                f"ELU.inverse: y must be > -alpha = {-self.alpha} (the range of ELU), got min(y) = {lowest}; "
                "such y was not produced by this layer's forward, or rounded onto the asymptote"
            )
        return torch.where(y > 0, y, torch.log1p(y / self.alpha))

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x = self.inverse(y)
            x_bar = torch.where(y > 0, y_bar, y_bar * (y + self.alpha))
        return x, x_bar

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
