"""invlib.costs' step FLOP model against hand arithmetic, the post's envelope formula and
FlopCounterMode run on real training steps of invlib's layers (plain loop and InvertibleSequential)."""

from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import invlib.costs as costs
from invlib._bench.nets import build
from invlib.compare import chain
from invlib.linear import prefer_inverse


def counted(net, width, depth, batch, method, channels=None):
    """FLOPs FlopCounterMode sees in one step, by aten op name."""
    torch.manual_seed(0)
    layers, x = build(net, depth, width, batch, channels, dtype=torch.float64)
    forward = chain(layers, method)
    with FlopCounterMode(display=False) as counter:
        forward(x).square().mean().backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("method", costs.STEP_METHODS)
@pytest.mark.parametrize("width,depth,batch", [(16, 3, 5), (32, 2, 64)])
def test_matmul_flops_equal_the_counter_for_dense_and_coupling(method, width, depth, batch):
    ops = counted("dense", width, depth, batch, method)
    inverse = prefer_inverse(batch, width)  # invlib multiplies by W^{-1}: one more product per layer
    assert sum(ops.values()) == costs.dense_step(width, depth, batch, method, inverse=inverse).matmul
    ops = counted("coupling", width, depth, batch, method)
    assert sum(ops.values()) == costs.coupling_step(width, depth, batch, method).matmul


@pytest.mark.parametrize("method", costs.STEP_METHODS)
def test_lu_linear_products_equal_the_counter_besides_the_condition_estimate(method):
    w, d, b = 16, 2, 7
    ops = counted("lu", w, d, b, method)
    model = costs.dense_step(w, d, b, method, weight="lu").matmul
    assert ops["aten.mm"] + ops["aten.addmm"] == model
    # the rest is the condition estimate's few products with W per layer: O(w^2), not O(w^3)
    assert ops.get("aten.bmm", 0) <= 64 * w * w * d


@pytest.mark.parametrize("net,channels,spatial", [("conv1d", 4, (8,)), ("conv2d", 4, (4, 4))])
@pytest.mark.parametrize("batch", [1, 6])
def test_conv_flops_against_the_counter(net, channels, spatial, batch):
    width, d = channels * spatial[0] * (spatial[1] if len(spatial) == 2 else 1), 2
    plain = counted(net, width, d, batch, "plain", channels)
    inv = counted(net, width, d, batch, "invertible", channels)
    model_plain = costs.conv_step(channels, spatial, 3, d, batch, "plain")
    # the check before the sweep keeps no factors by default: every layer's are formed again
    model_inv = costs.conv_step(channels, spatial, 3, d, batch, "invertible", refactorised=d)
    assert sum(plain.values()) == model_plain.matmul == model_inv.matmul
    assert inv["aten.convolution"] + inv["aten.convolution_backward"] == model_inv.matmul
    # the frequency responses: complex products the counter counts as real ones, a quarter of the model
    assert 4 * inv["aten.bmm"] == model_inv.response


def test_dense_ratio_is_the_envelope_formula():
    for w, b in [(64, 1), (256, 1), (256, 256), (256, 4096), (48, 6)]:
        ratio = Fraction(costs.dense_step(w, 3, b, "invertible").total) / costs.dense_step(w, 3, b, "plain").total
        assert abs(ratio - (Fraction(4, 3) + Fraction(w, 9 * b))) < Fraction(1, 10**9)
    assert round(costs.step_ratio(costs.dense_step(64, 1, 1, "invertible"), costs.dense_step(64)), 1) == 8.4
    assert round(costs.step_ratio(costs.dense_step(256, 1, 1, "invertible"), costs.dense_step(256)), 1) == 29.8


def test_coupling_ratio_is_four_thirds_and_lu_at_most_that():
    for b in (1, 7, 32, 33, 4096):
        inv, plain = costs.coupling_step(32, 2, b, "invertible"), costs.coupling_step(32, 2, b)
        assert inv.total * 3 == plain.total * 4
        inv, plain = costs.dense_step(32, 2, b, "invertible", weight="lu"), costs.dense_step(32, 2, b, weight="lu")
        assert (inv.total * 3 == plain.total * 4) if b >= 32 else (inv.total * 3 < plain.total * 4)


def test_conv_inverse_by_hand():
    f = costs.conv_step(4, (8,), 3, depth=2, batch=3, method="invertible")
    freqs = 5  # rfft of 8 points
    assert f.factor == pytest.approx(8 * freqs * 4**3 * 2 / 3)
    assert f.solve == 8 * freqs * 3 * 16 * 2
    assert f.response == 8 * freqs * 3 * 16 * 2
    assert f.fft == pytest.approx(2 * 3 * 4 * 2.5 * 8 * 3 * 2)  # log2(8) = 3


@pytest.mark.parametrize("call,match", [
    (lambda: costs.dense_step(8, method="adjoint"), "method must be one of"),
    (lambda: costs.dense_step(8, weight="qr"), "weight must be 'dense'"),
    (lambda: costs.dense_step(0), "width"),
    (lambda: costs.coupling_step(7), "even"),
    (lambda: costs.conv_step(4, (8, 8, 8), 3), "1 or 2 sizes"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
