"""Mixed precision: every layer runs under torch.autocast (CPU bfloat16 and float16) in the plain
loop and in InvertibleSequential, and with half-precision parameters; inversion adds at most as
much error as the precision itself (invlib's gradient error at most 2x the plain loop's, against
float32, at a training batch of 1024 samples: see invlib.precision for why the batch matters)."""

import functools
import math

import pytest
import torch

import invlib
from invlib.compare import mixed_net
from invlib.precision import AUTOCAST_KINDS, autocast_stack, autocast_survey

HALF = [torch.bfloat16, torch.float16]


def _plain(net, x):
    return functools.reduce(lambda t, layer: layer(t), list(net), x)


def _grads(net, run, x, target):
    for p in net.parameters():
        p.grad = None
    (run(net, x).float() - target).square().mean().backward()
    return torch.cat([p.grad.float().flatten() for p in net.parameters()])


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", [*AUTOCAST_KINDS])
def test_autocast_error_at_most_twice_the_plain_loops(kind, dtype):
    [row] = autocast_survey([kind], [dtype], batch=1024, seeds=range(3))
    # autocast really ran in half precision, and the plain loop's result is still a gradient. On CPUs
    # without native bfloat16 (AVX2 only) oneDNN's bfloat16 convolutions lose far more: the plain
    # loop's error reaches 0.25-0.34 there (about 4e-3 on AVX-512 machines), hence the loose bound.
    assert all(0 < e < 0.5 for e in row["plain"]), row
    assert row["ratio_max"] <= 2.0, row


@pytest.mark.parametrize("make, shape", [(lambda: invlib.InvertibleLinear(16), (32, 16)),
                                         (lambda: invlib.CircularConv1d(4, 3), (8, 4, 16)),
                                         (lambda: invlib.CircularConv2d(4, 3), (4, 4, 8, 8))],
                         ids=["InvertibleLinear", "CircularConv1d", "CircularConv2d"])
def test_under_autocast_the_inverse_is_that_of_the_rounded_weight_the_forward_applied(make, shape):
    # Autocast's matmul/convolution applies round(W); inverting W instead would add a rounding of
    # W to every rebuilt input. Reference: the same layer with W := round(W), without autocast.
    torch.manual_seed(0)
    layer, rounded = make(), make()
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        rounded.load_state_dict(layer.state_dict())
        rounded.weight.copy_(layer.weight.to(torch.bfloat16).float())
    y, y_bar = torch.randn(shape), torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_inverse = layer.inverse(y)
        got_x, got_x_bar = layer.reverse(y, y_bar)
    want_x, want_x_bar = rounded.reverse(y, y_bar)
    torch.testing.assert_close(got_inverse, rounded.inverse(y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_x_bar, want_x_bar, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, rounded.weight.grad, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(layer.weight, rounded.weight, rtol=0, atol=1e-6)  # the rounding is visible


@pytest.mark.parametrize("seed", [3, 5])
def test_autocast_elu_runs_where_the_plain_loop_runs(seed):
    # At these seeds a bfloat16-rebuilt ELU output landed below -alpha, and backward raised.
    [row] = autocast_survey(["InvertibleLinear + ELU"], [torch.bfloat16], batch=1024, seeds=[seed])
    assert row["ratio_max"] <= 2.0, row


def test_inversion_error_averages_out_over_the_batch():
    # The plain loop's error is mostly the weights' rounding (the same for every sample); the error
    # inversion adds is per sample, so its share of the gradient shrinks as the batch grows.
    ratio = {b: autocast_survey(["InvertibleLinear + ELU"], [torch.bfloat16], batch=b,
                                seeds=range(3))[0]["ratio_median"] for b in (64, 4096)}
    assert ratio[4096] < 1.25 < 1.5 < ratio[64], ratio


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_elu_reverse_accepts_a_half_precision_output_on_its_asymptote(dtype):
    # bfloat16 rounds ELU(x) to exactly -1 below x = -6.2 (float16 below -8.3): the forward's own
    # output, so the reverse step must take it; it rebuilds the most negative x the dtype resolves.
    elu, eps = invlib.ELU(), torch.finfo(dtype).eps
    y = torch.tensor([[-1.0, -0.5, 2.0]])
    with torch.autocast("cpu", dtype=dtype):
        assert float(elu(torch.tensor(-9.0).to(dtype))) == -1.0
        x, x_bar = elu.reverse(y, torch.ones_like(y))
    assert torch.allclose(x, torch.tensor([[math.log(eps / 2), math.log(0.5), 2.0]]))
    assert torch.allclose(x_bar, torch.tensor([[eps / 2, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="> -alpha"):  # in float32 the asymptote is still refused
        elu.reverse(y, torch.ones_like(y))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters(dtype):
    net, reference = mixed_net(16, dtype=dtype), mixed_net(16, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    want = _grads(reference, _plain, x, target)
    error = {name: float((_grads(net, run, x.to(dtype), target) - want).norm() / want.norm())
             for name, run in (("plain", _plain), ("invlib", lambda m, t: m(t)))}
    assert error["invlib"] <= 2 * error["plain"], error
    assert all(p.grad.dtype == dtype for p in net.parameters())


@pytest.mark.parametrize("kind", ["InvertibleLinear + LeakyReLU", "LULinear + LeakyReLU",
                                  "AdditiveCoupling + LeakyReLU", "CircularConv1d + Asinh", "CircularConv2d + Asinh"])
def test_inverse_of_an_autocast_output_keeps_its_dtype(kind):
    net, shape = autocast_stack(kind, 64)
    layer = net[0]
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y = layer(x)
        rebuilt = layer.inverse(y)
    assert rebuilt.dtype == y.dtype
    assert float((rebuilt.float() - x).abs().max() / x.abs().max()) < 0.1
