"""Per-layer tests: round trips, gradcheck, reverse() against autograd, and independent references."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

import invlib
from conftest import perturbed

pytestmark = pytest.mark.usefixtures("float64")


def _perturb(layer: nn.Module, scale: float = 0.2) -> nn.Module:
    return perturbed(layer, scale)


def _coupling(width: int) -> invlib.AdditiveCoupling:
    h = width // 2
    return invlib.AdditiveCoupling(
        nn.Sequential(nn.Linear(h, h), nn.LeakyReLU(0.1)), nn.Sequential(nn.Linear(h, h), nn.Tanh())
    )


def _conv_coupling() -> invlib.AdditiveCoupling:
    return invlib.AdditiveCoupling(nn.Conv2d(2, 2, 3, padding=1), nn.Sequential(nn.Conv2d(2, 2, 1), nn.Softplus()))


CASES = {
    "linear": lambda: (_perturb(invlib.InvertibleLinear(5)), torch.randn(4, 5)),
    "linear-nobias": lambda: (_perturb(invlib.InvertibleLinear(5, bias=False)), torch.randn(4, 5)),
    "lu-linear": lambda: (_perturb(invlib.LULinear(5)), torch.randn(4, 5)),
    "leaky-relu": lambda: (invlib.LeakyReLU(0.3), torch.randn(4, 5)),
    "asinh": lambda: (invlib.Asinh(), 3 * torch.randn(4, 5)),
    "elu": lambda: (invlib.ELU(0.7), torch.randn(4, 5)),
    "coupling": lambda: (_coupling(6), torch.randn(4, 6)),
    "coupling-conv": lambda: (_conv_coupling(), torch.randn(2, 4, 3, 3)),
    "conv1d-k3": lambda: (_perturb(invlib.CircularConv1d(3, 3), 0.1), torch.randn(2, 3, 7)),
    "conv1d-k4": lambda: (_perturb(invlib.CircularConv1d(2, 4), 0.1), torch.randn(2, 2, 6)),
    "conv2d-k3": lambda: (_perturb(invlib.CircularConv2d(2, 3), 0.1), torch.randn(2, 2, 4, 5)),
    "conv2d-k2": lambda: (_perturb(invlib.CircularConv2d(2, 2), 0.1), torch.randn(2, 2, 3, 4)),
    "squeeze": lambda: (invlib.Squeeze2d(), torch.randn(2, 3, 4, 6)),
    "conv1x1": lambda: (_perturb(invlib.InvertibleConv1x1(4)), torch.randn(2, 4, 3, 5)),
    "conv1x1-bias": lambda: (_perturb(invlib.InvertibleConv1x1(3, bias=True)), torch.randn(2, 3, 2, 2)),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]()


def _range_sample(layer: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """A point in the layer's range (ELU's range is (-alpha, inf), everything else is onto)."""
    y = torch.randn_like(like)
    return y.clamp(min=-0.9 * layer.alpha) if isinstance(layer, invlib.ELU) else y


class _Inverse(nn.Module):
    """Expose ``inverse`` as ``forward`` so functional_call can differentiate it w.r.t. parameters."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.layer.inverse(y)


def _gradcheck(module: nn.Module, t: torch.Tensor) -> None:
    """gradcheck with respect to the input *and* every parameter.

    Fast mode compares random projections of the Jacobian, which catches any wrong derivative with
    probability 1 and keeps float64 convolutions (slow on CPU) affordable; reverse() is compared
    with autograd element by element below.
    """
    names, params = zip(*module.named_parameters()) if list(module.parameters()) else ((), ())

    def fn(inp, *ps):
        return functional_call(module, dict(zip(names, ps)), (inp,))

    inputs = (t.detach().clone().requires_grad_(), *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_round_trip_both_ways(case):
    layer, x = case
    torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=1e-12, atol=1e-12)
    y = _range_sample(layer, layer(x))
    torch.testing.assert_close(layer(layer.inverse(y)), y, rtol=1e-12, atol=1e-12)


