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
from functools import partial
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._lu import lu_factor
from ._checks import check_positive_int, check_tensor
from ._prepare import Budget, applied, read
from ._state import State
from ._verdict import EXACT_BLOCK, LUTally, Verdicts
from .base import Invertible, accumulate_grad, as_applied, full_precision, work_dtype
from .linear import random_orthogonal

def _phases(n: int, nfreq: int, k: int, p: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``exp(+2 pi i f (j - p) / n)`` for frequencies ``f < nfreq`` and taps ``j < k``, ``(nfreq, k)``
    (a few kilobytes, made per call: a cache would be memory the first measured step counts).
    The product ``f (j - p)`` is reduced mod ``n`` in integers first, so the angle stays in
    ``[0, 2 pi)``."""
    taps = torch.arange(k, device=device) - p
    angle = (torch.outer(torch.arange(nfreq, device=device), taps) % n).to(torch.float64) * (2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def _frequency_namer(nfreq: tuple[int, ...], size: tuple[int, ...]):
    def where(k: int) -> str:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), nfreq))
        return f"at frequency {index} (spatial size {size})"
    return where


class Spectrum:
    """What the check before the sweep left for a convolution's reverse step: the LU factors of
    every frequency's response (``lu``, ``pivots``), or ``None`` when they did not fit in the
    budget (the step factorises again, a chunk at a time, without judging a second time)."""

    __slots__ = ("lu", "pivots")

    def __init__(self) -> None:
        self.lu: Tensor | None = None
        self.pivots: Tensor | None = None


class _CircularConv(Invertible):
    """Shared implementation of :class:`CircularConv1d` and :class:`CircularConv2d`."""

    spatial_dims: int
    draws_random = False

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

    def _response_rows(self, size: tuple[int, ...], weight: Tensor, start: int, stop: int,
                       tables: list[Tensor] | None = None) -> Tensor:
        """``H[f]`` for the frequencies ``start <= f < stop`` in row-major order over ``nfreq``:
        ``(stop - start, C, C)``, so that an inverse can work through the spectrum in chunks.
        ``weight`` may be the kernel already in the complex layout of :meth:`_kernel`, and
        ``tables`` the phases of :meth:`_tables` (a chunked caller makes both once per layer).

        ``H[f] = sum_j phase[f, j] K_j`` is one matrix product, ``(rows, taps) @ (taps, C C)``; in
        2-D the phase of tap ``(i, j)`` at frequency ``(f, g)`` is the product of the two axes'."""
        kernel = weight if weight.is_complex() else self._kernel(weight)
        tables = self._tables(size, kernel) if tables is None else tables
        c = self.channels
        if len(size) == 1:
            return torch.bmm(tables[0][None, start:stop], kernel[None]).view(stop - start, c, c)
        columns = size[-1] // 2 + 1
        rows = torch.arange(start, stop, device=kernel.device)
        phases = tables[0].index_select(0, rows // columns)[:, :, None] * tables[1].index_select(0, rows % columns)[:, None, :]
        return torch.bmm(phases.view(1, stop - start, -1), kernel[None]).view(stop - start, c, c)

    def _tables(self, size: tuple[int, ...], kernel: Tensor) -> list[Tensor]:
        """The phases ``exp(+2 pi i f (j - p) / n)`` of every axis, ``(nfreq_axis, k)`` each."""
        nfreq = (*size[:-1], size[-1] // 2 + 1)
        return [_phases(n, f, self.kernel_size, self.pad[0], kernel.dtype, kernel.device)
                for n, f in zip(size, nfreq)]

    def _kernel(self, weight: Tensor) -> Tensor:
        """The taps as one complex ``(taps, C C)`` matrix (``taps = k`` or ``k^2``, row-major over
        the tap offsets), ready for :meth:`_response_rows`."""
        complex_dtype = torch.complex128 if work_dtype(weight) == torch.float64 else torch.complex64
        taps = self.kernel_size ** self.spatial_dims
        return weight.movedim((0, 1), (-2, -1)).reshape(taps, self.channels ** 2).to(complex_dtype)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        weight = as_applied(self.weight)  # under autocast, the rounded kernel the forward applied
        with full_precision(y):
            return self._invert(y, weight, self.bias, None).to(y.dtype)

    def _budget(self, y_bytes: int) -> int:
        return self.scratch_bytes or max(y_bytes, 1)

    def _per_frequency(self, batch: int, element: int) -> int:
        """Working bytes per frequency of the chunked inverse: a response and its LU (complex),
        the spectrum's solve, and a real magnitude temporary."""
        c = self.channels
        blocks = 3 if c <= EXACT_BLOCK else 2  # small blocks are judged from their inverses too
        return 2 * element * (blocks * c * c + 2 * c * batch) + element * c * c

    def _factorise(self, size: tuple[int, ...], weight: Tensor, start: int, stop: int,
                   tally: LUTally | None, tables: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """LU factors of ``H[f]`` for frequencies ``start <= f < stop``, judged into ``tally``."""
        response = self._response_rows(size, weight, start, stop, tables)  # (k, C, C)
        lu, pivots = lu_factor(response)
        if tally is not None:
            tally.add(lu, pivots, response)
        return lu, pivots

    def _invert(self, y: Tensor, weight: Tensor, bias: Tensor | None, prepared: Spectrum | None) -> Tensor:
        """``x`` from ``y`` in :func:`invlib.base.work_dtype` (float32 for half precision).

        The spectrum of ``y - b`` is solved in place, a chunk of frequencies at a time: each
        chunk's responses ``H[f]`` are formed, factorised, checked and solved against, then
        freed, so the working memory beyond the spectra stays within ``scratch_bytes``.
        ``prepared`` (inside :class:`InvertibleSequential`): the check before the sweep judged the
        kernel already and may have left the factors of every frequency; ``None``: judge here.
        """
        dtype = work_dtype(y, weight)
        y, weight = y.to(dtype), weight.to(dtype)
        batch, channels, size = y.shape[0], self.channels, tuple(y.shape[2:])
        dims = tuple(range(2, y.ndim))
        nfreq = (*size[:-1], size[-1] // 2 + 1)
        total = math.prod(nfreq)
        bias = bias.to(dtype).view(channels, *(1,) * len(size)) if bias is not None else 0.0
        # MKL's FFT refuses an empty batch; the weight is still checked.
        spectrum = torch.fft.rfftn(y - bias, dim=dims) if batch else None
        flat = None if spectrum is None else spectrum.view(batch, channels, total)
        kernel = self._kernel(weight)
        if prepared is not None and prepared.lu is not None:
            if flat is not None:
                flat.copy_(torch.linalg.lu_solve(prepared.lu, prepared.pivots, flat.permute(2, 1, 0)).permute(2, 1, 0))
        else:
            tally = None if prepared is not None else LUTally(owner=type(self).__name__, weight=weight,
                                                               where=_frequency_namer(nfreq, size))
            chunk = max(1, self._budget(y.numel() * y.element_size()) // self._per_frequency(batch, y.element_size()))
            tables = self._tables(size, kernel)
            for start in range(0, total, chunk):
                stop = min(start + chunk, total)
                lu, pivots = self._factorise(size, kernel, start, stop, tally, tables)
                if flat is not None:
                    part = flat[:, :, start:stop]
                    part.copy_(torch.linalg.lu_solve(lu, pivots, part.permute(2, 1, 0)).permute(2, 1, 0))
                del lu, pivots
            del tables
            if tally is not None:
                tally.finish()
        if spectrum is None:
            return y - bias
        return torch.fft.irfftn(spectrum, s=size, dim=dims)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                prepared: Spectrum | None = None) -> tuple[Tensor, Tensor]:
        y = self._check(y, "y")  # before autocast is switched off: it may hand over half precision
        with torch.enable_grad():  # a parametrised weight is computed once, with its graph
            weight, bias = self.weight, self.bias
        applied = as_applied(weight.detach())  # under autocast: invert and differentiate round(W)
        with torch.no_grad(), full_precision(y):
            x = self._invert(y, applied, None if bias is None else bias.detach(), prepared)
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

    @classmethod
    def judge(cls, states: list[State], budget: Budget, verdicts: Verdicts) -> None:
        """Judge each convolution's kernel at the spatial size its forward saw: every frequency's
        response factorised, a chunk at a time within ``budget``, and judged as one block-diagonal
        operator (``LUTally``); the factors of all frequencies stay for the reverse step when
        they fit in what is left of ``budget``."""
        for state in states:
            layer: _CircularConv = state.layer
            weight, size = _applied_kernel(state), tuple(state.shape[2:])
            nfreq = (*size[:-1], size[-1] // 2 + 1)
            total, element = math.prod(nfreq), weight.element_size()
            tally = LUTally(owner=cls.__name__, detail=False)
            weight = layer._kernel(weight)
            held = total * (2 * element * layer.channels**2 + 8 * layer.channels)
            spectrum = Spectrum()
            if budget.take(held):  # all at once, and kept
                spectrum.lu, spectrum.pivots = layer._factorise(size, weight, 0, total, tally)
            else:  # the layer's own chunking (its scratch_bytes, default one layer output)
                output = math.prod(state.shape) * element
                chunk = max(1, layer._budget(output) // layer._per_frequency(0, element))
                tables = layer._tables(size, weight)
                for start in range(0, total, chunk):
                    layer._factorise(size, weight, start, min(start + chunk, total), tally, tables)
                del tables
            state.prepared = spectrum
            verdicts.put(state.index, tally.code(), partial(_explain, state))

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
    factors of every ``H[f]`` (Hager-Higham, a few O(C^2) solves per frequency, see ``invlib._verdict``).
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


def _applied_kernel(state: State) -> Tensor:
    weight = applied(state, read(state, "weight"))
    return weight.to(work_dtype(weight))


def _explain(state: State) -> float:
    """The host side of a convolution's verdict: the same factorisation and estimates, judged."""
    layer: _CircularConv = state.layer
    weight, size = _applied_kernel(state), tuple(state.shape[2:])
    nfreq = (*size[:-1], size[-1] // 2 + 1)
    total = math.prod(nfreq)
    tally = LUTally(owner=type(layer).__name__, weight=weight, where=_frequency_namer(nfreq, size))
    chunk = max(1, layer._budget(0) // layer._per_frequency(0, weight.element_size()))
    kernel = layer._kernel(weight)
    tables = layer._tables(size, kernel)
    for start in range(0, total, chunk):
        layer._factorise(size, kernel, start, min(start + chunk, total), tally, tables)
    return tally.finish()
