"""The NumPy reference of the post's algorithm, against finite differences and torch autograd."""

import numpy as np
import pytest
import torch

from invlib import reference as ref


def quadratic(target):
    return (lambda y: 0.5 * np.sum((y - target) ** 2)), (lambda y: y - target)


@pytest.fixture
def problem():
    n, depth = 6, 5
    layers = ref.random_layers(width=n, depth=depth, seed=11)
    rng = np.random.default_rng(12)
    x, target = rng.standard_normal(n), rng.standard_normal(n)
    return layers, x, *quadratic(target)


def autograd_reference(layers, x, L_target):
    x_t = torch.tensor(x, requires_grad=True)
    params = []
    h = x_t
    for f in layers:
        if isinstance(f, ref.Dense):
            W, b = torch.tensor(f.W, requires_grad=True), torch.tensor(f.b, requires_grad=True)
            params.append((W, b))
            h = W @ h + b
        else:
            params.append(None)
            h = torch.nn.functional.leaky_relu(h, f.a)
    (0.5 * ((h - torch.from_numpy(L_target)) ** 2).sum()).backward()
    return x_t.grad.numpy(), params


@pytest.mark.parametrize("depth", [1, 2, 7, 20])
def test_inversion_matches_finite_differences_and_autograd(depth):
    n = 5
    # Slope 0.5 keeps the deep stack well conditioned; see test_reconstruction_error_grows.
    layers = ref.random_layers(width=n, depth=depth, seed=depth, negative_slope=0.5)
    rng = np.random.default_rng(depth + 100)
    x, target = rng.standard_normal(n), rng.standard_normal(n)
    L, dL = quadratic(target)
    x_bar, params = ref.grad_by_inversion(layers, dL, x)
    fd = ref.finite_difference_grad(lambda z: L(ref.forward(layers, z)), x, eps=1e-6)
    assert np.abs(x_bar - fd).max() < 1e-6
    x_bar_t, params_t = autograd_reference(layers, x, target)
    assert np.abs(x_bar - x_bar_t).max() < 1e-12
    for mine, theirs in zip(params, params_t):
        if theirs is not None:
            W_t, b_t = theirs
            np.testing.assert_allclose(mine["W"], W_t.grad.numpy(), rtol=0, atol=1e-12)
            np.testing.assert_allclose(mine["b"], b_t.grad.numpy(), rtol=0, atol=1e-12)


def test_caching_and_inversion_agree(problem):
    layers, x, L, dL = problem
    g_c, p_c = ref.grad_by_caching(layers, dL, x)
    g_i, p_i = ref.grad_by_inversion(layers, dL, x)
    np.testing.assert_allclose(g_i, g_c, rtol=0, atol=1e-13)
    for a, b in zip(p_i, p_c):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12)


def test_literal_pseudocode_is_not_a_gradient(problem):
    layers, x, L, dL = problem
    fs, dfs, inv = ref.post_inputs(layers)
    literal = ref.post_pseudocode(fs, dfs, inv, dL, x)
    # NumPy's `*` broadcasts the Jacobian against the cotangent: an n x n array comes back.
    assert literal.shape == (x.size, x.size)
    g, _ = ref.grad_by_caching(layers, dL, x)
    # Reading `*` as a matrix product, with or without the transpose, is still wrong,
    # because the listing inverts each layer at the network input x.
    for transpose in (False, True):
        dfs_mat = [lambda a, df=df: _Star(df(a), transpose) for df in dfs]
        wrong = ref.post_pseudocode(fs, dfs_mat, inv, dL, x)
        assert wrong.shape == x.shape
        assert np.abs(wrong - g).max() > 1e-2
    fixed = ref.post_pseudocode_corrected(fs, dfs, inv, dL, x)
    np.testing.assert_allclose(fixed, g, rtol=0, atol=1e-13)


class _Star:
    def __init__(self, J, transpose):
        self.J, self.transpose = J, transpose

    def __mul__(self, v):
        return (self.J.T if self.transpose else self.J) @ v