def test_gradcheck_forward(case):
    layer, x = case
    _gradcheck(layer, x)


def test_gradcheck_inverse(case):
    layer, x = case
    _gradcheck(_Inverse(layer), _range_sample(layer, layer(x)))


@pytest.mark.parametrize("existing_grads", [False, True])
def test_reverse_matches_autograd(case, existing_grads):
    layer, x = case
    params = list(layer.parameters())
    start = [torch.randn_like(p) if existing_grads else None for p in params]
    x_leaf = x.clone().requires_grad_()
    y = layer(x_leaf)
    y_bar = torch.randn_like(y)
    for p, g in zip(params, start):
        p.grad = None if g is None else g.clone()
    y.backward(y_bar)
    expected = [p.grad.clone() for p in params]

    for p, g in zip(params, start):
        p.grad = None if g is None else g.clone()
    x_rebuilt, x_bar = layer.reverse(y.detach(), y_bar)
    torch.testing.assert_close(x_rebuilt, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_bar, x_leaf.grad, rtol=1e-12, atol=1e-12)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)
    assert not x_rebuilt.requires_grad and not x_bar.requires_grad


def test_reverse_skips_frozen_parameters():
    layer = _perturb(invlib.InvertibleLinear(4))
    layer.weight.requires_grad_(False)
    y = layer(torch.randn(3, 4))
    layer.reverse(y, torch.randn_like(y))
    assert layer.weight.grad is None and layer.bias.grad is not None


def test_reverse_accepts_expanded_cotangent():
    """``y.sum().backward()`` hands backward a stride-0 cotangent; reverse must not write into it."""
    layer = _coupling(6)
    y = layer(torch.randn(4, 6))
    y_bar = torch.ones(()).expand(4, 6)
    x, x_bar = layer.reverse(y, y_bar)
    x_leaf = x.clone().requires_grad_()
    layer(x_leaf).sum().backward()
    torch.testing.assert_close(x_bar, x_leaf.grad)


