"""A dense invertible layer ``y = x W^T + b`` with a square weight, inverted by an LU solve.

Unlike coupling blocks (RevNet, Gomez et al. 2017, arXiv 1707.04585), a general dense layer has
no cheap structural inverse: ``inverse`` factorises ``W = P L U`` (O(features^3)) and solves
against it (O(batch features^2)). Inside :class:`invlib.InvertibleSequential` the factorisation
is done once per backward, in the check before the sweep, and for a large batch
(:func:`prefer_inverse`) the reverse step multiplies by the explicit ``W^{-1}`` instead: one
matrix product, at matmul speed, where the triangular solves run at a fraction of it. The
inverse's rounding error grows with ``cond(W)`` faster than the solve's, so a weight with
``cond_1(W) > n`` is always solved against.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._lu import lu_factor
from ._checks import check_positive_int, check_tensor
from ._condition import lu_solver, norm1
from ._prepare import Budget, applied, read
from ._state import State
from ._verdict import SOLVE, Verdicts, check_lu, code_of, explain_lu
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


def pivots_to_columns(lu: Tensor, pivots: Tensor) -> Tensor:
    """The permutation of ``W = P L U`` from LAPACK's pivots: ``P[columns[j], j] = 1``, on the device.

    LAPACK swaps row ``i`` with row ``pivots[i] - 1`` for ``i = 0, 1, ...`` in turn; applying the
    same swaps to ``0..n-1`` gives the row order ``columns`` with ``L U = W[columns]``. ``lu`` is
    the packed factor (only its shape is read). The swaps run inside ``torch.lu_unpack`` (batched, no value read back to the host).
    """
    permutation, _, _ = torch.lu_unpack(lu, pivots, unpack_data=False)
    return permutation.argmax(-2)


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


#: Multiply by ``W^{-1}`` (formed from the LU factors, ``(2/3 + 2) n^3`` FLOPs in all) rather
#: than solve twice per sample (``2 B n^2`` at the triangular solve's lower speed) from a batch of
#: this many times the width: where forming the inverse paid for itself on a 2-core CPU, n = 64
#: to 1024 (``book/compute``). At or below :data:`INVERSE_WIDTH` it always pays (fewer calls).
INVERSE_BATCH_RATIO = 4
INVERSE_WIDTH = 32


def prefer_inverse(batch: int, n: int) -> bool:
    """Whether a dense layer's reverse step should multiply by an explicit inverse it forms (for
    speed); the check before the sweep still falls back to solving when ``cond_1(W) > n`` (for
    accuracy: the multiplied inverse's error then exceeds the solve's by more than about 1.25x,
    see the compute chapter)."""
    return batch >= INVERSE_BATCH_RATIO * n or n <= INVERSE_WIDTH


def exact_norms(batch: int, n: int) -> bool:
    """Whether the check before the sweep may form ``n x n`` matrices besides the factors (``W``,
    ``W^{-1}``) to read ``||W^{-1}||_1`` exactly, in fewer calls than the estimator's nine solves:
    when they are no larger than a layer output (``batch >= n``), or tiny (``n <= INVERSE_WIDTH``);
    otherwise the estimator's ``n``-vectors keep the check's memory at the factors'."""
    return batch >= n or n <= INVERSE_WIDTH


def form_inverse(weight: Tensor) -> Tensor:
    """``W^{-1}`` for ``(..., n, n)`` weights, from their LU factors (``torch.linalg.lu_solve``
    against the identity), without judging the weight."""
    lu, pivots = lu_factor(weight)
    return torch.linalg.lu_solve(lu, pivots, _identity(weight.shape[-1], weight.dtype, weight.device))


class Factors:
    """What the check before the sweep left for one dense layer's reverse step.

    ``inverse`` (``W^{-1}``) or ``lu`` and ``pivots``: kept factors, or ``None`` when the budget had
    no room (the step then forms them again, without judging the weight a second time);
    ``use_inverse``: if nothing was kept, form ``W^{-1}`` and multiply rather than solve
    (:func:`prefer_inverse`). ``settle`` withdraws the inverse when the verdict says ``SOLVE``.
    """

    __slots__ = ("use_inverse", "inverse", "lu", "pivots")

    def __init__(self, use_inverse: bool) -> None:
        self.use_inverse = use_inverse
        self.inverse: Tensor | None = None
        self.lu: Tensor | None = None
        self.pivots: Tensor | None = None

    def settle(self, code: int) -> None:
        if code & SOLVE:
            self.use_inverse, self.inverse = False, None


