"""Validation at the public boundary: tensor type, shape, dtype and finiteness.

Every public ``forward``/``inverse`` calls these helpers before doing any arithmetic, so a wrong
input fails with a message that names the argument, what was expected, what was received and
how to fix it, instead of a shape error deep inside ``matmul`` or ``fft``. Whether a weight can
be inverted at all (its conditioning) is judged in :mod:`invlib._verdict`.
"""

from __future__ import annotations


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
