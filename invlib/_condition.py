"""The 1-norm condition number ``cond_1(A) = ||A||_1 ||A^{-1}||_1``, estimated from existing factors.

``||A||_1 = max_j sum_i |A_ij|`` is read off ``A`` in O(n^2). ``||A^{-1}||_1`` would need the
inverse (or, for the 2-norm, an SVD), both O(n^3); instead :func:`norm1` estimates it from a few
solves with ``A`` and ``A^H`` using factors the caller already has, O(n^2) each. The estimator is
Hager's (1984) ascent as refined by Higham (1988, "FORTRAN codes for estimating the one-norm of a
real or complex matrix", ACM TOMS 14(4)), the algorithm of LAPACK's ``xLACN2`` used by ``xGECON``.
For an operator ``B`` (here ``A^{-1}``, or ``A`` itself when only its factors exist)

    ||B||_1 = max_{||v||_1 = 1} ||B v||_1,

a convex function of ``v``, maximised at a unit vector ``e_j``. Start from ``v = (1, ..., 1)/n``;
with ``y = B v`` a subgradient is ``z = B^H sign(y)``, and ``e_j`` with ``j = argmax_i |z_i|`` is
the vertex it points to. Step to ``e_j`` while the estimate grows and ``j`` changes, at most five
products with ``B`` in all. Higham's extra vector ``b_i = (-1)^i (1 + i/(n-1))`` catches matrices
on which the ascent stalls: ``2 ||B b||_1 / (3n)`` is a lower bound too.

Every candidate is ``||B v||_1 / ||v||_1`` for some ``v``, so the estimate is a lower bound on
``||B||_1``; it is often exact and usually within a factor 3 (``tests/test_conditioning.py``
measures it on random, graded, triangular and nearly singular matrices, real and complex).
Batched: ``B`` may carry leading dimensions (one matrix per frequency of a convolution, or one
per layer of a stack); every matrix takes the same five steps. LAPACK stops a matrix's ascent as
soon as it stops climbing; here every step runs (steps past a matrix's own stopping point only
add candidates, so they never lower its estimate), so that no value has to be read back to the
host to decide whether to go on: on a GPU each such read is a synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``apply(V, adjoint)``: ``B V`` (``adjoint=False``) or ``B^H V`` for ``V`` of shape ``(*m, n, k)``,
#: where ``B`` is the operator whose norm is wanted: ``A^{-1}`` (a solve) or ``A`` itself.
Operator = Callable[[Tensor, bool], Tensor]

_MAX_STEPS = 5  # products with B, as in xLACN2


def lu_solver(lu: Tensor, pivots: Tensor) -> Operator:
    """``A^{-1}`` as an :data:`Operator`, from a packed ``torch.linalg.lu_factor`` result ``(lu, pivots)``."""
    return lambda b, adjoint: torch.linalg.lu_solve(lu, pivots, b, adjoint=adjoint)


def norm1(apply: Operator, shape: tuple[int, ...], n: int, dtype: torch.dtype,
          device: torch.device | None = None) -> Tensor:
    """Estimate ``||B||_1`` for each of the ``(*shape)`` operators ``B`` (``n x n``) behind ``apply``.

    With ``apply = lu_solver(...)``, ``B = A^{-1}``. Returns a real tensor of shape ``shape``: a
    lower bound on the true value, usually within a factor 3; ``inf`` or ``nan`` entries mean
    ``apply`` overflowed (for a solve: ``A`` is numerically singular). Cost: 5 calls with
    ``adjoint=False`` (the first with 2 columns) and 4 with ``adjoint=True``, one column each,
    O(n^2) per matrix and call; nothing is read back to the host.
    """
    real = torch.empty((), dtype=dtype).real.dtype
    start = torch.empty(2, n, dtype=real, device=device)
    start[0] = 1.0 / n
    torch.linspace(1.0, 2.0, n, out=start[1])  # Higham's b_i = (-1)^i (1 + i/(n-1))
    start[1, 1::2] *= -1
    y = apply(start.to(dtype).mT.expand(*shape, n, 2), False)
    norms = y.abs().sum(-2)
    estimate = torch.maximum(norms[..., 0], norms[..., 1] * (2.0 / (3 * n)))
    if n == 1:
        return estimate
    y = y[..., :1]
    # sgn(y) (y/|y|, 0 at 0) is a subgradient of ||y||_1 at y; z = B^H sgn(y) points to the e_j
    # along which ||B v||_1 grows fastest. Every step runs for every matrix, whether or not its
    # own ascent has stopped: a step past that point only adds a candidate to the maximum, so
    # the estimate cannot drop, and the loop never reads a value back to decide (no host sync).
    j = apply(y.sgn(), True).abs().argmax(-2, keepdim=True)
    unit = torch.zeros(*shape, n, 1, dtype=dtype, device=device)
    for step in range(_MAX_STEPS - 1):
        y = apply(unit.zero_().scatter_(-2, j, 1.0), False)
        estimate = torch.maximum(estimate, y.abs().sum((-2, -1)))
        if step < _MAX_STEPS - 2:
            j = apply(y.sgn(), True).abs().argmax(-2, keepdim=True)
    return estimate
