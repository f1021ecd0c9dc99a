"""Validation at the public boundary: tensor type, shape, dtype, and the conditioning of a weight.

Every public ``forward``/``inverse`` calls these helpers before doing any arithmetic, so a wrong
input fails with a message that names the argument, what was expected, what was received and
how to fix it, instead of a shape error deep inside ``matmul`` or ``fft``.

The conditioning checks (:func:`check_lu`, :func:`check_condition`) run on the factors
``W = P L U`` that the inverse solves with anyway. They estimate the 1-norm condition number

    cond_1(W) = ||W||_1 ||W^{-1}||_1

with the Hager-Higham estimator of :mod:`invlib._condition` (LAPACK ``xGECON``'s): a few extra
solves, O(n^2) each, no SVD. The ratio of the pivots ``max|U_ii| / min|U_ii|`` is no substitute:
a unit triangular matrix with large off-diagonal entries has every pivot 1 and a condition number
up to 1e16 at n = 8. For a block-diagonal operator (a convolution: one block per frequency) the
condition number is ``max_k ||W_k||_1 * max_k ||W_k^{-1}||_1``. Thresholds, ``eps = finfo(dtype).eps``:

* non-finite factors: the weight holds NaN or inf -> ``ValueError``;
* a zero pivot, or ``cond > 1/eps``: singular to working precision -> ``ValueError``;
* ``cond > 1/sqrt(eps)``: badly conditioned, ``log10(cond)`` digits may be lost -> ``UserWarning``;
* (packed LU only) pivot growth ``max|U_ij| / max|W_ij| > 1/sqrt(eps)``: the factors themselves are
  inaccurate even if ``W`` is well conditioned -> ``UserWarning``.

The estimate is a lower bound, usually within a factor 3 of ``cond_1``, which is itself within a
factor ``n`` of the 2-norm condition number: a matrix within a factor ~3n of a threshold may fall
on either side of it. (``LULinear`` never forms ``W``, so it estimates ``||W||_1`` the same way,
from products with its factors; that product of two estimates can be off by up to ~9.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from ._condition import Operator, lu_solver, norm1

_JUDGED: ContextVar[bool] = ContextVar("invlib_conditioning_judged", default=False)


@contextmanager
def conditioning_judged() -> Iterator[None]:
    """Within: the weights' conditioning was judged moments ago, so dense inverses skip judging it again.

    :class:`invlib.InvertibleSequential` judges every dense layer (``check_inverse``: one
    factorisation and one condition estimate, raising or warning there) before its first reverse
    step hands any gradient to autograd, and checks before each step that no parameter changed
    since. Each step then needs the factors only to solve; the second condition estimate (a few
    O(n^2) solves and host reads per layer) would repeat the verdict.
    """
    token = _JUDGED.set(True)
    try:
        yield
    finally:
        _JUDGED.reset(token)


def judged() -> bool:
    """Whether the caller runs inside :func:`conditioning_judged`."""
    return _JUDGED.get()


def check_tensor(
    x: object,
    *,
    name: str,
    owner: str,
    layout: str,
    ndim: int | None = None,
    min_ndim: int = 0,
    sizes: dict[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Return ``x`` after checking type, rank, fixed dimension sizes and dtype.

    ``layout`` is a human-readable shape such as ``"(batch, features=6)"`` used in messages;
    ``sizes`` maps a dimension index to its required size; ``dtype`` is the parameters' dtype
    (``None`` for layers without parameters, which then only need a floating dtype); under
    ``torch.autocast`` for ``x``'s device any floating dtype is accepted, as autocast mixes them.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner}: {name} must have a floating dtype, got {x.dtype}; "
            f"convert it with {name}.float() or {name}.double()"
        )
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{owner}: {name} has dtype {x.dtype} but the parameters have dtype {dtype}; "
            f"convert the input with {name}.to({dtype}) or the layer with .to({x.dtype})"
        )
    shape = tuple(x.shape)
    if (ndim is not None and x.ndim != ndim) or x.ndim < min_ndim:
        raise ValueError(f"{owner}: {name} must have shape {layout}, got {x.ndim}-d shape {shape}")
    for dim, size in (sizes or {}).items():
        if shape[dim] != size:
            raise ValueError(
                f"{owner}: {name} must have shape {layout}, got {shape} (dimension {dim} is {shape[dim]}, "
                f"expected {size}); reshape the input or build the layer for this size"
            )
    return x


def check_positive_int(value: object, *, name: str, owner: str) -> int:
    """Return ``value`` as an ``int`` after checking that it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_finite(t: Tensor, *, name: str, owner: str, fix: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf, saying how many entries and how to ``fix`` it.

    One reduction (a non-finite entry makes the sum non-finite) on the common path; the entries
    are examined one by one only when the sum is not finite, which a huge finite ``t`` can cause too.
    """
    if not bool(torch.isfinite(t.detach().sum())) and not bool(torch.isfinite(t).all()):
        bad = t.detach().isnan().sum(), t.detach().isinf().sum()
        raise ValueError(f"{owner}: {name} contains NaN or inf ({int(bad[0])} NaN and {int(bad[1])} inf "
                         f"of {t.numel()} entries); {fix}")


def check_lu(lu: Tensor, pivots: Tensor, matrices: Tensor, *, owner: str, weight: Tensor | None = None,
             where: Callable[[int], str] | None = None) -> float:
    """:func:`check_condition` for a packed ``torch.linalg.lu_factor`` of ``matrices``, plus pivot growth.

    ``matrices``: ``(n, n)`` or ``(m, n, n)``, the factorised matrices; ``lu``, ``pivots``: their
    packed factors; ``weight``: the parameter they are computed from (default: ``matrices``).
    A non-finite ``lu`` means a non-finite weight (finite ``L`` and ``U`` have a finite product),
    so finiteness costs one pass over ``lu`` and the weight is only searched on the error path.
    """
    tally = LUTally(owner=owner, weight=weight, where=where)
    tally.add(lu, pivots, matrices)
    return tally.finish()


class LUTally:
    """:func:`check_lu` over a block-diagonal operator factorised a chunk of blocks at a time.

    ``add`` each chunk's packed factors in order (blocks are numbered across chunks for
    ``where``); ``finish`` then judges the whole operator, ``cond_1 = max_k ||W_k||_1 *
    max_k ||W_k^{-1}||_1``, and warns about the worst pivot growth, once. Only running maxima are
    kept, so a chunked inverse never holds the factors of all blocks at once.
    """

    def __init__(self, *, owner: str, weight: Tensor | None = None,
                 where: Callable[[int], str] | None = None) -> None:
        self.owner, self.weight, self.where = owner, weight, where
        self.blocks = 0
        self.norm = 0.0
        self.worst = (-1.0, 0.0, 0)  # (||W_k^{-1}||_1 estimate, smallest pivot, k) of the worst block
        self.growth = (0.0, 0)
        self.eps = 0.0

    def add(self, lu: Tensor, pivots: Tensor, matrices: Tensor) -> None:
        lu, matrices = lu.detach(), matrices.detach()
        if lu.ndim == 2:
            lu, pivots, matrices = lu[None], pivots[None], matrices[None]
        if not bool(torch.isfinite(lu.sum())) and not bool(torch.isfinite(lu).all()):
            fix = ("the values entered the weight before this inverse ran (a diverged optimiser step?): "
                   "re-initialise the layer or lower the learning rate")
            check_finite(matrices if self.weight is None else self.weight.detach(), name="the weight",
                         owner=self.owner, fix=fix)
            raise ValueError(f"{self.owner}: the LU factors of the weight overflowed (its entries are finite "
                             f"but too large for {lu.dtype}); rescale the weight")
        magnitude = matrices.abs()  # one (m, n, n) real temporary at a time: convolutions have many blocks
        norm, largest = magnitude.sum(-2).amax(-1), magnitude.amax((-2, -1))
        self.eps = torch.finfo(magnitude.dtype).eps
        del magnitude
        m, n = lu.shape[0], lu.shape[-1]
        smallest = torch.diagonal(lu, dim1=-2, dim2=-1).abs().amin(-1)
        if float(smallest.min()) > 0.0:
            inverse_norm = norm1(lu_solver(lu, pivots), (m,), n, lu.dtype, lu.device).nan_to_num(math.inf, math.inf)
        else:  # a zero pivot: singular, and a solve would only produce inf and nan
            inverse_norm = torch.where(smallest > 0, 0.0, math.inf)
        k = int(torch.argmax(inverse_norm))
        self.norm = max(self.norm, float(norm.max()))
        if float(inverse_norm[k]) > self.worst[0]:
            self.worst = (float(inverse_norm[k]), float(smallest[k]), self.blocks + k)
        # Partial pivoting keeps |L_ij| <= 1, so max|LU| bounds max|U|; mask out L only when that bound is large.
        growth = lu.abs().amax((-2, -1)) / largest
        if float(growth.max()) > 1.0 / math.sqrt(self.eps):
            growth = lu.triu().abs().amax((-2, -1)) / largest
            j = int(torch.argmax(growth))
            if float(growth[j]) > self.growth[0]:
                self.growth = (float(growth[j]), self.blocks + j)
        self.blocks += m

    def finish(self) -> float:
        inverse_norm, smallest, k = self.worst
        cond = _judge(self.norm * inverse_norm, smallest, self.eps, owner=self.owner,
                      location=_location(self.where, k), dtype=_real_name(self.eps))
        growth, j = self.growth
        if growth > 1.0 / math.sqrt(self.eps):
            warnings.warn(
                f"{self.owner}: LU pivot growth{_location(self.where, j)}: max|U_ij| / max|W_ij| = {growth:.3e} > "
                f"1/sqrt(eps) = {1 / math.sqrt(self.eps):.3e} although the condition number is {cond:.3e}; the LU "
                f"solve may lose about {math.log10(growth):.0f} of {-math.log10(self.eps):.0f} significant "
                "digits; a small perturbation of the weight usually removes it",
                UserWarning, stacklevel=4)
        return cond


def _real_name(eps: float) -> str:
    return {torch.finfo(t).eps: str(t) for t in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}.get(
        eps, "this dtype")


def _location(where: Callable[[int], str] | None, k: int) -> str:
    return f" {where(k)}" if where is not None else ""


def check_condition(diagonal: Tensor, norm: Tensor, solve: Operator, *, owner: str,
                    where: Callable[[int], str] | None = None) -> float:
    """Raise if the weight is singular to working precision, warn if badly conditioned; return cond.

    For ``m`` factorised ``n x n`` blocks ``W_k = P_k L_k U_k``: ``diagonal`` ``(m, n)`` holds the
    pivots ``U_ii``, ``norm`` ``(m,)`` the norms ``||W_k||_1`` (exact or estimated) and ``solve``
    applies ``W_k^{-1}`` and ``W_k^{-H}`` to ``(m, n, k)`` right-hand sides (:mod:`invlib._condition`).
    Returns the estimate of ``cond_1 = max_k ||W_k||_1 * max_k ||W_k^{-1}||_1`` of the whole operator.
    ``where(k)`` names block ``k`` in messages (e.g. ``"at frequency (0, 3)"``).
    """
    m, n = diagonal.shape
    smallest = diagonal.detach().abs().amin(-1)
    eps = torch.finfo(smallest.dtype).eps
    if float(smallest.min()) > 0.0:
        inverse_norm = norm1(solve, (m,), n, diagonal.dtype, diagonal.device).nan_to_num(math.inf, math.inf)
    else:  # a zero pivot: singular, and a solve would only produce inf and nan
        inverse_norm = torch.where(smallest > 0, 0.0, math.inf)
    k = int(torch.argmax(inverse_norm))
    cond = float(norm.detach().max()) * float(inverse_norm[k])
    return _judge(cond, float(smallest[k]), eps, owner=owner, location=_location(where, k),
                  dtype=str(smallest.dtype))


def _judge(cond: float, smallest: float, eps: float, *, owner: str, location: str, dtype: str) -> float:
    """Raise above ``1/eps``, warn above ``1/sqrt(eps)``; return ``cond``."""
    if cond <= 1.0 / math.sqrt(eps):
        return cond
    if cond > 1.0 / eps:
        raise ValueError(
            f"{owner}: the weight is singular to working precision{location}: smallest LU pivot "
            f"|U_ii| = {smallest:.3e}, condition number {cond:.3e} (1-norm estimate) > 1/eps = "
            f"{1 / eps:.3e}; the layer has no inverse in {dtype}: re-initialise it or keep its "
            "weight away from singular matrices"
        )
    warnings.warn(
        f"{owner}: the inverse is badly conditioned{location}: condition number {cond:.3e} (1-norm "
        f"estimate) > 1/sqrt(eps) = {1 / math.sqrt(eps):.3e}; expect to lose about {math.log10(cond):.0f} "
        f"of {-math.log10(eps):.0f} significant digits in the reconstructed input and the gradients; keep the "
        "weight better conditioned or compute in float64",
        UserWarning,
        stacklevel=5,
    )
    return cond
