"""invlib.diagnose: condition estimates against exact condition numbers, round-trip and rebuilt
errors against a direct computation, anchors honoured, readable table, clear errors."""

import math
import warnings

import pytest
import torch
from torch import nn

import invlib
from conftest import perturbed

pytestmark = pytest.mark.usefixtures("float64")


def _dense_stack(depth, slope, width=6):
    return [m for _ in range(depth) for m in (perturbed(invlib.InvertibleLinear(width)), invlib.LeakyReLU(slope))]


def test_conditions_against_exact_values():
    torch.manual_seed(0)
    dense, lu, leaky = perturbed(invlib.InvertibleLinear(7), 0.5), perturbed(invlib.LULinear(7), 0.5), invlib.LeakyReLU(0.2)
    coupling = invlib.AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2))
    conv = perturbed(invlib.CircularConv1d(3, 3), 0.5)
    for layer in (dense, lu):
        exact = torch.linalg.cond(layer.weight.detach(), 1).item()
        estimate = invlib._diagnose.condition_estimate(layer)
        assert exact / 9 <= estimate <= exact * (1 + 1e-12)  # a lower bound, within the documented factor
    assert invlib._diagnose.condition_estimate(leaky) == pytest.approx(5.0)
    assert invlib._diagnose.condition_estimate(coupling) is None
    x = torch.randn(2, 3, 8)
    response = conv.frequency_response((8,)).detach()
    exact = (response.abs().sum(-2).amax() * torch.linalg.inv(response).abs().sum(-2).amax()).item()
    estimate = invlib._diagnose.condition_estimate(conv, x)
    assert exact / 3 <= estimate <= exact * (1 + 1e-12)


def test_errors_equal_a_direct_computation():
    torch.manual_seed(1)
    layers = _dense_stack(4, 0.3) + [invlib.AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3))]
    x = torch.randn(10, 6)
    report = invlib.diagnose(invlib.InvertibleSequential(*layers), x)
    assert [r.index for r in report.rows] == list(range(len(layers)))
    activations = [x]
    with torch.no_grad():
        for layer in layers:
            activations.append(layer(activations[-1]))
        for i, layer in enumerate(layers):
            x_i = activations[i]
            assert report.round_trip[i] == ((layer.inverse(activations[i + 1]) - x_i).norm() / x_i.norm()).item()
            rebuilt = activations[-1]
            for above in reversed(layers[i:]):
                rebuilt = above.inverse(rebuilt)
            assert report.rebuilt[i] == ((rebuilt - x_i).norm() / x_i.norm()).item()
    assert report.rebuilt[-1] == report.round_trip[-1]


def test_rebuilt_error_grows_with_depth_and_anchors_restart_it():
    torch.manual_seed(2)
    layers = _dense_stack(12, 0.05)  # about 1.3 digits lost per LeakyReLU
    x = torch.randn(32, 6)
    plain = invlib.diagnose(invlib.InvertibleSequential(*layers), x)
    anchored = invlib.diagnose(invlib.InvertibleSequential(*layers, anchor_every=4), x)
    assert max(plain.round_trip) < 1e-14
    assert plain.rebuilt[0] > 1e4 * max(plain.round_trip)
    assert anchored.rebuilt[0] < 1e-3 * plain.rebuilt[0]
    for i in range(3, len(layers) - 1, 4):  # the layer below an anchor inverts from the stored activation
        assert anchored.rebuilt[i] == anchored.round_trip[i]
    assert anchored.anchor_every == 4 and plain.anchor_every is None


def test_table_is_readable():
    torch.manual_seed(3)
    layers = _dense_stack(1, 0.5) + [invlib.Asinh()]
    text = str(invlib.diagnose(layers, torch.randn(4, 6)))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "kind", "condition", "round", "trip", "rebuilt"]
    assert len(lines) == 1 + len(layers) + 1
    assert lines[1].split()[:2] == ["0", "InvertibleLinear"]
    assert lines[2].split()[:3] == ["1", "LeakyReLU", "2.0e+00"]
    assert lines[3].split()[:3] == ["2", "Asinh", "-"]
    assert "anchors: none" in lines[-1]


def test_singular_weight_reports_inf_without_warning():
    layer = invlib.InvertibleLinear(4)
    with torch.no_grad():
        layer.weight[1] = layer.weight[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert invlib._diagnose.condition_estimate(layer) == math.inf


def test_context_reaches_conditional_layers():
    class Sub(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, t, c):
            return torch.tanh(self.linear(t) + c)

    torch.manual_seed(4)
    net = invlib.InvertibleSequential(invlib.AdditiveCoupling(Sub(), Sub()), invlib.LeakyReLU(0.5))
    report = invlib.diagnose(net, torch.randn(5, 4), context=torch.randn(5, 2))
    assert max(report.rebuilt) < 1e-14


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        invlib.diagnose([invlib.LeakyReLU(0.5)], [1.0])
    with pytest.raises(TypeError, match="layer 1 must be an invlib.Invertible, got Linear"):
        invlib.diagnose([invlib.LeakyReLU(0.5), nn.Linear(2, 2)], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no layers"):
        invlib.diagnose([], torch.zeros(1, 2))
