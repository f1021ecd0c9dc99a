"""The thirteen defects of an outside trial (issue 20), one regression test each, plus the notes.

Each behaves like the plain loop over the same layers, or raises a clear error in forward or
before any gradient leaves the backward. Float64 unless a row is about float32.
"""

import copy
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import invlib
from conftest import perturbed
from invlib.memory import MemoryTracker

pytestmark = pytest.mark.usefixtures("float64")


def _plain(layers, x, context=None):
    for layer in layers:
        x = layer(x, context) if context is not None and layer.takes_context else layer(x)
    return x


def _grads(modules):
    return [p.grad for m in modules for p in m.parameters()]


def _assert_same_grads(got, want, what, rtol=1e-9, atol=1e-12):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"{what}: gradient {i} present in one run only"
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"{what}: gradient {i}")


def _mlp(n, act=nn.Tanh):
    return nn.Sequential(nn.Linear(n, n), act(), nn.Linear(n, n))


# ---- 1. never free a storage that user code may hold --------------------------------------------

def test_row01_held_subnetwork_output_survives_the_backward():
    """A forward hook (or a module caching its output) keeps F's output; the reverse step must not
    shrink that storage (it did, and reading it crashed the interpreter): run in a child process."""
    code = textwrap.dedent("""
        import torch, invlib
        from torch import nn
        torch.manual_seed(0)
        class Caching(nn.Module):
            def __init__(self):
                super().__init__(); self.lin = nn.Linear(3, 3)
            def forward(self, x):
                self.last = self.lin(x)
                return self.last
        F = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
        net = invlib.InvertibleSequential(invlib.AdditiveCoupling(F, Caching()), invlib.InvertibleLinear(6))
        acts = []
        F.register_forward_hook(lambda m, i, o: acts.append(o))
        net(torch.randn(4, 6)).sum().backward()
        G = net[0].G
        print(len(acts), acts[-1].untyped_storage().nbytes(), G.last.untyped_storage().nbytes(),
              float(acts[-1].mean()), float(G.last.mean()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"child crashed (code {done.returncode}): {done.stderr[-2000:]}"
    count, nbytes, cached, *_ = done.stdout.split()
    assert int(count) == 2 and int(nbytes) == 4 * 3 * 4 and int(cached) == 4 * 3 * 4


# ---- 2. nested containers are judged like flat ones ---------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "lu"])
def test_row02_nested_container_refuses_a_singular_weight_before_any_gradient(kind):
    torch.manual_seed(1)
    with torch.no_grad():
        u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float32))
        v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float32))
        weight = u @ torch.diag(torch.logspace(0, -9, 6, dtype=torch.float32)) @ v.T   # cond 1e9
    layer = invlib.InvertibleLinear(6).float() if kind == "dense" else invlib.LULinear(6).float()
    with torch.no_grad():
        if kind == "dense":
            layer.weight.copy_(weight)
        else:
            layer.lower[5, 0] = 1e20   # every pivot 1, W singular to working precision
    inner = invlib.InvertibleSequential(layer, invlib.Asinh())
    net = invlib.InvertibleSequential(inner, invlib.InvertibleLinear(6).float())
    x = torch.randn(5, 6, dtype=torch.float32)
    loss = net(x).square().sum()
    with pytest.raises(ValueError, match="singular to working precision.*\n.*found in layer 0"):
        loss.backward()
    assert all(p.grad is None for p in net.parameters())


def test_row02_inner_container_check_inverse_checks_its_layers():
    inner = invlib.InvertibleSequential(invlib.InvertibleLinear(3), invlib.Asinh())
    with torch.no_grad():
        inner[0].weight.zero_()
    with pytest.raises(ValueError, match="singular"):
        inner.check_inverse()


# ---- 3. the context reaches nested containers ---------------------------------------------------

class _Conditioned(nn.Module):
    def __init__(self, half, width):
        super().__init__()
        self.linear = nn.Linear(half + width, half)

    def forward(self, h, c):
        return torch.tanh(self.linear(torch.cat([h, c], dim=1)))


@pytest.mark.parametrize("outer_conditional", [True, False])
def test_row03_context_reaches_conditional_layers_in_a_nested_container(outer_conditional):
    torch.manual_seed(3)
    inner_layers = [invlib.AdditiveCoupling(_Conditioned(2, 3), _Conditioned(2, 3)), invlib.LeakyReLU(0.5)]
    outer_first = (invlib.AdditiveCoupling(_Conditioned(2, 3), _Conditioned(2, 3)) if outer_conditional
                   else perturbed(invlib.InvertibleLinear(4)))
    twin = copy.deepcopy([outer_first, *inner_layers])
    net = invlib.InvertibleSequential(outer_first, invlib.InvertibleSequential(*inner_layers))
    x, c = torch.randn(5, 4), torch.randn(5, 3, requires_grad=True)
    c_ref = c.detach().clone().requires_grad_()
    y = net(x, c)
    y_ref = _plain(twin, x, c_ref)
    assert torch.equal(y.detach(), y_ref.detach())
    y.square().sum().backward()
    y_ref.square().sum().backward()
    _assert_same_grads(_grads([net]), _grads(twin), "nested conditional")
    torch.testing.assert_close(c.grad, c_ref.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.inverse(y.detach(), c.detach()), x, rtol=1e-9, atol=1e-10)


# ---- 4. module backward hooks on inner layers fire ----------------------------------------------

def _hooked_stack():
    torch.manual_seed(4)
    return [perturbed(invlib.InvertibleLinear(4)), invlib.LeakyReLU(0.5),
            invlib.AdditiveCoupling(_mlp(2), _mlp(2)), perturbed(invlib.LULinear(4)), invlib.Asinh()]


@pytest.mark.parametrize("which", ["full", "pre", "nested"])
def test_row04_module_backward_hooks_on_inner_layers_fire_as_in_the_plain_loop(which):
    layers = _hooked_stack()
    twin = copy.deepcopy(layers)
    seen = {"inv": [], "plain": []}

    def register(stack, tag):
        for i, layer in enumerate(stack):
            if which == "pre":
                layer.register_full_backward_pre_hook(
                    lambda m, g_out, i=i, tag=tag: (seen[tag].append(i), (g_out[0] * 0.1,))[1])
            else:
                layer.register_full_backward_hook(
                    lambda m, g_in, g_out, i=i, tag=tag: (seen[tag].append(i), (g_in[0] * 0.1,))[1])

    register(layers, "inv")
    register(twin, "plain")
    net = (invlib.InvertibleSequential(*layers) if which != "nested" else
           invlib.InvertibleSequential(*layers[:2], invlib.InvertibleSequential(*layers[2:])))
    x = torch.randn(6, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    net(x).square().sum().backward()
    _plain(twin, x_ref).square().sum().backward()
    assert seen["inv"] == seen["plain"] == [4, 3, 2, 1, 0]
    _assert_same_grads(_grads(layers), _grads(twin), f"{which} hooks")
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


def test_row04_hooks_on_the_container_itself_fire_once():
    layers = _hooked_stack()
    net = invlib.InvertibleSequential(*layers)
    calls = []
    net.register_full_backward_hook(lambda m, g_in, g_out: calls.append((g_in[0].shape, g_out[0].shape)))
    x = torch.randn(6, 4, requires_grad=True)
    net(x).square().sum().backward()
    assert calls == [(torch.Size([6, 4]), torch.Size([6, 4]))]


# ---- 5. a mode switch between forward and backward ----------------------------------------------

@pytest.mark.parametrize("switch", ["eval", "train"])
def test_row05_mode_switch_between_forward_and_backward_changes_nothing(switch):
    torch.manual_seed(5)

    def sub():
        return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.Tanh())

    layers = [invlib.AdditiveCoupling(sub(), sub()) for _ in range(3)]
    twin = copy.deepcopy(layers)
    start = "train" if switch == "eval" else "eval"
    for m in layers + twin:
        getattr(m, start)()
    x = torch.randn(16, 8)
    net = invlib.InvertibleSequential(*layers)
    torch.manual_seed(9)
    loss = net(x).square().sum()
    torch.manual_seed(9)
    loss_ref = _plain(twin, x).square().sum()
    for m in layers + twin:
        getattr(m, switch)()
    loss.backward()
    loss_ref.backward()
    _assert_same_grads(_grads(layers), _grads(twin), f"switch to {switch}")
    assert all(m.training == (switch == "train") for layer in layers for m in layer.modules())


# ---- 6. random numbers from generators other than torch's default ones -------------------------

class _OwnNoise(nn.Module):
    """Linear, then noise from an explicit torch.Generator."""

    def __init__(self, n, generator):
        super().__init__()
        self.lin, self.generator = nn.Linear(n, n), generator

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return torch.tanh(self.lin(x)) * (1 + 0.5 * noise)


def test_row06_an_explicit_generator_passed_in_is_replayed():
    torch.manual_seed(6)
    g_inv, g_ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    layers = [invlib.AdditiveCoupling(_OwnNoise(3, g_inv), _OwnNoise(3, g_inv)) for _ in range(3)]
    twin = copy.deepcopy(layers)
    for block in twin:
        block.F.generator = block.G.generator = g_ref
    net = invlib.InvertibleSequential(*layers, generators=[g_inv])
    x = torch.randn(5, 6)
    y = net(x)
    y_ref = _plain(twin, x)
    assert torch.equal(y.detach(), y_ref.detach())
    y.square().sum().backward()
    y_ref.square().sum().backward()
    _assert_same_grads(_grads(layers), _grads(twin), "explicit generator")
    assert torch.equal(g_inv.get_state(), g_ref.get_state()), "the reverse steps consumed the generator"


def test_row06_unreplayed_randomness_is_detected_not_silent():
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(11)

    class NumpyNoise(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            noise = torch.from_numpy(np.random.standard_normal(tuple(x.shape)))
            return torch.tanh(self.lin(x)) * (1 + 0.5 * noise)

    for make in (lambda: _OwnNoise(3, g), NumpyNoise):
        net = invlib.InvertibleSequential(*[invlib.AdditiveCoupling(make(), make()) for _ in range(3)])
        x = torch.randn(5, 6)
        loss = net(x).square().sum()
        with pytest.warns(invlib.ReconstructionWarning, match="rebuilt by the reverse sweep differs"):
            loss.backward()


# ---- 7. ELU near its asymptote is judged before the sweep ---------------------------------------

def _elu_stack(low):
    torch.manual_seed(7)
    lin = invlib.InvertibleLinear(4).float()
    net = invlib.InvertibleSequential(lin, invlib.ELU(), invlib.InvertibleLinear(4).float())
    x = torch.randn(8, 4, dtype=torch.float32)
    with torch.no_grad():   # the ELU's input: -1 everywhere, `low` in one entry
        pre = torch.full((8, 4), -1.0, dtype=torch.float32)
        pre[0, 0] = low
        x = torch.linalg.solve(lin.weight.detach(), (pre - lin.bias.detach()).T).T.contiguous()
    return net, x


def test_row07_elu_far_below_zero_warns_before_any_gradient():
    net, x = _elu_stack(-12.0)
    loss = net(x).square().sum()
    with pytest.warns(UserWarning, match="ELU.*badly conditioned"):
        loss.backward()


def test_row07_elu_beyond_working_precision_raises_before_any_gradient():
    net, x = _elu_stack(-16.2)
    loss = net(x).square().sum()
    with pytest.raises(ValueError, match="(?s)ELU: the inverse is singular.*found in layer 1 .* before backward handed"):
        loss.backward()
    assert all(p.grad is None for p in net.parameters())


def test_row07_elu_in_its_comfortable_range_is_silent(recwarn):
    net, x = _elu_stack(-3.0)
    net(x).square().sum().backward()
    assert not [w for w in recwarn if "ELU" in str(w.message)]


# ---- 8. an exactly singular weight raises ------------------------------------------------------

@pytest.mark.parametrize("where", ["inverse", "sequential"])
def test_row08_all_zero_weight_is_singular(where):
    layer = invlib.InvertibleLinear(3)
    with torch.no_grad():
        layer.weight.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a warning about "condition number nan" is not enough
        with pytest.raises(ValueError, match="singular"):
            if where == "inverse":
                layer.inverse(torch.randn(2, 3))
            else:
                net = invlib.InvertibleSequential(layer, invlib.Asinh(), invlib.InvertibleLinear(3))
                net(torch.randn(2, 3)).sum().backward()
    assert layer.weight.grad is None


def test_row08_zero_conv_kernel_is_singular():
    layer = invlib.CircularConv1d(2, 3)
    with torch.no_grad():
        layer.weight.zero_()
    with pytest.raises(ValueError, match="singular"):
        layer.inverse(torch.randn(2, 2, 6))


# ---- 9. two forwards before one backward ---------------------------------------------------------

@pytest.mark.parametrize("norm", ["batch", "spectral"])
def test_row09_two_forwards_then_backward_like_the_plain_loop(norm):
    torch.manual_seed(9)

    def sub():
        if norm == "batch":
            return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh())
        return nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3)), nn.Tanh())

    layers = [invlib.AdditiveCoupling(sub(), sub()) for _ in range(2)]
    twin = copy.deepcopy(layers)
    net = invlib.InvertibleSequential(*layers)
    a, b = torch.randn(8, 6), torch.randn(8, 6)
    loss = net(a).square().sum() + 0.5 * net(b).square().sum()
    loss_ref = _plain(twin, a).square().sum() + 0.5 * _plain(twin, b).square().sum()
    loss.backward()
    loss_ref.backward()
    _assert_same_grads(_grads(layers), _grads(twin), f"two views, {norm}")
    for p, q in zip(net.buffers(), (t for m in twin for t in m.buffers())):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# ---- 10. lazy modules ------------------------------------------------------------------------

def test_row10_lazy_modules_are_refused_at_forward_with_the_fix():
    torch.manual_seed(10)
    net = invlib.InvertibleSequential(invlib.AdditiveCoupling(nn.LazyLinear(3), nn.Linear(3, 3)),
                                      invlib.InvertibleLinear(6))
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="uninitialized.*torch.no_grad"):
        net(x)
    assert all(p.grad is None for p in net[1].parameters())
    with torch.no_grad():
        net(x)   # materialises the lazy parameters, as the message says
    twin = copy.deepcopy(list(net))
    net(x).square().sum().backward()
    _plain(twin, x).square().sum().backward()
    _assert_same_grads(_grads([net]), _grads(twin), "materialised lazy module")


# ---- 11. a sub-network that modifies its input in place ----------------------------------------

@pytest.mark.parametrize("sub", ["F", "G"])
def test_row11_inplace_subnetwork_is_refused_in_forward(sub):
    class ReluInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(torch.relu_(x))

    F, G = (ReluInPlace(), _mlp(3)) if sub == "F" else (_mlp(3), ReluInPlace())
    net = invlib.InvertibleSequential(invlib.InvertibleLinear(6), invlib.AdditiveCoupling(F, G),
                                      invlib.InvertibleLinear(6))
    with pytest.raises(ValueError, match=f"{sub} modified its input in place"):
        net(torch.randn(4, 6))


# ---- 12 and 13. memory flat in depth, random states included -----------------------------------

def test_row12_non_random_layers_store_no_random_state():
    net = invlib.InvertibleSequential(*[invlib.AdditiveCoupling(_mlp(8), _mlp(8)) for _ in range(4)])
    y = net(torch.randn(4, 16))
    relay = y.grad_fn.relay
    assert all(s.tape is None for s in relay.states)
    y.sum().backward()


def test_row12_the_tracker_counts_stored_random_states():
    """Two random states per block whose F and G both draw (the state before F, shared with the
    block's start, and the state before G), 5,056 bytes each on the CPU; none for the same
    blocks without dropout. The dispatch tracker sees them although torch makes them outside
    the dispatcher."""
    def kept(p):
        torch.manual_seed(0)
        sub = lambda: nn.Sequential(nn.Linear(8, 8), nn.Dropout(p))  # noqa: E731
        net = invlib.InvertibleSequential(*[invlib.AdditiveCoupling(sub(), sub()) for _ in range(3)])
        x = torch.randn(4, 16)
        with MemoryTracker() as mem:
            y = net(x)
            live = mem.live_bytes
        y.sum().backward()
        return live

    state = torch.get_rng_state().numel()
    assert kept(0.2) - kept(0.0) == 3 * 2 * state


@pytest.mark.parametrize("kind", ["dense", "lu", "coupling", "conv1d"])
@pytest.mark.parametrize("batch", [1, 256])
def test_row12_13_step_peak_is_flat_from_depth_4_to_64(kind, batch):
    def build(depth):
        torch.manual_seed(12)
        layers = []
        for _ in range(depth):
            if kind == "dense":
                layers += [invlib.InvertibleLinear(16), invlib.LeakyReLU(0.5)]
            elif kind == "lu":
                layers += [invlib.LULinear(16), invlib.LeakyReLU(0.5)]
            elif kind == "coupling":
                layers += [invlib.AdditiveCoupling(_mlp(8), _mlp(8))]
            else:
                layers += [invlib.CircularConv1d(4, 3), invlib.LeakyReLU(0.5)]
        return invlib.InvertibleSequential(*layers)

    x = torch.randn(batch, 4, 4) if kind == "conv1d" else torch.randn(batch, 16)
    activation = x.numel() * x.element_size()
    peaks = {}
    for depth in (4, 64):
        net = build(depth)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        with MemoryTracker() as mem:
            net(x).square().sum().backward()
        peaks[depth] = mem.peak_bytes
    assert peaks[64] - peaks[4] <= activation, f"{kind} B={batch}: peak {peaks} grows with depth"


# ---- the notes: forward hooks, fullgraph ------------------------------------------------------

def test_forward_hooks_of_subnetworks_fire_in_forward_and_in_the_reverse_step():
    F, G = _mlp(2), _mlp(2)
    calls = []
    F.register_forward_hook(lambda m, i, o: calls.append("F"))
    net = invlib.InvertibleSequential(invlib.AdditiveCoupling(F, G))
    y = net(torch.randn(3, 4))
    assert calls == ["F"]
    y.sum().backward()
    assert calls == ["F", "F"]   # documented: the reverse step evaluates F again
