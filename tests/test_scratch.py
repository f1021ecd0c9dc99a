"""The circular convolutions' inverse works through the spectrum a chunk of frequencies at a time,
so its working memory stays near one layer output instead of one frequency response per frequency."""

import pytest
import torch

import invlib
from invlib.memory import track_memory


def _peak_outputs(layer, y):
    with torch.no_grad(), track_memory(y.device) as tracker:
        x = layer.inverse(y)
    return tracker.peak_bytes / (y.numel() * y.element_size()), x


def test_conv2d_inverse_at_c64_on_128x128_needs_at_most_three_layer_outputs():
    torch.manual_seed(0)
    layer = invlib.CircularConv2d(64, 8)  # the post's Conv2d: 64 channels, 8x8 kernels
    y = torch.randn(1, 64, 128, 128)
    peak, x = _peak_outputs(layer, y)
    # The rebuilt input and the spectra included; all frequencies at once would take ~165.
    assert peak <= 3.0, peak
    layer.scratch_bytes = 1 << 40  # one chunk: the unbounded inverse, for comparison
    unbounded_peak, x_all = _peak_outputs(layer, y)
    assert unbounded_peak > 100
    assert torch.equal(x, x_all)  # chunks change the order of nothing


@pytest.mark.parametrize("cls, shape", [(invlib.CircularConv1d, (3, 4, 12)), (invlib.CircularConv2d, (2, 4, 6, 5))])
def test_any_scratch_bound_gives_the_same_inverse(cls, shape):
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(1)
        layer = cls(4, 3)
        y = torch.randn(shape)
        reference = layer.inverse(y)
        for scratch in (1, 1000, 10**9):  # one frequency per chunk, a few, all
            layer.scratch_bytes = scratch
            torch.testing.assert_close(layer.inverse(y), reference, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(layer(reference), y, rtol=1e-10, atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_singular_frequency_is_found_and_named_across_chunks():
    layer = invlib.CircularConv2d(1, 2, bias=False, scratch_bytes=1)  # one frequency per chunk
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))  # H = 0 at f = (., 2)
    with pytest.raises(ValueError, match=r"singular .* at frequency \(\d, 2\)"):
        layer.inverse(torch.randn(1, 1, 3, 4))


def test_scratch_bytes_must_be_positive():
    with pytest.raises(ValueError, match="scratch_bytes must be a positive int"):
        invlib.CircularConv1d(2, 3, scratch_bytes=0)