class InvertibleLinear(Invertible):
    """Dense layer ``y = x W^T + b`` with square ``W``; inverse ``x = (y - b) W^{-T}`` by LU.

    Shapes: ``x``, ``y``: ``(batch, features)``; ``weight``: ``(features, features)``;
    ``bias``: ``(features,)`` or ``None``.

    Reverse step (closed form, no recomputed forward):

        x = (y - b) W^{-T},   x_bar = y_bar W,   W_bar = y_bar^T x,   b_bar = sum_batch y_bar.

    Conditioning: ``W`` starts orthogonal (cond 1), but training can drive it towards singular.
    ``inverse`` and ``reverse`` estimate ``cond_1(W)`` from the LU factors they solve with (a few
    extra O(features^2) solves, see ``invlib._verdict``): ``ValueError`` if ``W`` is singular to
    working precision (``cond_1 > 1/eps``) or holds NaN/inf, a warning above ``1/sqrt(eps)`` or on
    large LU pivot growth; ``forward`` checks nothing. Do not use this layer when ``features`` is
    large enough that the O(features^3) factorisation per backward matters; :class:`invlib.LULinear`
    keeps ``W`` factorised instead.
    """

    draws_random = False

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
            return self._solve(y, weight, self.bias, None).to(y.dtype)

    def check_inverse(self) -> None:
        with torch.no_grad():
            weight = self.weight.to(work_dtype(self.weight))
            lu, pivots = lu_factor(weight)
            check_lu(lu, pivots, weight, owner="InvertibleLinear")

    def _solve(self, y: Tensor, weight: Tensor, bias: Tensor | None, prepared: Factors | None) -> Tensor:
        """``x = (y - b) W^{-T}`` in :func:`invlib.base.work_dtype` (float32 for half precision).

        ``prepared`` (inside :class:`InvertibleSequential`): the check before the sweep judged
        ``W`` and chose the method, and may have left its factors or inverse; ``None``: factorise
        and judge here.
        """
        dtype = work_dtype(y, weight)
        if y.dtype != dtype or weight.dtype != dtype:
            weight, y = weight.to(dtype), y.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if prepared is not None and (prepared.inverse is not None or prepared.use_inverse and prepared.lu is None):
            inverse = prepared.inverse if prepared.inverse is not None else form_inverse(weight)
            if bias is None:
                return y @ inverse.mT
            return torch.addmm(inverse @ bias, y, inverse.mT, alpha=1.0, beta=-1.0)  # (y - b) W^{-T}
        if prepared is not None and prepared.lu is not None:
            lu, pivots = prepared.lu, prepared.pivots
        else:
            lu, pivots = lu_factor(weight)
            if prepared is None:
                check_lu(lu, pivots, weight, owner="InvertibleLinear")
        if y.shape[0] < weight.shape[-1]:  # the permutation matrix would outweigh the batch:
            # LAPACK's getrs applies the pivots itself (a little slower than two triangular solves)
            return torch.linalg.lu_solve(lu, pivots, y if bias is None else y - bias, left=False, adjoint=True)
        return solve_lu_right(y, bias, pivots_to_columns(lu, pivots), lu, lu)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                prepared: Factors | None = None) -> tuple[Tensor, Tensor]:
        if prepared is None:  # inside InvertibleSequential y is the container's own, checked in forward
            y = self._check(y, "y")
        with torch.enable_grad():  # a parametrised weight is computed once, with its graph
            weight, bias = self.weight, self.bias
        applied = as_applied(weight.detach())  # under autocast: invert and differentiate round(W)
        with torch.no_grad(), full_precision(y):
            x = self._solve(y, applied, None if bias is None else bias.detach(), prepared)
            if y_bar.dtype != x.dtype or applied.dtype != x.dtype:
                y_bar, applied = y_bar.to(x.dtype), applied.to(x.dtype)
            weight_bar = y_bar.mT @ x
            bias_bar = None if bias is None else y_bar.sum(0)
            # y is spent once x exists: when it is ours (and of x's dtype), x_bar goes into its memory.
            x_bar = torch.matmul(y_bar, applied, out=y) if overwrite and y.dtype == x.dtype else y_bar @ applied
        accumulate_grad(weight, weight_bar)
        accumulate_grad(bias, bias_bar)
        return x, x_bar

    @classmethod
    def judge(cls, states: list[State], budget: Budget, verdicts: Verdicts) -> None:
        """Judge the weights of a stack's dense layers at once (``invlib._prepare``).

        Same-shaped weights are stacked and factorised in one call, in batches whose memory
        fits ``budget``; where :func:`prefer_inverse` says so the inverses are formed from the
        factors too, which gives ``||W^{-1}||_1`` exactly. What fits in ``budget`` stays for the
        reverse steps: the inverse, or the packed factors and pivots. A weight with
        ``cond_1(W) > n`` is marked ``SOLVE``, and its step solves rather than multiplies.
        """
        groups: dict[tuple, list[tuple[State, Tensor]]] = {}
        for state in states:
            weight = applied(state, read(state, "weight"))
            n, dtype, batch = weight.shape[-1], work_dtype(weight), state.shape[0]
            key = (n, dtype, weight.device, prefer_inverse(batch, n), prefer_inverse(batch, n))
            groups.setdefault(key, []).append((state, weight))
        for (n, dtype, device, formed, preferred), members in groups.items():
            size = n * n * torch.empty((), dtype=dtype).element_size()
            start = 0
            for step, keep in budget.chunks(len(members), size + (0 if formed else 8 * n), 3 * size):
                chunk = members[start:start + step]
                start += step
                weights = torch.stack([w for _, w in chunk]) if step > 1 else chunk[0][1][None]
                lu, pivots, inverse, cond, growth = _dense_stats(weights.to(dtype), formed)
                del weights
                explains, settles = [], []
                for j, (state, _) in enumerate(chunk):
                    factors = Factors(preferred)
                    if keep and formed:
                        factors.inverse = inverse[j]
                    elif keep:
                        factors.lu, factors.pivots = lu[j], pivots[j]
                    state.prepared = factors
                    explains.append(partial(_explain, state, formed))
                    settles.append(factors.settle)
                verdicts.put_many([state.index for state, _ in chunk],
                                  code_of(cond, torch.finfo(dtype).eps, growth, float(n) if formed else None),
                                  explains, settles)
                del lu, pivots, inverse, cond, growth  # before the next batch's factors exist

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}"


