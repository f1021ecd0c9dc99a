"""Every documented error and warning is raised, with a message naming what went wrong."""

import pytest
import torch
from torch import nn

import invlib

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("slope", [0.0, -0.1])
def test_leaky_relu_rejects_non_positive_slope(slope):
    with pytest.raises(ValueError, match=rf"negative_slope must be > 0 and finite for LeakyReLU to be invertible, got {slope}"):
        invlib.LeakyReLU(slope)


def test_elu_rejects_non_positive_alpha():
    with pytest.raises(ValueError, match=r"alpha must be > 0 and finite for ELU"):
        invlib.ELU(0.0)


def test_elu_inverse_rejects_values_outside_its_range():
    with pytest.raises(ValueError, match=r"y must be > -alpha = -1.0 .* got min\(y\) = -1.5"):
        invlib.ELU(1.0).inverse(torch.tensor([0.5, -1.5]))


@pytest.mark.parametrize("features", [0, -3, 2.5, True])
def test_bad_features_are_rejected(features):
    with pytest.raises(ValueError, match=r"features must be a positive int"):
        invlib.InvertibleLinear(features)


def test_singular_dense_weight():
    layer = invlib.InvertibleLinear(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"InvertibleLinear: the weight is singular .*smallest LU pivot \|U_ii\| = 0\.000e\+00"):
        layer.inverse(torch.randn(2, 3))


def test_nearly_singular_dense_weight_is_singular_to_working_precision():
    layer = invlib.InvertibleLinear(2)
    with torch.no_grad():
        # Partial pivoting keeps row 0: U = [[2, 2], [0, eps]], pivot ratio 2 / eps > 1 / eps.
        eps = torch.finfo(torch.float64).eps
        layer.weight.copy_(torch.tensor([[2.0, 2.0], [1.0, 1.0 + eps]]))
    with pytest.raises(ValueError, match=r"singular to working precision: smallest LU pivot \|U_ii\| = 2\.2\d*e-16"):
        layer.inverse(torch.randn(2, 2))


def test_singular_lu_linear():
    layer = invlib.LULinear(3)
    with torch.no_grad():
        layer.log_s[1] = -torch.inf
    with pytest.raises(ValueError, match=r"LULinear: the weight is singular"):
        layer.inverse(torch.randn(2, 3))


def test_ill_conditioned_dense_weight_warns():
    layer = invlib.InvertibleLinear(2)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([1.0, 1e-9])))
    with pytest.warns(UserWarning, match=r"badly conditioned: condition number 1\.000e\+09"):
        x = layer.inverse(torch.ones(1, 2))
    torch.testing.assert_close(x, torch.tensor([[1.0, 1e9]]))


def test_well_conditioned_weight_does_not_warn(recwarn):
    layer = invlib.InvertibleLinear(8)
    layer.inverse(torch.randn(2, 8))
    assert not [w for w in recwarn if "conditioned" in str(w.message)]


def test_singular_conv_kernel_at_frequency_zero():
    # Taps summing to a singular matrix make H[0] = sum_j W_j singular: the mean of x is lost.
    layer = invlib.CircularConv1d(2, 3)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        layer.weight[:, :, 2] = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"CircularConv1d: the weight is singular .* at frequency \(0,\) .*\|U_ii\| = 0\.000e\+00"):
        layer.inverse(torch.randn(1, 2, 6))


def test_singular_conv2d_kernel_names_the_frequency():
    # A [1, 1] kernel along the last axis has H = 1 + e^{2 pi i f / 4}, zero at f = 2 (Nyquist).
    layer = invlib.CircularConv2d(1, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    with pytest.raises(ValueError, match=r"CircularConv2d: the weight is singular .* at frequency \(\d, 2\)"):
        layer.inverse(torch.randn(1, 1, 3, 4))


@pytest.mark.parametrize(
    "layer, x, match",
    [
        (lambda: invlib.InvertibleLinear(4), torch.randn(2, 5), r"x must have shape \(batch, features=4\), got \(2, 5\)"),
        (lambda: invlib.InvertibleLinear(4), torch.randn(4), r"x must have shape \(batch, features=4\), got 1-d"),
        (lambda: invlib.LULinear(4), torch.randn(2, 3), r"LULinear: x must have shape \(batch, features=4\)"),
        (lambda: invlib.CircularConv1d(3, 3), torch.randn(2, 4, 5), r"x must have shape \(batch, channels=3, L\)"),
        (lambda: invlib.CircularConv2d(3, 3), torch.randn(2, 3, 5), r"x must have shape \(batch, channels=3, H, W\)"),
        (lambda: invlib.CircularConv1d(3, 5), torch.randn(2, 3, 1), r"needs every spatial size >= 2"),
        (lambda: invlib.AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2)), torch.randn(2, 5), r"even size along dim 1"),
        (lambda: invlib.AdditiveCoupling(nn.Linear(2, 2), nn.Linear(2, 2)), torch.randn(4), r"got 1-d shape"),
        (lambda: invlib.AdditiveCoupling(nn.Linear(2, 3), nn.Linear(2, 2)), torch.randn(1, 4), r"F must map the half shape"),
    ],
)
def test_wrong_shape(layer, x, match):
    layer, x = layer(), x.double()  # the parameter list is built before the float64 fixture runs
    with pytest.raises(ValueError, match=match):
        layer(x)
    if "F must map" not in match:
        with pytest.raises(ValueError, match=match.replace("x ", "y ").replace("x must", "y must")):
            layer.inverse(x)


