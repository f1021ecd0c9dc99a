"""A dense invertible layer ``y = x W^T + b`` with a square weight, inverted by an LU solve.

Unlike coupling blocks (RevNet, Gomez et al. 2017, arXiv 1707.04585), a general dense layer has
no cheap structural inverse: ``inverse`` factorises ``W = P L U`` (O(features^3)) and solves
against it (O(batch features^2)); ``W^{-1}`` is never formed, because an explicit inverse is
both slower and less accurate than two triangular solves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_lu, check_positive_int, check_tensor, judged
from .base import Invertible, accumulate_grad, as_applied, full_precision, work_dtype


def random_orthogonal(n: int, dtype: torch.dtype | None = None) -> Tensor:
    """Return an ``n x n`` orthogonal matrix drawn uniformly (Haar) from O(n).

    QR of a Gaussian matrix, with each column of Q multiplied by the sign of ``R_ii``: without that
    fix the distribution depends on the QR routine's sign convention (Mezzadri 2007,
    arXiv math-ph/0609050). cond(Q) = 1, the best possible starting point for an inverse.
    """
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=dtype))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).contiguous()  # LAPACK's QR is column-major; parameters should not be


def pivots_to_columns(pivots: Tensor) -> Tensor:
    """The permutation of ``W = P L U`` from LAPACK's pivots: ``P[columns[j], j] = 1``.

    LAPACK swaps row ``i`` with row ``pivots[i] - 1`` for ``i = 0, 1, ...`` in turn; applying the
    same swaps to ``0..n-1`` gives the row order ``columns`` with ``L U = W[columns]``.
    """
    order = list(range(pivots.shape[-1]))
    for i, p in enumerate(pivots.tolist()):
        order[i], order[p - 1] = order[p - 1], order[i]
    return torch.tensor(order, device=pivots.device)


def solve_lu_right(y: Tensor, bias: Tensor | None, columns: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Solve ``x W^T = y - b`` for ``x``, given ``W = P L U`` (``L`` unit lower, ``U`` upper).

    ``x W^T = x U^T L^T P^T``, so ``z L^T = (y - b) P`` and then ``x U^T = z``: a column gather
    (``((y - b) P)[:, j] = (y - b)[:, columns[j]]``) and two triangular solves with ``B``
    right-hand sides, ``2 B n^2`` FLOPs, with at most two new ``(B, n)`` buffers alive at once.
    ``lower`` and ``upper`` are read only in their own triangle (the strict lower part of
    ``lower``, with a unit diagonal assumed), so both may be the packed factor of
    ``torch.linalg.lu_factor``. On CPUs two explicit triangular solves run about twice as fast as
    ``torch.linalg.lu_solve`` for this system, and out-of-place solves 1.7-2.7x faster than
    in-place ones (``out=`` the right-hand side), which is why the second buffer is spent.
    """
    taped = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (y, bias, lower, upper))
    x = torch.index_select(y, 1, columns)
    if bias is not None:  # no in-place op under autograd (e.g. gradcheck of inverse)
        x = x - bias[columns] if taped else x.sub_(bias[columns])
    z = torch.linalg.solve_triangular(lower.mT, x, upper=True, left=False, unitriangular=True)
    del x
    return torch.linalg.solve_triangular(upper.mT, z, upper=False, left=False)


class InvertibleLinear(Invertible):
    """Dense layer ``y = x W^T + b`` with square ``W``; inverse ``x = (y - b) W^{-T}`` by LU.

    Shapes: ``x``, ``y``: ``(batch, features)``; ``weight``: ``(features, features)``;
    ``bias``: ``(features,)`` or ``None``.

    Reverse step (closed form, no recomputed forward):

        x = (y - b) W^{-T},   x_bar = y_bar W,   W_bar = y_bar^T x,   b_bar = sum_batch y_bar.

    Conditioning: ``W`` starts orthogonal (cond 1), but training can drive it towards singular.
    ``inverse`` and ``reverse`` estimate ``cond_1(W)`` from the LU factors they solve with (a few
    extra O(features^2) solves, see ``invlib._checks``): ``ValueError`` if ``W`` is singular to
    working precision (``cond_1 > 1/eps``) or holds NaN/inf, a warning above ``1/sqrt(eps)`` or on
    large LU pivot growth; ``forward`` checks nothing. Do not use this layer when ``features`` is
    large enough that the O(features^3) factorisation per backward matters; :class:`invlib.LULinear`
    keeps ``W`` factorised instead.
    """

    def __init__(self, features: int, bias: bool = True) -> None:
        super().__init__()
        self.features = check_positive_int(features, name="features", owner="InvertibleLinear")
        self.weight = nn.Parameter(random_orthogonal(features))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    def _check(self, t: Tensor, name: str) -> Tensor:
        return check_tensor(
            t, name=name, owner="InvertibleLinear", layout=f"(batch, features={self.features})",
            ndim=2, sizes={1: self.features}, dtype=self.weight.dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._check(x, "x"), self.weight, self.bias)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        weight = as_applied(self.weight)  # under autocast, the rounded weight the forward applied
        with full_precision(y):
            return self._solve(y, weight, self.bias).to(y.dtype)

    def check_inverse(self) -> None:
        with torch.no_grad():
            weight = self.weight.to(work_dtype(self.weight))
            lu, pivots, _ = torch.linalg.lu_factor_ex(weight)
            check_lu(lu, pivots, weight, owner="InvertibleLinear")

    def _solve(self, y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``x = (y - b) W^{-T}`` in :func:`invlib.base.work_dtype` (float32 for half precision)."""
        dtype = work_dtype(y, weight)
        weight = weight.to(dtype)
        lu, pivots, _ = torch.linalg.lu_factor_ex(weight)
        if not judged():  # InvertibleSequential judged this weight before its first reverse step
            check_lu(lu, pivots, weight, owner="InvertibleLinear")
        return solve_lu_right(y.to(dtype), None if bias is None else bias.to(dtype),
                              pivots_to_columns(pivots), lu, lu)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        y = self._check(y, "y")  # before autocast is switched off: it may hand over half precision
        with torch.enable_grad():  # a parametrised weight is computed once, with its graph
            weight, bias = self.weight, self.bias
        applied = as_applied(weight.detach())  # under autocast: invert and differentiate round(W)
        with torch.no_grad(), full_precision(y):
            x = self._solve(y, applied, None if bias is None else bias.detach())
            y_bar, w = y_bar.to(x.dtype), applied.to(x.dtype)
            weight_bar = y_bar.mT @ x
            bias_bar = None if bias is None else y_bar.sum(0)
            # y is spent once x exists: when it is ours (and of x's dtype), x_bar goes into its memory.
            x_bar = torch.matmul(y_bar, w, out=y) if overwrite and y.dtype == x.dtype else y_bar @ w
        accumulate_grad(weight, weight_bar)
        accumulate_grad(bias, bias_bar)
        return x, x_bar

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}"
