"""Anchoring (``InvertibleSequential(..., anchor_every=k)``): the plain loop's gradients, error
restarted at every anchor, and peak memory that grows by exactly one activation per anchor."""

import math

import pytest
import torch
from torch import nn

import invlib
from conftest import perturbed
from invlib.compare import step_memory

pytestmark = pytest.mark.usefixtures("float64")


def _mlp(n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n, n), nn.Tanh(), nn.Linear(n, n))


def _layers(kind: str, depth: int) -> list[invlib.Invertible]:
    torch.manual_seed(3)
    if kind == "dense":
        return [m for _ in range(depth) for m in (perturbed(invlib.InvertibleLinear(6)), invlib.LeakyReLU(0.5))]
    if kind == "lu":
        return [m for _ in range(depth) for m in (perturbed(invlib.LULinear(6)), invlib.Asinh())]
    if kind == "coupling":
        return [invlib.AdditiveCoupling(_mlp(3), _mlp(3)) for _ in range(depth)]
    if kind == "mixed":
        return list(invlib.compare.mixed_net(6)) + list(invlib.compare.mixed_net(6, seed=1))
    raise AssertionError(kind)


def _grads(layers, x, y_bar, anchor_every="plain"):
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    if anchor_every == "plain":
        y = x
        for layer in layers:
            y = layer(y)
    else:
        y = invlib.InvertibleSequential(*layers, anchor_every=anchor_every)(x)
    y.backward(y_bar)
    return [x.grad] + [p.grad.clone() for layer in layers for p in layer.parameters()]


def _worst(actual, expected):
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(actual, expected))


@pytest.mark.parametrize("kind", ["dense", "lu", "coupling", "mixed"])
@pytest.mark.parametrize("anchor_every", [1, 2, 3, 5, 100])
def test_gradients_equal_plain_within_the_unanchored_tolerance(kind, anchor_every):
    layers = _layers(kind, 9)
    x = torch.randn(5, 6)
    y_bar = torch.randn_like(x)
    reference = _grads(layers, x, y_bar)
    unanchored = _worst(_grads(layers, x, y_bar, None), reference)
    anchored = _worst(_grads(layers, x, y_bar, anchor_every), reference)
    assert unanchored <= 1e-9  # the tolerance of tests/test_sequential.py
    assert anchored <= 1e-9


def test_anchors_restart_the_error_of_an_ill_conditioned_stack():
    # Slope 0.05 loses about 1.3 digits per LeakyReLU: 24 of them lose more than float64 has.
    torch.manual_seed(0)
    layers = [m for _ in range(24) for m in (invlib.InvertibleLinear(8), invlib.LeakyReLU(0.05))]
    x = torch.randn(32, 8)
    y_bar = torch.randn_like(x)
    reference = _grads(layers, x, y_bar)
    with pytest.warns(invlib.ReconstructionWarning, match="differs from the input"):  # and it says so
        unanchored = _worst(_grads(layers, x, y_bar, None), reference)
    errors = {k: _worst(_grads(layers, x, y_bar, k), reference) for k in (16, 4, 1)}
    assert unanchored > 1e-3          # rebuilding through 48 layers: digits gone
    assert errors[16] < 1e-3 * unanchored
    assert errors[4] < 1e-3 * errors[16]
    assert errors[1] < 1e-12          # every activation stored: rounding of one inversion only


def _peak(layers, x, anchor_every):
    # scratch_bytes=0: the check before the sweep keeps no factors, whose bytes (within one
    # layer output) would otherwise add to the peak where it falls at the sweep's start
    net = invlib.InvertibleSequential(*layers, anchor_every=anchor_every, scratch_bytes=0)
    return step_memory(net, x, net.parameters(), accumulate=True).peak_bytes


@pytest.mark.parametrize("kind", ["dense", "coupling"])
def test_peak_memory_grows_by_one_activation_per_anchor(kind):
    depth = 12
    layers = _layers(kind, depth)
    d = len(layers)
    x = torch.randn(512, 6)  # activations dominate parameters and their gradients
    activation = x.numel() * x.element_size()
    base = _peak(layers, x, None)
    for k in (1, 2, 3, 4, 6, 8, d - 1, d):
        anchors = math.ceil(d / k) - 1
        extra = _peak(layers, x, k) - base
        assert abs(extra - anchors * activation) <= activation // 8, (k, extra / activation, anchors)