def test_same_vjps_same_flops_constant_memory(problem):
    layers, x, L, dL = problem
    c, i = ref.Ledger(), ref.Ledger()
    ref.grad_by_caching(layers, dL, x, c)
    ref.grad_by_inversion(layers, dL, x, i)
    for kind in ("forward", "vjp", "param_vjp"):
        assert c.flops[kind] == i.flops[kind]
    assert "inverse" in i.flops and "inverse" not in c.flops
    n, maps = x.size, len(layers)
    assert c.peak == (maps + 2) * n
    assert i.peak == 2 * n


def test_stored_floats_vs_depth():
    n = 4
    peaks = {}
    for depth in (2, 4, 8):
        layers = ref.random_layers(width=n, depth=depth, seed=0)
        c, i = ref.Ledger(), ref.Ledger()
        ref.grad_by_caching(layers, lambda y: y, np.ones(n), c)
        ref.grad_by_inversion(layers, lambda y: y, np.ones(n), i)
        peaks[depth] = (c.peak, i.peak)
    assert peaks[8][0] - peaks[4][0] == 2 * (peaks[4][0] - peaks[2][0]) == 2 * 2 * 2 * n
    assert peaks[2][1] == peaks[4][1] == peaks[8][1] == 2 * n


@pytest.mark.parametrize("split", [0, 1, 5, 10])
def test_accumulation_orders_agree_and_trade_memory_for_flops(problem, split):
    layers, x, L, dL = problem
    g, _ = ref.grad_by_caching(layers, dL, x)
    book = ref.Ledger()
    np.testing.assert_allclose(ref.accumulate(layers, dL, x, split, book), g, rtol=0, atol=1e-13)
    n, maps = x.size, len(layers)
    expected_peak = n + (n * n if split else 0) + (maps - split) * n + n
    assert book.peak == expected_peak


def test_forward_mode_memory_is_flat_but_costs_more():
    n = 8
    results = {}
    for depth in (4, 16):
        layers = ref.random_layers(width=n, depth=depth, seed=1)
        rev, fwd = ref.Ledger(), ref.Ledger()
        ref.accumulate(layers, lambda y: y, np.ones(n), 0, rev)
        ref.accumulate(layers, lambda y: y, np.ones(n), len(layers), fwd)
        results[depth] = rev, fwd
    assert results[16][1].peak == results[4][1].peak          # forward: flat in depth
    assert results[16][0].peak > results[4][0].peak           # reverse: grows
    for rev, fwd in results.values():
        assert sum(fwd.flops.values()) > 3 * sum(rev.flops.values())


def test_accumulate_rejects_bad_split(problem):
    layers, x, L, dL = problem
    with pytest.raises(ValueError, match="split must be in"):
        ref.accumulate(layers, dL, x, len(layers) + 1)


def test_errors():
    with pytest.raises(ValueError, match="negative_slope must be > 0"):
        ref.LeakyReLU(0.0)
    with pytest.raises(ValueError, match="must be square"):
        ref.Dense(np.ones((2, 3)))
    with pytest.raises(ValueError, match="singular"):
        ref.Dense(np.array([[1.0, 2.0], [2.0, 4.0]]))


def test_finite_difference_is_second_order():
    f = lambda z: np.sum(np.sin(z))
    x = np.array([0.3, -1.2])
    err = lambda eps: np.abs(ref.finite_difference_grad(f, x, eps) - np.cos(x)).max()
    assert err(1e-3) < 1e-6
    assert 50 < err(1e-2) / err(1e-3) < 200   # O(eps^2): a 10x smaller step, ~100x less error


def test_reconstruction_error_grows_with_depth_for_small_slopes():
    """Inversion is only as accurate as the network is well conditioned: with slope 0.01
    every negative coordinate is shrunk 100x going forward and its rounding error grown 100x
    coming back, so a 20-block stack no longer reconstructs its input at all."""
    n = 8

    def worst_error(slope, depth):
        errs = []
        for seed in range(3):
            layers = ref.random_layers(width=n, depth=depth, seed=seed, negative_slope=slope)
            x = np.random.default_rng(seed).standard_normal(n)
            errs.append(np.abs(ref.inverse(layers, ref.forward(layers, x)) - x).max())
        return max(errs)

    assert worst_error(0.5, 20) < 1e-10
    assert worst_error(0.01, 4) < 1e-6
    assert worst_error(0.01, 20) > 1e-3
