"""Circular convolutions against torch.nn.ConvNd, the brute-force definition, and torch.fft."""

import itertools

import pytest
import torch
from torch import nn

import invlib

pytestmark = pytest.mark.usefixtures("float64")


def _random_conv(cls, channels: int, k: int):
    layer = cls(channels, k)
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))
        layer.bias.normal_()
    return layer


def _brute_force_1d(w, b, x):
    """y[c, n] = b[c] + sum_{d,j} W[c,d,j] x[d, (n + j - p) mod L], loops over n and j."""
    k, length, p = w.shape[-1], x.shape[-1], w.shape[-1] // 2
    y = b.view(1, -1, 1).repeat(x.shape[0], 1, length)
    for n, j in itertools.product(range(length), range(k)):
        y[:, :, n] += x[:, :, (n + j - p) % length] @ w[:, :, j].T
    return y


def _brute_force_2d(w, b, x):
    k, (rows, cols), p = w.shape[-1], x.shape[-2:], w.shape[-1] // 2
    y = b.view(1, -1, 1, 1).repeat(x.shape[0], 1, rows, cols)
    for m, n, i, j in itertools.product(range(rows), range(cols), range(k), range(k)):
        y[:, :, m, n] += x[:, :, (m + i - p) % rows, (n + j - p) % cols] @ w[:, :, i, j].T
    return y


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv1d_matches_torch_circular_conv(k):
    layer = _random_conv(invlib.CircularConv1d, 3, k)
    ref = nn.Conv1d(3, 3, k, padding=k // 2, padding_mode="circular")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 9)
    torch.testing.assert_close(layer(x), ref(x))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv2d_matches_torch_circular_conv(k):
    layer = _random_conv(invlib.CircularConv2d, 2, k)
    ref = nn.Conv2d(2, 2, k, padding=k // 2, padding_mode="circular")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 2, 6, 7)
    torch.testing.assert_close(layer(x), ref(x))


@pytest.mark.parametrize("k, length", [(1, 4), (2, 5), (3, 4), (4, 6), (4, 2), (5, 2)])
def test_conv1d_matches_definition(k, length):
    layer = _random_conv(invlib.CircularConv1d, 2, k)
    x = torch.randn(3, 2, length)
    torch.testing.assert_close(layer(x), _brute_force_1d(layer.weight.detach(), layer.bias.detach(), x))


@pytest.mark.parametrize("k, size", [(2, (3, 4)), (3, (4, 3)), (4, (5, 4))])
def test_conv2d_matches_definition(k, size):
    layer = _random_conv(invlib.CircularConv2d, 2, k)
    x = torch.randn(2, 2, *size)
    torch.testing.assert_close(layer(x), _brute_force_2d(layer.weight.detach(), layer.bias.detach(), x))


@pytest.mark.parametrize("k, length", [(1, 5), (2, 6), (3, 7), (4, 8), (5, 3)])
def test_conv1d_frequency_response_is_fft_of_kernel(k, length):
    """H[f] equals the DFT of the kernel laid on the grid at offsets -(j - p), i.e. h[(p - j) mod L] = W_j."""
    layer = _random_conv(invlib.CircularConv1d, 3, k)
    w, p = layer.weight.detach(), k // 2
    grid = torch.zeros(3, 3, length)
    for j in range(k):
        grid[:, :, (p - j) % length] += w[:, :, j]
    expected = torch.fft.fft(grid, dim=-1)[..., : length // 2 + 1].permute(2, 0, 1)
    torch.testing.assert_close(layer.frequency_response((length,)).detach(), expected)


@pytest.mark.parametrize("k, size", [(2, (4, 5)), (3, (5, 6)), (4, (3, 4))])
def test_conv2d_frequency_response_is_fft_of_kernel(k, size):
    layer = _random_conv(invlib.CircularConv2d, 2, k)
    w, p = layer.weight.detach(), k // 2
    grid = torch.zeros(2, 2, *size)
    for i, j in itertools.product(range(k), range(k)):
        grid[:, :, (p - i) % size[0], (p - j) % size[1]] += w[:, :, i, j]
    expected = torch.fft.fft2(grid)[..., : size[1] // 2 + 1].permute(2, 3, 0, 1)
    torch.testing.assert_close(layer.frequency_response(size).detach(), expected)


def test_frequency_response_diagonalises_the_forward():
    """Convolving a single complex exponential e^{2 pi i f n / L} multiplies it by H[f] (bias 0)."""
    layer = _random_conv(invlib.CircularConv1d, 2, 3)
    length, f = 8, 3
    wave = torch.exp(2j * torch.pi * f * torch.arange(length) / length)
    coeffs = torch.randn(2, dtype=torch.complex128)
    x = coeffs[:, None] * wave  # channel d carries coeffs[d] * wave
    conv = lambda t: layer(t) - layer.bias.view(1, -1, 1)  # noqa: E731 - linear part, real and imaginary separately
    y = torch.complex(conv(x.real[None]), conv(x.imag[None]))[0]
    h = layer.frequency_response((length,))[f].detach()
    torch.testing.assert_close(y, (h @ coeffs)[:, None] * wave)


@pytest.mark.parametrize(
    "cls, k, shape",
    [
        (invlib.CircularConv1d, 3, (2, 3, 1)),
        (invlib.CircularConv1d, 5, (2, 3, 2)),
        (invlib.CircularConv1d, 4, (2, 3, 9)),
        (invlib.CircularConv2d, 3, (2, 2, 1, 5)),
        (invlib.CircularConv2d, 4, (1, 2, 4, 7)),
    ],
)
def test_conv_inverse_round_trip(cls, k, shape):
    layer = _random_conv(cls, shape[1], k)
    x = torch.randn(shape)
    torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=1e-12, atol=1e-12)
    y = torch.randn(shape)
    torch.testing.assert_close(layer(layer.inverse(y)), y, rtol=1e-12, atol=1e-12)


def test_conv_init_is_well_conditioned():
    layer = invlib.CircularConv2d(8, 3)
    s = torch.linalg.svdvals(layer.frequency_response((16, 16)).detach())
    assert s.max() / s.min() < 2.0
