"""A dense invertible layer stored in factored form ``W = P L (U + diag(s))`` (Glow's LU layer).

Keeping the factors as the parameters makes the inverse two triangular solves, with no
factorisation at all, and makes ``log|det W| = sum(log|s|)`` free. Kingma & Dhariwal, "Glow:
Generative Flow with Invertible 1x1 Convolutions", 2018 (arXiv 1807.03039), section 3.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_condition, check_finite, check_lu, check_positive_int, check_tensor, judged
from ._condition import Operator, norm1
from .base import Invertible, accumulate_grad, full_precision, work_dtype
from .linear import random_orthogonal, solve_lu_right


def factor_operators(perm: Tensor, lower: Tensor, upper: Tensor) -> tuple[Operator, Operator]:
    """``W`` and ``W^{-1}`` as operators (``invlib._condition``) for ``W = P L U``, ``P[i, perm[i]] = 1``.

    ``W v = (L (U v))[perm]`` and ``W^H v = U^H L^H P^T v``; ``W^{-1} v = U^{-1} L^{-1} P^T v`` and
    ``W^{-H} v = P L^{-H} U^{-H} v``, with ``(P^T v)[perm[i]] = v[i]``. O(n^2) per column.
    """
    back = torch.argsort(perm)  # (P^T v) = v[back]

    def multiply(v: Tensor, adjoint: bool) -> Tensor:
        if adjoint:
            return upper.mH @ (lower.mH @ v[..., back, :])
        return (lower @ (upper @ v))[..., perm, :]

    def solve(v: Tensor, adjoint: bool) -> Tensor:
        if adjoint:
            v = torch.linalg.solve_triangular(upper.mH, v, upper=False)
            return torch.linalg.solve_triangular(lower.mH, v, upper=True, unitriangular=True)[..., perm, :]
        v = torch.linalg.solve_triangular(lower, v[..., back, :], upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, v, upper=True)

    return multiply, solve


class LULinear(Invertible):
    """Dense layer ``y = x W^T + b`` with ``W = P L (U + diag(s))``, ``s = sign * exp(log_s)``.

    Parameters: ``lower`` (only its strictly lower part is used; ``L`` has a unit diagonal),
    ``upper`` (only its strictly upper part is used), ``log_s`` and ``bias``. Buffers: ``perm``
    (``P[i, perm[i]] = 1``, fixed) and ``sign`` (fixed, so ``s`` never crosses zero during training).
    Shapes: ``x``, ``y``: ``(batch, features)``; ``weight`` (assembled on access): ``(features, features)``.

    Inverse: with ``r = y - b``, solve ``z L^T = r P`` (unit upper triangular) and then
    ``x (U + diag s)^T = z`` (lower triangular), both by ``torch.linalg.solve_triangular``.

    Conditioning: ``L`` is not bounded here as it is under partial pivoting, so ``W`` can be
    nearly singular with every ``|s_i|`` equal to 1 (``L`` with large entries). ``inverse`` and
    ``reverse`` therefore estimate ``cond_1(W)`` from the factors (Hager-Higham, a few O(features^2)
    triangular solves and products, see ``invlib._checks``): ``ValueError`` if singular to working
    precision (``cond_1 > 1/eps``) or if a factor holds NaN/inf, a warning above ``1/sqrt(eps)``.
    ``forward`` checks ``log_s`` only, O(features): NaN/inf there raises, and ``log_s_i = -inf``
    (``s_i = 0``, ``W`` singular) raises before anything is computed from it (not under
    ``torch.compile``, where the check would break the graph).
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
        lu, pivots, _ = torch.linalg.lu_factor_ex(weight)
        check_lu(lu, pivots, weight, owner=owner)
        p, lower, upper = torch.lu_unpack(lu, pivots)
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

    def _check_log_s(self) -> None:
        """O(features): NaN/inf in ``log_s`` is reported by the layer it is in, not downstream.

        Skipped while ``torch.compile`` traces, where reading a tensor's value would break the graph.
        """
        log_s = self.log_s.detach()
        if torch.compiler.is_compiling() or bool(torch.isfinite(log_s).all()):
            return
        bad = torch.nonzero(~torch.isfinite(log_s)).flatten().tolist()
        if bool((log_s[bad] == -math.inf).all()):
            raise ValueError(
                f"LULinear: the weight is singular: log_s = -inf at {bad[:8]} makes the pivots s_i = 0; "
                "re-initialise the layer or keep log_s bounded (e.g. clamp it after each optimiser step)")
        raise ValueError(
            f"LULinear: log_s contains NaN or inf at {bad[:8]} ({len(bad)} of {log_s.numel()} entries), so "
            "W = P L (U + diag(s)) is not finite; re-initialise the layer or lower the learning rate")

    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x, "x")
        self._check_log_s()
        return F.linear(x, self.weight, self.bias)

    def _solve(self, y: Tensor, lower: Tensor, upper: Tensor, bias: Tensor | None) -> Tensor:
        """``x`` from ``y`` in :func:`invlib.base.work_dtype` (float32 for half precision)."""
        self._check_log_s()
        dtype = work_dtype(y, upper)
        lower, upper = lower.to(dtype), upper.to(dtype)
        fix = "re-initialise the layer or lower the learning rate"
        check_finite(lower, name="the factor L (parameter lower)", owner="LULinear", fix=fix)
        check_finite(upper, name="the factor U (parameter upper)", owner="LULinear", fix=fix)
        if not judged():  # InvertibleSequential judged these factors before its first reverse step
            multiply, solve = factor_operators(self.perm, lower.detach(), upper.detach())
            norm = norm1(multiply, (1,), self.features, upper.dtype, upper.device)  # ||W||_1 without forming W
            check_condition(torch.diagonal(upper).unsqueeze(0), norm, solve, owner="LULinear")
        return solve_lu_right(y.to(dtype), None if bias is None else bias.to(dtype),
                              torch.argsort(self.perm), lower, upper)  # P[i, perm[i]] = 1

    def check_inverse(self) -> None:
        with torch.no_grad():
            self._solve(torch.empty(0, self.features, dtype=self.log_s.dtype, device=self.log_s.device),
                        *self._factors(), None)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        with full_precision(y):
            return self._solve(y, *self._factors(), self.bias).to(y.dtype)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        y = self._check(y, "y")  # before autocast is switched off: it may hand over half precision
        # The factors -> W graph is O(features^2) memory and cheap; W_bar = y_bar^T x is pushed
        # through it by autograd instead of hand-deriving the gradients of L, U and log_s.
        with torch.enable_grad(), full_precision(y):
            lower, upper = self._factors()
            weight, bias = (lower @ upper)[self.perm], self.bias
        with torch.no_grad(), full_precision(y):
            x = self._solve(y, lower.detach(), upper.detach(),
                            None if bias is None else bias.detach())
            y_bar = y_bar.to(x.dtype)
            x_bar = y_bar @ weight.detach().to(x.dtype)
            weight_bar = y_bar.mT @ x
            bias_bar = None if bias is None else y_bar.sum(0)
        accumulate_grad(weight, weight_bar)
        accumulate_grad(bias, bias_bar)
        return x, x_bar

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}"