@pytest.mark.parametrize(
    "layer, x, match",
    [
        (
            lambda: invlib.InvertibleLinear(3),
            torch.randn(2, 3, dtype=torch.float32),
            r"x has dtype torch.float32 but the parameters have dtype torch.float64",
        ),
        (lambda: invlib.LULinear(3), torch.randn(2, 3, dtype=torch.float32), r"parameters have dtype torch.float64"),
        (lambda: invlib.CircularConv1d(2, 3), torch.randn(1, 2, 4, dtype=torch.float32), r"parameters have dtype torch.float64"),
        (lambda: invlib.InvertibleLinear(3), torch.ones(2, 3, dtype=torch.int64), r"x must have a floating dtype, got torch.int64"),
        (lambda: invlib.LeakyReLU(), torch.ones(2, dtype=torch.int32), r"LeakyReLU: x must have a floating dtype"),
        (lambda: invlib.Asinh(), [1.0, 2.0], r"Asinh: x must be a torch.Tensor .* got list"),
    ],
)
def test_wrong_dtype_or_type(layer, x, match):
    layer = layer()
    with pytest.raises(TypeError, match=match):
        layer(x)


def test_sequential_rejects_non_invertible_layers_and_inputs():
    with pytest.raises(TypeError, match=r"layer 1 must be an invlib.Invertible, got ReLU"):
        invlib.InvertibleSequential(invlib.Asinh(), nn.ReLU())
    with pytest.raises(TypeError, match=r"x must be a single torch.Tensor, got tuple"):
        invlib.InvertibleSequential(invlib.Asinh())((torch.ones(1), torch.ones(1)))


def test_coupling_rejects_non_modules():
    with pytest.raises(TypeError, match=r"G must be a torch.nn.Module, got function"):
        invlib.AdditiveCoupling(nn.Identity(), lambda t: t)


def test_no_double_backward():
    net = invlib.InvertibleSequential(invlib.InvertibleLinear(3), invlib.Asinh())
    x = torch.randn(2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("make", [lambda: invlib.LeakyReLU(float("inf")), lambda: invlib.ELU(float("inf"))])
def test_infinite_slope_or_alpha_is_refused(make):
    with pytest.raises(ValueError, match="finite"):
        make()


def test_pivot_growth_is_reported_as_such_not_as_singular():
    # Wilkinson's matrix: well conditioned, but partial pivoting doubles the last pivot n - 1 times.
    n = 60
    W = torch.eye(n, dtype=torch.float64) - torch.tril(torch.ones(n, n, dtype=torch.float64), -1)
    W[:, -1] = 1.0
    layer = invlib.InvertibleLinear(n, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(W)
    assert torch.linalg.cond(W) < 100
    with pytest.warns(UserWarning, match="pivot growth"):
        layer.inverse(torch.randn(2, n, dtype=torch.float64))


def test_lulinear_conditioning_warning_and_from_weight_validation():
    with pytest.warns(UserWarning, match="LULinear.from_weight: the inverse is badly conditioned"):
        layer = invlib.LULinear.from_weight(torch.diag(torch.tensor([1.0, 1e-9], dtype=torch.float64)))
    with pytest.warns(UserWarning, match="LULinear: the inverse is badly conditioned"):
        layer.inverse(torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        invlib.LULinear.from_weight([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"bias must have shape"):
        invlib.LULinear.from_weight(torch.eye(3), torch.ones(1))
    with pytest.raises(TypeError, match="bias has dtype torch.float64"):
        invlib.LULinear.from_weight(torch.eye(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))


def test_conv_conditioning_warning_names_the_frequency():
    layer = invlib.CircularConv1d(1, 2, bias=False)
    with torch.no_grad():   # H[f] = 1 + c e^{2 pi i f / L}: nearly zero at f = L/2 for c close to 1
        layer.weight.copy_(torch.tensor([[[1.0, 1.0 - 1e-9]]]))
    with pytest.warns(UserWarning, match=r"badly conditioned at frequency \(2,\)"):
        layer.inverse(torch.randn(1, 1, 4))


def test_inverse_checks_dtype_too():
    with pytest.raises(TypeError, match="y has dtype torch.float64"):
        invlib.InvertibleLinear(3).float().inverse(torch.ones(2, 3, dtype=torch.float64))