class _Scale(invlib.Invertible):
    """Test-only layer ``y = x * exp(a)`` that keeps the base class's generic reverse."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.a.exp()

    def inverse(self, y):
        return y * (-self.a).exp()


def test_default_reverse_matches_autograd():
    layer, x = _Scale(3), torch.randn(5, 3)
    y_bar = torch.randn(5, 3)
    x_leaf = x.clone().requires_grad_()
    layer(x_leaf).backward(y_bar)
    expected = layer.a.grad.clone()
    layer.a.grad = torch.ones(3)
    x_rebuilt, x_bar = layer.reverse(layer(x).detach(), y_bar)
    torch.testing.assert_close(x_rebuilt, x)
    torch.testing.assert_close(x_bar, x_leaf.grad)
    torch.testing.assert_close(layer.a.grad, expected + 1)


# ---- independent references ---------------------------------------------------------------------


def test_linear_inverse_matches_linalg_solve():
    layer = _perturb(invlib.InvertibleLinear(6), 0.5)
    y = torch.randn(8, 6)
    # x W^T = y - b  <=>  W x^T = (y - b)^T
    expected = torch.linalg.solve(layer.weight, (y - layer.bias).T).T
    torch.testing.assert_close(layer.inverse(y), expected, rtol=1e-12, atol=1e-12)


def test_linear_init_is_orthogonal():
    w = invlib.InvertibleLinear(7).weight
    torch.testing.assert_close(w @ w.T, torch.eye(7))


def test_lu_linear_weight_is_p_l_u_and_inverse_matches_solve():
    layer = _perturb(invlib.LULinear(6), 0.3)
    p = torch.eye(6)[layer.perm]  # P[i, perm[i]] = 1 -> row i of P is e_{perm[i]}
    lower = torch.tril(layer.lower, -1) + torch.eye(6)
    upper = torch.triu(layer.upper, 1) + torch.diag(layer.sign * layer.log_s.exp())
    torch.testing.assert_close(layer.weight, p @ lower @ upper)
    y = torch.randn(5, 6)
    expected = torch.linalg.solve(layer.weight, (y - layer.bias).T).T
    torch.testing.assert_close(layer.inverse(y), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.linalg.slogdet(layer.weight).logabsdet, layer.log_s.sum())


def test_lu_linear_init_is_orthogonal():
    w = invlib.LULinear(7).weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(7))


@pytest.mark.parametrize(
    "layer, reference",
    [
        (invlib.LeakyReLU(0.3), lambda x: torch.where(x >= 0, x, 0.3 * x)),
        (invlib.Asinh(), lambda x: torch.log(x + torch.sqrt(x * x + 1))),
        (invlib.ELU(0.7), lambda x: torch.where(x > 0, x, 0.7 * (torch.exp(x) - 1))),
    ],
    ids=["leaky-relu", "asinh", "elu"],
)
def test_activation_matches_closed_form(layer, reference):
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(layer(x), reference(x))


def test_layers_move_between_dtypes_like_any_module():
    """nn.Module.to/double/float must keep working (a helper once shadowed Module._apply)."""
    from torch import nn

    makers = [lambda: invlib.AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2)), lambda: invlib.InvertibleLinear(4),
              lambda: invlib.LULinear(4), lambda: invlib.CircularConv1d(4, 3), lambda: invlib.CircularConv2d(4, 3)]
    shapes = [(3, 4), (3, 4), (3, 4), (2, 4, 5), (2, 4, 5, 6)]
    for make, shape in zip(makers, shapes):
        layer = make().float()
        assert all(p.dtype == torch.float32 for p in layer.parameters())
        layer = layer.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in layer.parameters())
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=0, atol=1e-12)
        layer = layer.float()
        x = x.float()
        torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda: invlib.InvertibleLinear(4), (3, 4)), (lambda: invlib.LULinear(4), (3, 4)),
    (lambda: invlib.LeakyReLU(0.3), (3, 4)), (lambda: invlib.Asinh(), (3, 4)), (lambda: invlib.ELU(), (3, 4)),
    (lambda: invlib.AdditiveCoupling(torch.nn.Linear(2, 2), torch.nn.Tanh()), (3, 4)),
    (lambda: invlib.CircularConv1d(2, 3), (2, 2, 5)), (lambda: invlib.CircularConv2d(2, 2), (2, 2, 3, 4)),
])
def test_reverse_in_place_equals_reverse_into_fresh_buffers(make, shape):
    """overwrite=True may reuse y and y_bar, but must give the same x, x_bar and parameter grads."""
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    y_bar = torch.randn_like(y)
    results = []
    for overwrite in (False, True):
        layer.zero_grad(set_to_none=True)
        y_in, y_bar_in = y.clone(), y_bar.clone()
        x_out, x_bar = layer.reverse(y_in, y_bar_in, overwrite=overwrite)
        results.append([x_out.clone(), x_bar.clone()] + [p.grad.clone() for p in layer.parameters()])
        if not overwrite:   # the inputs must be left as they were
            assert torch.equal(y_in, y) and torch.equal(y_bar_in, y_bar)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    torch.testing.assert_close(results[0][0], x, rtol=0, atol=1e-12)


def test_lulinear_from_weight_reproduces_the_weight_and_rejects_singular():
    import invlib

    torch.manual_seed(3)
    W = torch.randn(6, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    layer = invlib.LULinear.from_weight(W, b)
    torch.testing.assert_close(layer.weight, W, rtol=0, atol=1e-13)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ W.T + b, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        invlib.LULinear.from_weight(torch.ones(2, 3))
    with pytest.raises(ValueError, match="singular"):
        invlib.LULinear.from_weight(torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64))
