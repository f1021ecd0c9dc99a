"""Same-size circular convolutions, inverted exactly in the Fourier domain.

The DFT diagonalises circular convolution: with ``X[f] = sum_n x[n] exp(-2 pi i f n / L)`` and
``p = k // 2``, the layer

    y[c, n] = b[c] + sum_{d, j} W[c, d, j] x[d, (n + j - p) mod L]

becomes, frequency by frequency, the ``C x C`` linear system

    Y[f] - L b delta_f0 = H[f] X[f],      H[f] = sum_j W[:, :, j] exp(+2 pi i f (j - p) / L)

(a shift by ``s = j - p`` multiplies ``X[f]`` by ``exp(+2 pi i f s / L)``); in 2-D the same
holds per axis. So the inverse is one complex ``C x C`` LU solve per frequency. Forming every
``H[f]`` and its factors at once would take ``2 nfreq C^2`` complex numbers, far more than a
layer output when ``C`` is large (``C = 64`` on 128 x 128: about 165 outputs at batch 1), so the
inverse works through the frequencies in chunks, solving the spectrum in place, with the
chunk's working memory bounded by ``scratch_bytes`` (default: one layer output). Invertible
convolutions in this Fourier sense: Karami et al., "Invertible Convolutional Flow", NeurIPS 2019;
Finzi et al., "Invertible Convolutional Networks", ICML workshop 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import LUTally, check_positive_int, check_tensor
from .base import Invertible, accumulate_grad, as_applied, full_precision, work_dtype
from .linear import random_orthogonal

_CONTRACT = {1: "fj,jcd->fcd", 2: "fj,fk,jkcd->fcd"}  # per-frequency phases x kernel taps -> H[f]


class _CircularConv(Invertible):
    """Shared implementation of :class:`CircularConv1d` and :class:`CircularConv2d`."""

    spatial_dims: int

    def __init__(self, channels: int, kernel_size: int, bias: bool = True,
                 scratch_bytes: int | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        if scratch_bytes is not None:
            check_positive_int(scratch_bytes, name="scratch_bytes", owner=owner)
        #: Bound on the inverse's working memory beyond the spectra (frequency responses, their
        #: LU factors and the solves of one chunk of frequencies); ``None``: one layer output.
        self.scratch_bytes = scratch_bytes
        self.channels = check_positive_int(channels, name="channels", owner=owner)
        self.kernel_size = check_positive_int(kernel_size, name="kernel_size", owner=owner)
        d, k = self.spatial_dims, kernel_size
        # left / right circular padding per axis: k - 1 in total keeps the spatial size.
        self.pad = (k // 2, k - 1 - k // 2)
        # Orthogonal centre tap plus small off-centre taps: ||H[f] - Q|| <~ 0.2, so every H[f]
        # is within 20% of orthogonal (cond <~ 1.5) at initialisation.
        weight = torch.randn(channels, channels, *(k,) * d) * (0.1 / (math.sqrt(channels) * k**d))
        weight[(..., *(k // 2,) * d)] = random_orthogonal(channels)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def _check(self, t: Tensor, name: str) -> Tensor:
        owner = type(self).__name__
        axes = ("L",) if self.spatial_dims == 1 else ("H", "W")
        layout = f"(batch, channels={self.channels}, {', '.join(axes)})"
        t = check_tensor(
            t, name=name, owner=owner, layout=layout, ndim=2 + self.spatial_dims,
            sizes={1: self.channels}, dtype=self.weight.dtype,
        )
        if min(t.shape[2:]) < self.pad[0]:
            raise ValueError(
                f"{owner}: {name} has spatial size {tuple(t.shape[2:])}, but circular padding for "
                f"kernel_size={self.kernel_size} needs every spatial size >= {self.pad[0]}; "
                "use a larger input or a smaller kernel"
            )
        return t

    def _circular_pad(self, t: Tensor, left: int, right: int) -> Tensor:
        return F.pad(t, (left, right) * self.spatial_dims, mode="circular")

    def _conv(self, t: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return (F.conv1d if self.spatial_dims == 1 else F.conv2d)(t, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x, "x")
        return self._conv(self._circular_pad(x, *self.pad), self.weight, self.bias)

    def frequency_response(self, size: Sequence[int]) -> Tensor:
        """Return ``H[f]`` for spatial ``size``, shape ``(*nfreq, C, C)``, complex.

        ``nfreq`` follows ``torch.fft.rfftn``: every frequency on leading axes, ``0 .. L//2``
        on the last. Differentiable with respect to ``weight``.
        """
        return self._response(size, self.weight)

    def _response(self, size: Sequence[int], weight: Tensor) -> Tensor:
        size = tuple(int(n) for n in size)
        if len(size) != self.spatial_dims:
            raise ValueError(f"{type(self).__name__}: size must have {self.spatial_dims} entries, got {size}")
        nfreq = (*size[:-1], size[-1] // 2 + 1)
        return self._response_rows(size, weight, 0, math.prod(nfreq)).reshape(*nfreq, self.channels, self.channels)

    def _response_rows(self, size: tuple[int, ...], weight: Tensor, start: int, stop: int) -> Tensor:
        """``H[f]`` for the frequencies ``start <= f < stop`` in row-major order over ``nfreq``:
        ``(stop - start, C, C)``, so that an inverse can work through the spectrum in chunks."""
        real = work_dtype(weight)  # no half-precision complex arithmetic on CPU
        taps = torch.arange(self.kernel_size, device=weight.device) - self.pad[0]
        nfreq = (*size[:-1], size[-1] // 2 + 1)
        flat = torch.arange(start, stop, device=weight.device)
        phases = []
        for axis in reversed(range(len(size))):  # unravel f into per-axis frequency indices
            freqs, flat = flat % nfreq[axis], flat // nfreq[axis]
            # Reduce f * (j - p) mod n in integers first: the angle then stays in [0, 2 pi).
            angle = (torch.outer(freqs, taps) % size[axis]).to(real) * (2 * math.pi / size[axis])
            phases.insert(0, torch.polar(torch.ones_like(angle), angle))
        kernel = weight.movedim((0, 1), (-2, -1)).to(phases[0].dtype)
        return torch.einsum(_CONTRACT[self.spatial_dims], *phases, kernel)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        weight = as_applied(self.weight)  # under autocast, the rounded kernel the forward applied
        with full_precision(y):
            return self._invert(y, weight, self.bias).to(y.dtype)

    def _invert(self, y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``x`` from ``y`` in :func:`invlib.base.work_dtype` (float32 for half precision).

        The spectrum of ``y - b`` is solved in place, a chunk of frequencies at a time: each
        chunk's responses ``H[f]`` are formed, factorised, checked and solved against, then
        freed, so the working memory beyond the spectra stays within ``scratch_bytes``.
        """
        dtype = work_dtype(y, weight)
        y, weight = y.to(dtype), weight.to(dtype)
        batch, channels, size = y.shape[0], self.channels, tuple(y.shape[2:])
        dims = tuple(range(2, y.ndim))
        nfreq = (*size[:-1], size[-1] // 2 + 1)
        total = math.prod(nfreq)

        def where(k: int) -> str:
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), nfreq))
            return f"at frequency {index} (spatial size {size})"

        bias = bias.to(dtype).view(channels, *(1,) * len(size)) if bias is not None else 0.0
        # MKL's FFT refuses an empty batch; the weight is still checked.
        spectrum = torch.fft.rfftn(y - bias, dim=dims) if batch else None
        flat = None if spectrum is None else spectrum.view(batch, channels, total)
        complex_bytes = 2 * y.element_size()
        budget = self.scratch_bytes or max(y.numel() * y.element_size(), 1)
        per_frequency = complex_bytes * (2 * channels * channels + 2 * channels * batch) + y.element_size() * channels**2
        chunk = max(1, budget // per_frequency)
        tally = LUTally(owner=type(self).__name__, weight=weight, where=where)
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            response = self._response_rows(size, weight, start, stop)  # (k, C, C)
            lu, pivots, _ = torch.linalg.lu_factor_ex(response)
            tally.add(lu, pivots, response)
            del response
            if flat is not None:
                part = flat[:, :, start:stop]
                part.copy_(torch.linalg.lu_solve(lu, pivots, part.permute(2, 1, 0)).permute(2, 1, 0))
            del lu, pivots
        tally.finish()
        if spectrum is None:
            return y - bias
        return torch.fft.irfftn(spectrum, s=size, dim=dims)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        y = self._check(y, "y")  # before autocast is switched off: it may hand over half precision
        with torch.enable_grad():  # a parametrised weight is computed once, with its graph
            weight, bias = self.weight, self.bias
        applied = as_applied(weight.detach())  # under autocast: invert and differentiate round(W)
        with torch.no_grad(), full_precision(y):
            x = self._invert(y, applied, None if bias is None else bias.detach())
            y_bar, w = y_bar.to(x.dtype), applied.to(x.dtype)
            spatial = tuple(range(2, 2 + self.spatial_dims))
            # Adjoint of circular correlation: correlate with the transposed, flipped kernel,
            # padding mirrored (q left, p right), since x_bar[m] = sum_j W_j^T y_bar[m - j + p].
            adjoint_kernel = w.transpose(0, 1).flip(spatial)
            x_bar = self._conv(self._circular_pad(y_bar, *reversed(self.pad)), adjoint_kernel, None)
            weight_bar = bias_bar = None
            if weight.requires_grad:
                weight_grad = torch.nn.grad.conv1d_weight if self.spatial_dims == 1 else torch.nn.grad.conv2d_weight
                weight_bar = weight_grad(self._circular_pad(x, *self.pad), weight.shape, y_bar)
            if bias is not None:
                bias_bar = y_bar.sum((0, *spatial))
        accumulate_grad(weight, weight_bar)
        accumulate_grad(bias, bias_bar)
        return x, x_bar

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"


class CircularConv1d(_CircularConv):
    """Invertible same-size 1-D convolution with circular padding (see the module docstring).

    ``y[c, n] = b[c] + sum_{d,j} W[c, d, j] x[d, (n + j - k//2) mod L]``; for odd ``k`` this is
    ``torch.nn.Conv1d(C, C, k, padding=k//2, padding_mode='circular')``.
    Shapes: ``x``, ``y``: ``(batch, C, L)`` with ``L >= k//2``; ``weight``: ``(C, C, k)``; ``bias``: ``(C,)``.
    ``scratch_bytes``: bound on the inverse's working memory beyond the spectra (default: one layer output).
    Inverse: FFT, one ``C x C`` complex LU solve per frequency (O(L C^3) to factor, O(batch L C^2)
    to solve), inverse FFT. Reverse: ``x`` by the inverse, ``x_bar`` and the weight gradient by the
    adjoint correlations, with no recomputed forward convolution.
    Conditioning: in the Fourier domain the layer is block diagonal, so its 1-norm condition number
    there is ``max_f ||H[f]||_1 * max_f ||H[f]^{-1}||_1``; ``inverse`` estimates it from the LU
    factors of every ``H[f]`` (Hager-Higham, a few O(C^2) solves per frequency, see ``invlib._checks``).
    A kernel singular at any frequency (e.g. taps summing to a singular matrix, at f = 0) has no
    inverse and raises ``ValueError`` naming that frequency, as does a weight holding NaN/inf; a
    condition number above ``1/sqrt(eps)`` warns, naming the frequency nearest to singular.
    """

    spatial_dims = 1


class CircularConv2d(_CircularConv):
    """Invertible same-size 2-D convolution with circular padding on both axes.

    ``y[c, m, n] = b[c] + sum_{d,i,j} W[c, d, i, j] x[d, (m + i - p) mod H, (n + j - p) mod W]``,
    ``p = k // 2``; for odd ``k`` equal to ``torch.nn.Conv2d(..., padding=k//2, padding_mode='circular')``.
    Shapes: ``x``, ``y``: ``(batch, C, H, W)``; ``weight``: ``(C, C, k, k)``; ``bias``: ``(C,)``.
    Inverse by ``rfft2`` and one LU solve per 2-D frequency; conditioning as for :class:`CircularConv1d`.
    """

    spatial_dims = 2
