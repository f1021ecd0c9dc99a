"""invlib.ode: solver order against the matrix exponential, adjoint gradients against backprop
through the same solver and against the closed form, the reversible scheme against plain
backprop, and the documented errors."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from invlib import ode
from invlib.memory import MemoryTracker

pytestmark = pytest.mark.usefixtures("float64")

SOLVERS = {"euler": (ode.euler, 1), "rk4": (ode.rk4, 4)}


def _linear_field(n: int = 4) -> nn.Linear:
    """``f(x) = x A^T``: ``x(t) = x0 exp(A t)^T``, so every quantity has a closed form."""
    f = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        f.weight.copy_(torch.randn(n, n) / n**0.5)
    return f


def _mlp_field(n: int = 4, width: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, n))


def _backprop_grads(solve, f, x0, t1, steps, c):
    x = x0.clone().requires_grad_()
    f.zero_grad()
    (solve(f, x, t1, steps) * c).sum().backward()
    return [x.grad, *(p.grad for p in f.parameters())]


def _rel(got, expected):
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("method", SOLVERS)
def test_solver_converges_at_its_order(method):
    solve, order = SOLVERS[method]
    f, x0 = _linear_field(), torch.randn(3, 4)
    exact = x0 @ torch.linalg.matrix_exp(f.weight.detach() * 1.5).T
    with torch.no_grad():
        errors = [float((solve(f, x0, 1.5, steps) - exact).norm()) for steps in (20, 40, 80)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert ratios == pytest.approx([2.0**order] * 2, rel=0.1)


@pytest.mark.parametrize("method", SOLVERS)
def test_negative_t1_integrates_backwards(method):
    solve, order = SOLVERS[method]
    f, x0 = _mlp_field(), torch.randn(3, 4)
    with torch.no_grad():
        errors = [float((solve(f, solve(f, x0, 1.0, n), -1.0, n) - x0).norm()) for n in (16, 32)]
    assert errors[0] / errors[1] > 0.8 * 2.0**order  # a round trip is exact only as h -> 0


@pytest.mark.parametrize("method", SOLVERS)
def test_adjoint_differs_from_discrete_gradient_at_the_method_order(method):
    solve, order = SOLVERS[method]
    f, x0, c = _mlp_field(), torch.randn(3, 4), torch.randn(3, 4)
    gaps = []
    for steps in (8, 16, 32):
        x0_bar, theta_bar = ode.adjoint_grad(f, x0, 1.0, steps, lambda y: c, method=method)
        gaps.append(_rel([x0_bar, *theta_bar], _backprop_grads(solve, f, x0, 1.0, steps, c)))
    assert gaps[0] > 0 and [gaps[0] / gaps[1], gaps[1] / gaps[2]] == pytest.approx(
        [2.0**order] * 2, rel=0.1)


def test_adjoint_matches_closed_form_gradient_of_linear_ode():
    f, x0, c, t1 = _linear_field(), torch.randn(3, 4), torch.randn(3, 4), 1.5
    A = f.weight.detach()
    x0_bar, (A_bar,) = ode.adjoint_grad(f, x0, t1, 40, lambda y: c)
    # L = <c, x0 E^T>, E = exp(A t1): dL/dx0 = c E; dL/dA from autograd through matrix_exp.
    A_leaf = A.clone().requires_grad_()
    (c * (x0 @ torch.linalg.matrix_exp(A_leaf * t1).T)).sum().backward()
    assert torch.allclose(x0_bar, c @ torch.linalg.matrix_exp(A * t1), rtol=1e-6, atol=0)
    assert torch.allclose(A_bar, A_leaf.grad, rtol=1e-6, atol=0)


def test_adjoint_matches_finite_differences():
    f, x0, c = _mlp_field(), torch.randn(2, 4), torch.randn(2, 4)
    x0_bar, _ = ode.adjoint_grad(f, x0, 1.0, 64, lambda y: c)
    fd = torch.empty_like(x0)
    eps = 1e-6
    for i in range(x0.numel()):
        e = torch.zeros_like(x0).view(-1)
        e[i] = eps
        e = e.view_as(x0)
        plus, minus = ode.rk4(f, x0 + e, 1.0, 64), ode.rk4(f, x0 - e, 1.0, 64)
        fd.view(-1)[i] = ((plus - minus) * c).sum() / (2 * eps)
    assert torch.allclose(x0_bar, fd, rtol=1e-7, atol=1e-9)


def test_adjoint_memory_does_not_grow_with_steps():
    f, x0 = _mlp_field(), torch.randn(64, 4)
    peaks = []
    for steps in (8, 32):
        with MemoryTracker() as mem:
            ode.adjoint_grad(f, x0, 1.0, steps, torch.ones_like)
        peaks.append(mem.peak_bytes)
    assert peaks[0] > 0 and peaks[1] == peaks[0]


def test_adjoint_costs_one_forward_more_than_backprop_in_flops():
    f, x0 = _mlp_field(), torch.randn(16, 4)

    def counted(fn):
        with FlopCounterMode(display=False) as counter:  # its module hooks must not break
            fn()
        return counter.get_total_flops()

    def backprop():
        ode.rk4(f, x0.clone().requires_grad_(), 1.0, 10).sum().backward()

    with torch.no_grad():
        forward = counted(lambda: ode.rk4(f, x0, 1.0, 10))
    assert counted(backprop) == 3 * forward
    assert counted(lambda: ode.adjoint_grad(f, x0, 1.0, 10, torch.ones_like)) == 4 * forward


def test_reversible_euler_backprop_by_inversion_is_the_discrete_gradient():
    F, G = _mlp_field(3, 8), _mlp_field(3, 8)
    x0, c = torch.randn(5, 6), torch.randn(5, 6)
    for steps in (1, 7, 40):
        net = ode.reversible_euler(F, G, 2.0, steps)
        params = list(net.parameters())
        assert len(params) == 8  # F and G shared by every step
        results = []
        for run in (net, lambda x: _plain(net, x)):
            x = x0.clone().requires_grad_()
            net.zero_grad()
            (run(x) * c).sum().backward()
            results.append([x.grad, *(p.grad.clone() for p in params)])
        assert _rel(*results) < 1e-10
        assert torch.allclose(net.inverse(net(x0)), x0, rtol=0, atol=1e-12)


def _plain(net, x):
    for layer in net:
        x = layer(x)
    return x


def test_reversible_euler_converges_at_first_order():
    n = 2
    A, B = torch.randn(n, n), torch.randn(n, n)
    F, G = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
    with torch.no_grad():
        F.weight.copy_(A)
        G.weight.copy_(B)
    # dx1/dt = x2 A^T, dx2/dt = x1 B^T: one linear system with block matrix [[0, A], [B, 0]].
    M = torch.cat([torch.cat([torch.zeros(n, n), A], 1), torch.cat([B, torch.zeros(n, n)], 1)])
    x0 = torch.randn(3, 2 * n)
    exact = x0 @ torch.linalg.matrix_exp(M).T
    with torch.no_grad():
        errors = [float((ode.reversible_euler(F, G, 1.0, s)(x0) - exact).norm()) for s in (40, 80)]
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("call, error, match", [
    (lambda f, x: ode.rk4(f, x, 1.0, 0), ValueError, "steps must be a positive int, got 0"),
    (lambda f, x: ode.euler(f, x, 1.0, -3), ValueError, "steps must be a positive int"),
    (lambda f, x: ode.rk4(f, x, 1.0, 2.5), ValueError, "steps must be a positive int"),
    (lambda f, x: ode.rk4(f, x, float("inf"), 4), ValueError, "t1 must be finite, got inf"),
    (lambda f, x: ode.euler(f, x, float("nan"), 4), ValueError, "t1 must be finite"),
    (lambda f, x: ode.rk4(f, x, "1", 4), TypeError, "t1 must be a real number"),
    (lambda f, x: ode.rk4(f, x[0], 1.0, 4), ValueError, r"x0 must have shape \(batch, n\)"),
    (lambda f, x: ode.rk4(nn.Linear(4, 5), x, 1.0, 4), ValueError, "same shape"),
    (lambda f, x: ode.rk4(torch.tanh, x, 1.0, 4), TypeError, "f must be a torch.nn.Module"),
    (lambda f, x: ode.adjoint_grad(f, x, 1.0, 4, lambda y: y[:, :2]), ValueError,
     "loss_grad.*shape of y"),
    (lambda f, x: ode.adjoint_grad(f, x, 1.0, 4, torch.ones_like, method="rk45"), ValueError,
     "method must be one of"),
    (lambda f, x: ode.reversible_euler(f, torch.tanh, 1.0, 4), TypeError, "G must be"),
    (lambda f, x: ode.reversible_euler(f, f, 1.0, 0), ValueError, "steps must be"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(_mlp_field(), torch.randn(3, 4))
