"""A dense invertible layer stored in factored form ``W = P L (U + diag(s))`` (Glow's LU layer).

Keeping the factors as the parameters makes the inverse two triangular solves, with no
factorisation at all, and makes ``log|det W| = sum(log|s|)`` free. Kingma & Dhariwal, "Glow:
Generative Flow with Invertible 1x1 Convolutions", 2018 (arXiv 1807.03039), section 3.2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_pivots, check_positive_int, check_tensor
from .base import Invertible, accumulate_grad
from .linear import random_orthogonal, solve_lu_right


class LULinear(Invertible):
    """Dense layer ``y = x W^T + b`` with ``W = P L (U + diag(s))``, ``s = sign * exp(log_s)``.

    Parameters: ``lower`` (only its strictly lower part is used; ``L`` has a unit diagonal),
    ``upper`` (only its strictly upper part is used), ``log_s`` and ``bias``. Buffers: ``perm``
    (``P[i, perm[i]] = 1``, fixed) and ``sign`` (fixed, so ``s`` never crosses zero during training).
    Shapes: ``x``, ``y``: ``(batch, features)``; ``weight`` (assembled on access): ``(features, features)``.

    Inverse: with ``r = y - b``, solve ``z L^T = r P`` (unit upper triangular) and then
    ``x (U + diag s)^T = z`` (lower triangular), both by ``torch.linalg.solve_triangular``.

    Conditioning: the pivots of this LU are ``s`` itself, so ``max|s| / min|s|`` is the condition
    estimate checked at inverse time (error if singular to working precision, warning above
    ``1/sqrt(eps)``). It ignores the conditioning of ``L``, which is not bounded here as it is
    under partial pivoting: an ``L`` with large entries makes ``W`` worse than the estimate says.
    """

    def __init__(self, features: int, bias: bool = True) -> None:
        super().__init__()
        self.features = check_positive_int(features, name="features", owner="LULinear")
        p, lower, upper = torch.linalg.lu(random_orthogonal(features))
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.argmax(dim=1))
        self.register_buffer("sign", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1).contiguous())  # LAPACK output is column-major
        self.upper = nn.Parameter(torch.triu(upper, 1).contiguous())
        self.log_s = nn.Parameter(torch.log(s.abs()))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None) -> LULinear:
        """The layer whose assembled ``weight`` equals ``weight`` (``(n, n)``), via ``P L U``
        with partial pivoting (``torch.linalg.lu``). ``ValueError`` if ``weight`` is not square
        or has a zero pivot (it is singular and has no such factorisation with ``s != 0``)."""
        owner = "LULinear.from_weight"
        check_tensor(weight, name="weight", owner=owner, layout="(n, n)", ndim=2)
        if weight.shape[0] != weight.shape[1]:
            raise ValueError(f"{owner}: weight must be square (n, n), got {tuple(weight.shape)}")
        if bias is not None:
            check_tensor(bias, name="bias", owner=owner, layout=f"(n,) = ({weight.shape[0]},)", ndim=1,
                         sizes={0: weight.shape[0]}, dtype=weight.dtype)
        weight = weight.detach()
        layer = cls(weight.shape[0], bias=bias is not None).to(dtype=weight.dtype, device=weight.device)
        p, lower, upper = torch.linalg.lu(weight)
        check_pivots(torch.diagonal(upper).unsqueeze(0), owner=owner, matrices=weight)
        s = torch.diagonal(upper)
        with torch.no_grad():
            layer.perm.copy_(p.argmax(dim=1))
            layer.sign.copy_(torch.sign(s))
            layer.lower.copy_(torch.tril(lower, -1))
            layer.upper.copy_(torch.triu(upper, 1))
            layer.log_s.copy_(torch.log(s.abs()))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def _factors(self) -> tuple[Tensor, Tensor]:
        """Return ``L`` (unit lower) and ``U + diag(s)`` (upper) as dense matrices."""
        eye = torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    @property
    def weight(self) -> Tensor:
        """The assembled ``W = P L (U + diag(s))``, differentiable w.r.t. the factors."""
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]  # (P M)[i] = M[perm[i]]

    def _check(self, t: Tensor, name: str) -> Tensor:
        return check_tensor(
            t, name=name, owner="LULinear", layout=f"(batch, features={self.features})",
            ndim=2, sizes={1: self.features}, dtype=self.log_s.dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._check(x, "x"), self.weight, self.bias)

    def _solve(self, y: Tensor, lower: Tensor, upper: Tensor, bias: Tensor | None) -> Tensor:
        check_pivots(torch.diagonal(upper).unsqueeze(0), owner="LULinear", matrices=lambda: lower @ upper)
        return solve_lu_right(y, bias, torch.argsort(self.perm), lower, upper)  # P[i, perm[i]] = 1

    def inverse(self, y: Tensor) -> Tensor:
        return self._solve(self._check(y, "y"), *self._factors(), self.bias)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        # The factors -> W graph is O(features^2) memory and cheap; W_bar = y_bar^T x is pushed
        # through it by autograd instead of hand-deriving the gradients of L, U and log_s.
        with torch.enable_grad():
            lower, upper = self._factors()
            weight, bias = (lower @ upper)[self.perm], self.bias
        with torch.no_grad():
            x = self._solve(self._check(y, "y"), lower.detach(), upper.detach(),
                            None if bias is None else bias.detach())
            x_bar = y_bar @ weight.detach()
            weight_bar = y_bar.mT @ x
            bias_bar = None if bias is None else y_bar.sum(0)
        accumulate_grad(weight, weight_bar)
        accumulate_grad(bias, bias_bar)
        return x, x_bar

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}"
