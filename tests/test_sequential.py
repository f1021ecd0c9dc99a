"""InvertibleSequential against the plain loop: equal gradients and training, and measured memory."""

import copy
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import invlib
from conftest import perturbed

pytestmark = pytest.mark.usefixtures("float64")

DEPTHS = [1, 2, 5, 17, 33]




def _mlp(n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n, n), nn.LeakyReLU(0.2))


def _conv_net(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv1d(c, c, 3, padding=1, padding_mode="circular"), nn.Tanh())


# Each builder returns (list of layers for `depth` blocks, input). Slopes stay near 1: a deep stack
# of slope-0.01 LeakyReLUs is too ill-conditioned to invert in any precision (see LeakyReLU).
STACKS = {
    "dense+leaky": lambda d: (
        [m for _ in range(d) for m in (perturbed(invlib.InvertibleLinear(4)), invlib.LeakyReLU(0.5))],
        torch.randn(3, 4),
    ),
    "lu+asinh": lambda d: (
        [m for _ in range(d) for m in (perturbed(invlib.LULinear(4)), invlib.Asinh())],
        torch.randn(3, 4),
    ),
    "coupling": lambda d: ([invlib.AdditiveCoupling(_mlp(2), _mlp(2)) for _ in range(d)], torch.randn(3, 4)),
    # Tanh saves its output, so the reverse step must keep F(x2) and G(y1) alive for backward.
    "coupling+tanh": lambda d: (
        [invlib.AdditiveCoupling(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
         for _ in range(d)],
        torch.randn(3, 4),
    ),
    "conv1d+leaky": lambda d: (
        [m for _ in range(d) for m in (perturbed(invlib.CircularConv1d(2, 3)), invlib.LeakyReLU(0.5))],
        torch.randn(2, 2, 5),
    ),
    "conv2d+leaky": lambda d: (
        [m for _ in range(d) for m in (perturbed(invlib.CircularConv2d(2, 2)), invlib.LeakyReLU(0.5))],
        torch.randn(2, 2, 3, 3),
    ),
    "mixed": lambda d: ([_mixed_layer(i) for i in range(2 * d)], torch.randn(3, 4)),
    "mixed-conv": lambda d: ([_mixed_conv_layer(i) for i in range(2 * d)], torch.randn(2, 4, 5)),
}



def _mixed_layer(i: int) -> invlib.Invertible:
    kinds = [
        lambda: perturbed(invlib.InvertibleLinear(4)),
        lambda: invlib.LeakyReLU(0.5),
        lambda: invlib.AdditiveCoupling(_mlp(2), _mlp(2)),
        lambda: perturbed(invlib.LULinear(4)),
        lambda: invlib.ELU(),
        lambda: invlib.Asinh(),
    ]
    return kinds[i % len(kinds)]()


def _mixed_conv_layer(i: int) -> invlib.Invertible:
    kinds = [
        lambda: perturbed(invlib.CircularConv1d(4, 4)),
        lambda: invlib.Asinh(),
        lambda: invlib.AdditiveCoupling(_conv_net(2), _conv_net(2)),
        lambda: invlib.LeakyReLU(0.5),
    ]
    return kinds[i % len(kinds)]()


def _plain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _step(run, layers, x, y_bar):
    """One forward + backward; returns (output, input grad, parameter grads)."""
    y = run(layers, x)
    y.backward(y_bar)
    grads = [None if p.grad is None else p.grad.clone() for layer in layers for p in layer.parameters()]
    return y.detach(), x.grad, grads


def _assert_rel(actual, expected, tol, what):
    err = ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_gradients_equal_plain_backprop(stack, depth):
    layers, x = STACKS[stack](depth)
    net = invlib.InvertibleSequential(*layers)
    params = list(net.parameters())
    scenarios = [
        ("grads None", True, None),
        ("grads pre-existing", True, [torch.randn_like(p) for p in params]),
        ("input without grad", False, None),
    ]
    y_bar = None
    for name, input_grad, start in scenarios:
        results = []
        for run in (_plain, lambda _, t: net(t)):
            for i, p in enumerate(params):
                p.grad = None if start is None else start[i].clone()
            x_in = x.clone().requires_grad_(input_grad)
            if y_bar is None:
                y_bar = torch.randn_like(_plain(layers, x_in).detach())
            results.append(_step(run, layers, x_in, y_bar))
        (y_ref, x_bar_ref, g_ref), (y, x_bar, g) = results
        assert torch.equal(y, y_ref), "forward differs from the plain loop"
        if input_grad:
            _assert_rel(x_bar, x_bar_ref, 1e-9, f"{name}: input grad")
        else:
            assert x_bar is None and x_bar_ref is None
        for i, (a, b) in enumerate(zip(g, g_ref)):
            if start is not None:  # compare what the step added, not start + step
                a, b = a - start[i], b - start[i]
            _assert_rel(a, b, 1e-9, f"{name}: parameter {i} grad")


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_sgd_training_matches_plain_loop(stack):
    layers, x = STACKS[stack](5)
    net = invlib.InvertibleSequential(*layers)
    twin = copy.deepcopy(net)
    target = torch.randn_like(net(x))
    for model, run in ((net, lambda t: net(t)), (twin, lambda t: _plain(list(twin), t))):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            (run(x) - target).square().mean().backward()
            opt.step()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert (p - q).abs().max() <= 1e-12 * max(1.0, q.abs().max().item()), name


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_inverse_round_trip(stack):
    layers, x = STACKS[stack](5)
    net = invlib.InvertibleSequential(*layers)
    torch.testing.assert_close(net.inverse(net(x)), x, rtol=1e-10, atol=1e-10)


def test_sequence_protocol_and_nesting():
    layers, x = STACKS["mixed"](3)
    net = invlib.InvertibleSequential(*layers)
    assert len(net) == 6 and net[2] is layers[2] and list(net) == layers
    nested = invlib.InvertibleSequential(net[:3], net[3:])
    x_in = x.clone().requires_grad_()
    nested(x_in).square().sum().backward()
    ref = x.clone().requires_grad_()
    _plain(layers, ref).square().sum().backward()
    _assert_rel(x_in.grad, ref.grad, 1e-12, "nested input grad")


def test_no_grad_and_frozen_paths_run_plainly():
    layers, x = STACKS["coupling"](2)
    net = invlib.InvertibleSequential(*layers)
    with torch.no_grad():
        assert net(x.requires_grad_()).grad_fn is None
    net.requires_grad_(False)
    assert net(x.detach()).grad_fn is None
    assert invlib.InvertibleSequential()(x) is x


# ---- memory, measured ---------------------------------------------------------------------------


def _saved_bytes(fn):
    """Bytes autograd stores for backward while ``fn`` runs (every tensor passed to a pack hook)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


@pytest.mark.parametrize("stack", ["coupling", "dense+leaky", "conv2d+leaky"])
def test_forward_tapes_nothing_regardless_of_depth(stack):
    saved = {}
    for depth in (2, 16):
        layers, x = STACKS[stack](depth)
        net = invlib.InvertibleSequential(*layers)
        x.requires_grad_()
        saved[depth, "invertible"], y = _saved_bytes(lambda: net(x))
        saved[depth, "plain"], _ = _saved_bytes(lambda: _plain(layers, x))
        # Nothing goes through autograd's saved-tensor mechanism: the one tensor kept, the output,
        # is held outside the tape so backward can release it (the storage tests below see it).
        assert saved[depth, "invertible"] == 0
    assert saved[16, "plain"] >= 6 * saved[2, "plain"] > 0  # the baseline grows ~linearly in depth


class _StorageTracker(TorchDispatchMode):
    """Records every storage an op allocates and can report which are still alive (and their bytes)."""

    def __init__(self):
        super().__init__()
        self.storages = []
        self.peak = 0
        self.exclude = lambda: set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            s = t.untyped_storage()
            if s.data_ptr() not in inputs and s.nbytes() > 0:
                self.storages.append(weakref.ref(s))
        self.peak = max(self.peak, self.alive_bytes())
        return out

    def alive_bytes(self):
        excluded = self.exclude()
        alive = {s.data_ptr(): s.nbytes() for s in (r() for r in self.storages) if s is not None}
        return sum(n for ptr, n in alive.items() if ptr not in excluded)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


@pytest.mark.parametrize("stack", ["coupling", "dense+leaky"])
def test_no_intermediate_activation_survives_forward(stack):
    layers, x = STACKS[stack](8)
    net = invlib.InvertibleSequential(*layers)
    x.requires_grad_()
    with _StorageTracker() as tracker:
        y = net(x)
    assert tracker.alive_bytes() == y.untyped_storage().nbytes()
    with _StorageTracker() as tracker:
        y = _plain(layers, x)
    assert tracker.alive_bytes() >= 8 * y.untyped_storage().nbytes()  # the baseline keeps them


def _peak_activation_bytes(run, layers, x):
    """Peak bytes of live storages allocated during one step, not counting parameter gradients."""
    params = [p for layer in layers for p in layer.parameters()]
    for p in params:
        p.grad = None
    with _StorageTracker() as tracker:
        tracker.exclude = lambda: {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
        run(layers, x).square().sum().backward()
    return tracker.peak


def test_step_peak_memory_is_constant_in_depth():
    """Whole-step peak (forward + backward) above the parameter gradients: flat in depth."""
    peaks = {}
    for depth in (4, 32):
        layers, _ = STACKS["coupling"](depth)
        x = torch.randn(64, 4, requires_grad=True)  # a batch large enough that activations dominate
        net = invlib.InvertibleSequential(*layers)
        peaks[depth, "invertible"] = _peak_activation_bytes(lambda _, t: net(t), layers, x)
        peaks[depth, "plain"] = _peak_activation_bytes(_plain, layers, x)
    assert peaks[32, "invertible"] == peaks[4, "invertible"]
    assert peaks[32, "plain"] >= 4 * peaks[4, "plain"]


def test_second_backward_and_inplace_modified_output_are_refused():
    layers, x = STACKS["coupling"](3)
    net = invlib.InvertibleSequential(*layers)
    x = x.requires_grad_()
    y = net(x)
    loss = y.square().sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    y = net(x)
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_output_held_by_the_caller_is_untouched_by_backward():
    layers, x = STACKS["coupling"](4)
    net = invlib.InvertibleSequential(*layers)
    y = net(x.requires_grad_())
    before = y.detach().clone()
    y.square().sum().backward()
    assert torch.equal(y.detach(), before)


# ---- contract cases found in review: sub-networks that alias, nest, or carry state ---------------

def _grads(layers, x, invertible):
    """Input and parameter gradients of sum(y^2) through the plain loop or InvertibleSequential."""
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = invlib.InvertibleSequential(*layers)(x) if invertible else _plain(layers, x)
    y.square().sum().backward()
    return [x.grad] + [p.grad for layer in layers for p in layer.parameters()]


def _identity_coupling_stacks():
    torch.manual_seed(5)
    lin = lambda: nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.3))
    nested = lambda: invlib.InvertibleSequential(invlib.InvertibleLinear(2), invlib.LeakyReLU(0.5))
    return {
        "F identity": [invlib.AdditiveCoupling(nn.Identity(), lin()) for _ in range(3)],
        "G identity": [invlib.AdditiveCoupling(lin(), nn.Identity()) for _ in range(3)],
        "F, G nested InvertibleSequential": [invlib.AdditiveCoupling(nested(), nested()) for _ in range(3)],
    }


@pytest.mark.parametrize("name", sorted(_identity_coupling_stacks()))
def test_couplings_whose_subnetworks_alias_or_nest_match_plain(name):
    layers = _identity_coupling_stacks()[name]
    layers = [layer.double() for layer in layers]
    x = torch.randn(3, 4, dtype=torch.float64)
    got, expected = _grads(layers, x, invertible=True), _grads(layers, x, invertible=False)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_identity_layer_with_generic_reverse_leaves_the_callers_output_alone():
    class Identity(invlib.Invertible):
        def forward(self, x):
            return x * 1.0

        def inverse(self, y):
            return y

    net = invlib.InvertibleSequential(invlib.LeakyReLU(0.5), Identity(), Identity())
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = net(x)
    before = y.detach().clone()
    y.square().sum().backward()
    assert torch.equal(y.detach(), before)
    torch.testing.assert_close(x.grad, 2 * F.leaky_relu(x, 0.5) * torch.where(x > 0, 1.0, 0.5).double())
