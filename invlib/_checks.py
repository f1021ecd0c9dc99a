"""Validation at the public boundary: tensor type, shape, dtype, and the conditioning of a pivoted LU.

Every public ``forward``/``inverse`` calls these helpers before doing any arithmetic, so a wrong
input fails with a message that names the argument, what was expected, what was received and
how to fix it, instead of a shape error deep inside ``matmul`` or ``fft``.

The conditioning check reads the pivots ``U_ii`` of ``W = P L U`` that the inverse computes anyway:

    ratio = max_i |U_ii| / min_i |U_ii|.

A large ratio means trouble: either ``W`` is ill-conditioned or the factorisation suffered pivot
growth (both make the solve inaccurate). Only then, off the hot path, is the true 2-norm
condition number ``sigma_max / sigma_min`` computed from the matrices themselves, to tell the two
apart. Thresholds, with ``eps = finfo(dtype).eps``:

* ``cond > 1/eps`` (or a zero pivot): singular to working precision -> ``ValueError``;
* ``cond > 1/sqrt(eps)``: badly conditioned, about half the digits may be lost -> warning;
* ``ratio > 1/sqrt(eps)`` but ``cond`` small: pivot growth, the LU solve may be inaccurate -> warning.

Limitation: the pivots can all be of similar size while ``W`` is badly conditioned (when ``L`` or
``U`` has large off-diagonal entries), and then nothing is reported; computing ``cond`` on every
inverse would cost an SVD each time. Check ``torch.linalg.cond(layer.weight)`` when in doubt.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor


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
    (``None`` for layers without parameters, which then only need a floating dtype).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner}: {name} must have a floating dtype, got {x.dtype}; "
            f"convert it with {name}.float() or {name}.double()"
        )
    if dtype is not None and x.dtype != dtype:
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


def check_pivots(pivots: Tensor, *, owner: str, where: Callable[[int], str] | None = None,
                 matrices: Tensor | Callable[[], Tensor] | None = None) -> float:
    """Raise if the LU pivots say the matrix is singular, warn if badly conditioned; return the ratio.

    ``pivots`` has shape ``(m, n)``: the diagonals ``U_ii`` of ``m`` factorised ``n x n`` matrices
    (``m = 1`` for a single weight, one per frequency for a convolution). Their magnitudes are
    compared together because the operator's condition number spans all ``m`` blocks.
    ``matrices`` (``(m, n, n)`` or ``(n, n)``, or a function returning them), when given, are the
    factorised matrices; they are formed and read only when the ratio is large, to compute the
    true condition number.
    ``where(k)`` describes block ``k`` in messages (e.g. ``"at frequency (0, 3)"``).
    """
    magnitude = pivots.detach().abs()
    eps = torch.finfo(magnitude.dtype).eps
    if not bool(torch.isfinite(magnitude).all()):
        raise ValueError(f"{owner}: the weight contains NaN or inf (non-finite LU pivots); re-initialise the layer")
    flat = magnitude.reshape(-1)
    k = int(torch.argmin(flat))
    smallest, largest = float(flat[k]), float(flat.max())
    ratio = math.inf if smallest == 0.0 else largest / smallest
    if ratio <= 1.0 / math.sqrt(eps):
        return ratio
    block = k // magnitude.shape[-1]
    cond = ratio
    if matrices is not None and smallest > 0.0:
        matrices = matrices() if callable(matrices) else matrices
        sigma = torch.linalg.svdvals(matrices.detach())
        cond = float(sigma.max() / sigma.min()) if float(sigma.min()) > 0 else math.inf
        if cond <= 1.0 / math.sqrt(eps):
            warnings.warn(
                f"{owner}: LU pivot growth: pivot ratio max|U_ii|/min|U_ii| = {ratio:.3e} although the "
                f"condition number is only {cond:.3e}; the LU solve may lose about "
                f"{math.log10(ratio):.0f} of {-math.log10(eps):.0f} significant digits",
                UserWarning, stacklevel=3)
            return ratio
        if matrices.ndim == 3:  # name the block holding the smallest singular value
            block = int(torch.argmin(sigma[..., -1]))
    location = f" {where(block)}" if where is not None else ""
    if cond > 1.0 / eps:
        raise ValueError(
            f"{owner}: the weight is singular to working precision{location}: smallest LU pivot "
            f"|U_ii| = {smallest:.3e}, condition number {cond:.3e} > 1/eps = {1 / eps:.3e}; "
            "the layer has no inverse, re-initialise it or keep its weight away from singular matrices"
        )
    warnings.warn(
        f"{owner}: the inverse is badly conditioned{location}: condition number {cond:.3e} > "
        f"1/sqrt(eps) = {1 / math.sqrt(eps):.3e} (smallest LU pivot |U_ii| = {smallest:.3e}); expect to "
        f"lose about {math.log10(cond):.0f} of {-math.log10(eps):.0f} significant digits in the "
        "reconstructed input",
        UserWarning,
        stacklevel=3,
    )
    return ratio
