"""Space-to-depth ("squeeze"): halve the height and width, quadruple the channels, lose nothing.

The invertible replacement for a strided transition (Dinh et al., "Density estimation using Real
NVP", 2017, section 3.6; Jacobsen, Smeulders & Oyallon, "i-RevNet", ICLR 2018, section 3.1).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_positive_int, check_tensor
from .base import Invertible


class Squeeze2d(Invertible):
    """``y[b, c f^2 + i f + j, h, w] = x[b, c, f h + i, f w + j]`` for ``0 <= i, j < f``.

    Every ``f x f`` patch of every channel becomes ``f^2`` channels of one pixel
    (``torch.nn.functional.pixel_unshuffle``): a permutation of the entries, so the inverse
    (``pixel_shuffle``) is exact, the Jacobian is a permutation matrix with condition number 1,
    and the reverse step applies the same permutation to the cotangent:
    ``x = shuffle(y)``, ``x_bar = shuffle(y_bar)``. No arithmetic, no parameters.
    Shapes: ``x``: ``(batch, C, H, W)`` with ``H`` and ``W`` divisible by ``f``;
    ``y``: ``(batch, C f^2, H/f, W/f)``. The element count is unchanged, so a stack of squeezes
    and couplings keeps the input's size at every depth, where a strided convolution would
    shrink it and lose information.
    """

    draws_random = False

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = check_positive_int(factor, name="factor", owner="Squeeze2d")

    def forward(self, x: Tensor) -> Tensor:
        x = check_tensor(x, name="x", owner="Squeeze2d", layout="(batch, C, H, W)", ndim=4)
        f = self.factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"Squeeze2d: x must have a height and width divisible by factor={f}, got shape {tuple(x.shape)}; "
                "pad or crop the images, or squeeze by a factor that divides both")
        return F.pixel_unshuffle(x, f)

    def _check_output(self, y: Tensor, name: str) -> Tensor:
        y = check_tensor(y, name=name, owner="Squeeze2d", layout="(batch, C * factor^2, H, W)", ndim=4)
        if y.shape[1] % self.factor**2:
            raise ValueError(
                f"Squeeze2d: {name} must have a multiple of factor^2 = {self.factor**2} channels to unsqueeze, "
                f"got shape {tuple(y.shape)}")
        return y

    def inverse(self, y: Tensor) -> Tensor:
        return F.pixel_shuffle(self._check_output(y, "y"), self.factor)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        y = self._check_output(y, "y")
        with torch.no_grad():
            return F.pixel_shuffle(y, self.factor), F.pixel_shuffle(y_bar, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
