"""Dropout, batch norm and spectral norm inside coupling blocks: the reverse step replays the
forward's random masks and batch statistics, so gradients and buffers equal the plain loop's."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations

import invlib

pytestmark = pytest.mark.usefixtures("float64")


class FunctionalDropout(nn.Module):
    """Dropout through torch.nn.functional, invisible to any module-type check."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, t):
        return F.dropout(t, self.p, training=self.training)


def _sub(kind, half=4):
    extra = {"dropout": lambda: nn.Dropout(0.3), "functional dropout": lambda: FunctionalDropout(0.3),
             "batch norm": lambda: nn.BatchNorm1d(half),
             "dropout + batch norm": lambda: nn.Sequential(nn.BatchNorm1d(half), nn.Dropout(0.2))}[kind]
    return nn.Sequential(nn.Linear(half, half), extra(), nn.Tanh(), nn.Linear(half, half))


def _stack(kind, depth=4):
    torch.manual_seed(11)
    layers = []
    for _ in range(depth):
        layers += [invlib.AdditiveCoupling(_sub(kind), _sub(kind)), invlib.LeakyReLU(0.5)]
    return layers


def _run(layers, invertible, x, seed):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    if invertible:
        y = invlib.InvertibleSequential(*layers)(x)
    else:
        y = x
        for layer in layers:
            y = layer(y)
    y.square().sum().backward()
    after = torch.rand(3)  # the caller's random stream after the step
    grads = [x.grad] + [p.grad for layer in layers for p in layer.parameters()]
    buffers = [b.clone() for layer in layers for b in layer.buffers()]
    return y.detach(), grads, buffers, after


@pytest.mark.parametrize("kind", ["dropout", "functional dropout", "batch norm", "dropout + batch norm"])
def test_training_mode_subnetworks_match_the_plain_loop(kind):
    layers = _stack(kind)
    twin = copy.deepcopy(layers)
    x = torch.randn(16, 8)
    y, grads, buffers, after = _run(layers, True, x, seed=5)
    y_ref, grads_ref, buffers_ref, after_ref = _run(twin, False, x, seed=5)
    assert torch.equal(y, y_ref)
    for i, (a, b) in enumerate(zip(grads, grads_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{kind}: gradient {i}")
    for a, b in zip(buffers, buffers_ref):  # running statistics updated once, as by the plain loop
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.equal(after, after_ref), "the reverse step consumed the caller's random numbers"


def test_dropout_masks_differ_between_steps_but_gradients_still_match():
    layers = _stack("dropout")
    twin = copy.deepcopy(layers)
    x = torch.randn(16, 8)
    for seed in (1, 2):
        for layer in layers + twin:
            layer.zero_grad(set_to_none=True)
        _, grads, _, _ = _run(layers, True, x, seed)
        _, grads_ref, _, _ = _run(twin, False, x, seed)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_spectral_norm_in_training_mode_matches_the_plain_loop():
    torch.manual_seed(2)

    def sub():
        return nn.Sequential(parametrizations.spectral_norm(nn.Linear(4, 4)), nn.Tanh())

    layers = [invlib.AdditiveCoupling(sub(), sub()) for _ in range(3)]
    twin = copy.deepcopy(layers)
    x = torch.randn(8, 8)
    _, grads, buffers, _ = _run(layers, True, x, seed=0)
    _, grads_ref, buffers_ref, _ = _run(twin, False, x, seed=0)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(buffers, buffers_ref):  # the power-iteration vectors advanced once
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_failing_reverse_step_says_gradients_were_partly_accumulated():
    class Fails(invlib.Invertible):
        def forward(self, x):
            return x * 2.0

        def inverse(self, y):
            raise ValueError("cannot invert")

    net = invlib.InvertibleSequential(Fails(), invlib.InvertibleLinear(3))
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="layers 1 to 1 had already handed their parameter gradients"):
        net(x).sum().backward()
    assert net[1].weight.grad is not None  # which is why the message says so
