"""Glow's invertible 1x1 convolution: one LU-factored channel mixing shared by every pixel.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018
(arXiv 1807.03039), section 3.2. A 1x1 convolution is a dense layer applied to each pixel's
channel vector, so it is :class:`~invlib.LULinear` on ``(batch * H * W, C)`` rows.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_tensor
from ._state import in_forward
from .base import full_precision
from .lu_linear import LULinear


def _rows(t: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B H W, C)``: each pixel's channel vector a row."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _images(rows: Tensor, like: Tensor) -> Tensor:
    """The inverse of :func:`_rows`, into the shape of ``like``, contiguous in NCHW."""
    b, c, h, w = like.shape
    return rows.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


class InvertibleConv1x1(LULinear):
    """``y[b, :, h, w] = W x[b, :, h, w] + bias`` with ``W = P L (U + diag(s))`` (C x C).

    Parameters, buffers, conditioning and error contract are those of :class:`~invlib.LULinear`
    (the condition of ``W`` is judged from its factors before the reverse sweep; a zero or
    non-finite pivot raises); ``bias`` defaults to off, as in Glow, where an actnorm layer
    supplies the shift. ``log|det dy/dx| = H W sum(log|s|)``.

    Inverse and reverse step: the rows of :class:`~invlib.LULinear`, one row per pixel:
    ``x = W^{-1} (y - bias)`` by two triangular solves, ``x_bar = W^T y_bar`` and
    ``W_bar = sum over pixels of y_bar x^T`` routed to the factors. Cost per image: ``2 C^2 H W``
    FLOPs for the forward, and as much for each of the solve, ``x_bar`` and ``W_bar``.
    Shapes: ``x``, ``y``: ``(batch, C, H, W)``.
    """

    def __init__(self, channels: int, bias: bool = False) -> None:
        super().__init__(channels, bias=bias)

    @property
    def channels(self) -> int:
        return self.features

    def _check(self, t: Tensor, name: str) -> Tensor:
        return check_tensor(
            t, name=name, owner="InvertibleConv1x1", layout=f"(batch, C={self.features}, H, W)",
            ndim=4, sizes={1: self.features}, dtype=self.log_s.dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x, "x")
        if not in_forward():  # inside InvertibleSequential the check before the sweep does it
            self._check_log_s()
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def check_inverse(self) -> None:
        with torch.no_grad():
            self._solve(torch.empty(0, self.features, dtype=self.log_s.dtype, device=self.log_s.device),
                        *self._factors(), None, False)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        with full_precision(y):
            x = self._solve(_rows(y), *self._factors(), self.bias, False)
        return _images(x, y).to(y.dtype)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                prepared: object = None) -> tuple[Tensor, Tensor]:
        y = self._check(y, "y")
        x, x_bar = self._reverse_rows(_rows(y), _rows(y_bar), prepared)
        return _images(x, y), _images(x_bar, y)

    def extra_repr(self) -> str:
        return f"channels={self.features}, bias={self.bias is not None}"