def test_peak_memory_grows_as_depth_over_k():
    k = 4
    x = torch.randn(512, 6)
    activation = x.numel() * x.element_size()
    peaks = {d: _peak(_layers("dense", d), x, k) for d in (4, 8, 16)}  # 8, 16, 32 layers
    # Doubling the depth adds (d/k) anchors: 2 from 8 to 16 layers, 4 from 16 to 32.
    assert abs(peaks[8] - peaks[4] - 2 * activation) <= activation // 8
    assert abs(peaks[16] - peaks[8] - 4 * activation) <= activation // 8


def test_replay_context_and_hooks_with_anchors():
    torch.manual_seed(1)
    sub = lambda: nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.3), nn.Tanh())  # noqa: E731
    layers = [invlib.AdditiveCoupling(sub(), sub()) for _ in range(6)]
    x = torch.randn(8, 6)
    y_bar = torch.randn_like(x)
    torch.manual_seed(5)
    reference = _grads(layers, x, y_bar)
    torch.manual_seed(5)
    anchored = _grads(layers, x, y_bar, 2)
    assert _worst(anchored, reference) <= 1e-12  # same dropout masks in every reverse step

    seen = []
    net = invlib.InvertibleSequential(*layers, anchor_every=2).eval()
    handles = [p.register_hook(lambda g: seen.append(g.shape) or g) for p in net.parameters()]
    grads = torch.autograd.grad(net(x.requires_grad_()).square().sum(), list(net.parameters()))
    assert len(seen) == len(grads) == sum(1 for _ in net.parameters())
    for h in handles:
        h.remove()


def test_conditional_blocks_with_anchors():
    torch.manual_seed(2)

    class Sub(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, t, c):
            return torch.tanh(self.linear(t) + c)

    layers = [invlib.AdditiveCoupling(Sub(), Sub()) for _ in range(5)]
    x, c = torch.randn(4, 6), torch.randn(4, 3, requires_grad=True)

    def context_grad(net):
        c.grad = None
        net(x, context=c).square().sum().backward()
        return c.grad.clone()

    ref = invlib.InvertibleSequential(*layers)
    with torch.no_grad():
        assert torch.equal(ref(x, c), invlib.InvertibleSequential(*layers, anchor_every=2)(x, c))
    torch.testing.assert_close(context_grad(invlib.InvertibleSequential(*layers, anchor_every=2)),
                               context_grad(ref), rtol=1e-12, atol=1e-14)


def test_second_backward_is_refused_and_slicing_keeps_the_option():
    net = invlib.InvertibleSequential(*_layers("coupling", 6), anchor_every=2)
    loss = net(torch.randn(3, 6, requires_grad=True)).square().sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    assert net[1:4].anchor_every == 2
    assert "anchor_every=2" in repr(net)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_bad_anchor_every_is_refused(bad):
    with pytest.raises(ValueError, match=r"anchor_every must be None .* or a positive int k .* got"):
        invlib.InvertibleSequential(invlib.LeakyReLU(0.5), anchor_every=bad)


def _anchored_mixed(anchor_every: int) -> invlib.InvertibleSequential:
    """Module level, so that DDP's ranks can rebuild it from a pickled functools.partial."""
    net = invlib.compare.mixed_net(8)
    return invlib.InvertibleSequential(*net, anchor_every=anchor_every)


def test_ddp_with_anchors_trains_exactly_like_one_process():
    import functools

    from invlib.distributed import ddp_agreement

    torch.manual_seed(0)
    x, target = torch.randn(8, 8), torch.randn(8, 8)
    worst = ddp_agreement(functools.partial(_anchored_mixed, 2), x, target, modes=("default", "no_sync"), steps=2)
    for mode, difference in worst.items():
        assert difference <= 1e-12, f"DDP {mode} with anchors: parameters differ by {difference:.1e}"


def test_torch_compile_with_anchors_gives_the_plain_gradients():
    layers = _layers("mixed", 0)
    x = torch.randn(5, 6)
    y_bar = torch.randn_like(x)
    reference = _grads(layers, x, y_bar)
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    net = torch.compile(invlib.InvertibleSequential(*layers, anchor_every=3), backend="aot_eager")
    x_in = x.clone().requires_grad_()
    net(x_in).backward(y_bar)
    compiled = [x_in.grad] + [p.grad for layer in layers for p in layer.parameters()]
    assert _worst(compiled, reference) <= 1e-12