def _dense_stats(weights: Tensor, use_inverse: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Factors of ``(m, n, n)`` weights, their inverses if ``use_inverse``, the condition
    estimates ``cond_1`` (``||W^{-1}||_1`` exact from the inverse, else estimated from the
    factors; inf or NaN for a zero pivot or non-finite entries, as the solves divide by it) and
    the pivot growth ``max|U_ij| / max|W_ij|``, all on the device, in few operations."""
    m, n = weights.shape[0], weights.shape[-1]
    lu, pivots = lu_factor(weights)
    norm = torch.linalg.matrix_norm(weights, 1)
    # max|L U| bounds max|U| (|L_ij| <= 1 under partial pivoting): one call; a weight it flags is
    # examined exactly when its verdict is explained
    growth = lu.abs().amax((-2, -1)) / weights.abs().amax((-2, -1))
    if use_inverse:
        inverse = torch.linalg.lu_solve(lu, pivots, _identity(n, weights.dtype, weights.device))
        return lu, pivots, inverse, norm * torch.linalg.matrix_norm(inverse, 1), growth
    return lu, pivots, None, norm * norm1(lu_solver(lu, pivots), (m,), n, lu.dtype, lu.device), growth


def _identity(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``I_n`` (made per call: a cached one would be memory the first measured step counts)."""
    return torch.eye(n, dtype=dtype, device=device)


def _explain(state: State, use_inverse: bool) -> float:
    """The host side of a dense verdict: the same numbers for this one weight, read and judged."""
    weight = applied(state, read(state, "weight"))
    weight = weight.to(work_dtype(weight))
    lu, _, _, cond, _ = _dense_stats(weight[None], use_inverse)
    smallest = torch.diagonal(lu, dim1=-2, dim2=-1).abs().amin()
    growth = lu.abs().triu_().amax() / weight.abs().amax()  # exactly max|U| / max|W|
    broken = ~torch.isfinite(weight).all()
    cond, smallest, growth, broken = torch.stack([cond[0], smallest, growth, broken.to(cond.dtype)]).tolist()
    eps = torch.finfo(weight.dtype).eps
    return explain_lu("InvertibleLinear", None, eps, cond, smallest, 0, growth, 0, bool(broken), weight)
