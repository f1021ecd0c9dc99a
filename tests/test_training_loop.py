"""InvertibleSequential in an ordinary training loop: every way a user reaches a gradient gives the
plain loop's gradient (DDP, hooks, parametrize, functional_call, autograd.grad, backward(inputs=)),
and what cannot be supported raises instead of training on a wrong one."""

import copy
import functools

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import invlib
from invlib.compare import mixed_net
from invlib.distributed import MODES, ddp_agreement

pytestmark = pytest.mark.usefixtures("float64")

TOL = 1e-9


def _nets():
    """The same parameters twice: InvertibleSequential, and the plain loop over its own copy."""
    return mixed_net(8), mixed_net(8, invertible=False)


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)


def _loss(net, x, target):
    return (net(x) - target).square().mean()


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _assert_grads_equal(got, want, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None, f"{what}: gradient {i} is missing"
        assert _rel(a, b) <= TOL, f"{what}: gradient {i} differs by {_rel(a, b):.1e}"


def test_mixed_nets_are_the_same_function():
    (net, plain), (x, _) = _nets(), _data()
    assert len(list(net.parameters())) == 22
    assert torch.equal(net(x), plain(x))


def test_ddp_trains_exactly_like_one_process_in_every_mode():
    x, target = _data()
    worst = ddp_agreement(functools.partial(mixed_net, 8), x, target, steps=3)
    assert set(worst) == set(MODES)
    for mode, difference in worst.items():
        assert difference <= 1e-12, f"DDP {mode}: parameters differ from one process by {difference:.1e}"


@pytest.mark.parametrize("kind", ["tensor hook", "post-accumulate hook"])
def test_every_parameter_hook_fires_once_with_the_plain_gradient(kind):
    x, target = _data()
    seen = {}
    for name, net in zip(("invertible", "plain"), _nets()):
        calls = seen[name] = {}
        for i, p in enumerate(net.parameters()):
            if kind == "tensor hook":
                p.register_hook(lambda g, i=i, calls=calls: calls.setdefault(i, []).append(g.clone()))
            else:
                p.register_post_accumulate_grad_hook(
                    lambda p, i=i, calls=calls: calls.setdefault(i, []).append(p.grad.clone()))
        _loss(net, x, target).backward()
    assert sorted(seen["invertible"]) == list(range(22))
    assert all(len(v) == 1 for v in seen["invertible"].values()), "a hook fired more than once"
    _assert_grads_equal([seen["invertible"][i][0] for i in range(22)],
                        [seen["plain"][i][0] for i in range(22)], kind)


def test_a_gradient_rescaling_hook_rescales_every_parameter():
    (net, plain), (x, target) = _nets(), _data()
    for p in net.parameters():
        p.register_hook(lambda g: 0.5 * g)
    _loss(net, x, target).backward()
    _loss(plain, x, target).backward()
    _assert_grads_equal([p.grad for p in net.parameters()], [0.5 * p.grad for p in plain.parameters()], "hook")


def test_autograd_grad_and_backward_inputs_see_the_parameters():
    (net, plain), (x, target) = _nets(), _data()
    params, plain_params = list(net.parameters()), list(plain.parameters())
    want = torch.autograd.grad(_loss(plain, x, target), plain_params)
    _assert_grads_equal(torch.autograd.grad(_loss(net, x, target), params), want, "autograd.grad")
    got = torch.autograd.grad(_loss(net, x, target), params, allow_unused=True)
    _assert_grads_equal(got, want, "autograd.grad(allow_unused=True)")
    assert all(p.grad is None for p in params), "autograd.grad must not write .grad"

    subset = params[::3]
    _loss(net, x, target).backward(inputs=subset)
    _assert_grads_equal([p.grad for p in subset], want[::3], "backward(inputs=...)")
    assert all(p.grad is None for i, p in enumerate(params) if i % 3), "backward(inputs=) wrote other .grad"


def test_input_gradient_alone_leaves_the_parameters_alone():
    (net, plain), (x, target) = _nets(), _data()
    (got,) = torch.autograd.grad(_loss(net, x.requires_grad_(), target), x)
    (want,) = torch.autograd.grad(_loss(plain, x, target), x)
    _assert_grads_equal([got], [want], "input gradient")
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("where", ["InvertibleLinear.weight: orthogonal", "InvertibleLinear.weight: weight_norm",
                                   "Linear inside F: weight_norm", "LULinear.bias: custom"])
def test_parametrized_weights_train(where):
    (net, plain), (x, target) = _nets(), _data()
    for model in (net, plain):
        layers = list(model)
        if where == "InvertibleLinear.weight: orthogonal":
            parametrizations.orthogonal(layers[0], "weight")
        elif where == "InvertibleLinear.weight: weight_norm":
            parametrizations.weight_norm(layers[0], "weight")
        elif where == "Linear inside F: weight_norm":
            parametrizations.weight_norm(layers[2].F[0], "weight")
        else:
            parametrize.register_parametrization(layers[3], "bias", _Scale(1.5))
    assert torch.equal(net(x), plain(x))
    _loss(net, x, target).backward()
    _loss(plain, x, target).backward()
    originals = [(n, p) for n, p in net.named_parameters() if "original" in n]
    assert originals, "the parametrisation was not applied"
    _assert_grads_equal([p.grad for _, p in net.named_parameters()], [p.grad for p in plain.parameters()], where)


class _Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, t):
        return self.factor * t


def test_functional_call_differentiates_the_tensors_passed_in():
    (net, _), (x, target) = _nets(), _data()
    g = torch.Generator().manual_seed(7)
    new = {k: (v.detach() + 0.05 * torch.randn(v.shape, generator=g)).requires_grad_()
           for k, v in net.named_parameters()}
    x = x.requires_grad_()
    _loss(lambda t: torch.func.functional_call(net, new, (t,)), x, target).backward()

    twin = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in twin.named_parameters():
            p.copy_(new[k])
    x_ref = x.detach().requires_grad_()
    out = x_ref
    for layer in twin:
        out = layer(out)
    (out - target).square().mean().backward()
    _assert_grads_equal([x.grad], [x_ref.grad], "input")
    _assert_grads_equal([new[k].grad for k, _ in twin.named_parameters()],
                        [p.grad for p in twin.parameters()], "functional_call")
    assert all(p.grad is None for p in net.parameters()), "the module's own parameters got gradients"


def test_functional_call_over_parametrize_original():
    (net, plain), (x, target) = _nets(), _data()
    for model in (net, plain):
        parametrizations.weight_norm(list(model)[0], "weight")
    key = "layers.0.parametrizations.weight.original1"
    new = {key: (dict(net.named_parameters())[key].detach() * 1.1).requires_grad_()}
    _loss(lambda t: torch.func.functional_call(net, new, (t,)), x, target).backward()
    ref = {key.removeprefix("layers."): new[key].detach().clone().requires_grad_()}
    _loss(lambda t: torch.func.functional_call(plain, ref, (t,)), x, target).backward()
    _assert_grads_equal([new[key].grad], [next(iter(ref.values())).grad], "functional_call of original")


@pytest.mark.parametrize("change", ["add_", "optimizer step"])
def test_parameter_changed_in_place_before_backward_raises(change):
    (net, plain), (x, target) = _nets(), _data()
    x.requires_grad_()  # so that plain autograd saves the weight (for the input gradient) and checks it
    for model in (net, plain):
        loss = _loss(model, x, target)
        if change == "add_":
            with torch.no_grad():
                list(model)[0].weight.add_(0.1)
        else:
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            torch.optim.SGD(model.parameters(), lr=0.1).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_gradient_accumulation_over_micro_batches_matches_one_batch():
    (net, plain), (x, target) = _nets(), _data()
    for xs, ts in zip(x.chunk(2), target.chunk(2)):
        (_loss(net, xs, ts) / 2).backward()
    _loss(plain, x, target).backward()
    _assert_grads_equal([p.grad for p in net.parameters()], [p.grad for p in plain.parameters()], "accumulation")


def test_checkpointed_head_after_an_invertible_stack():
    (net, plain), (x, target) = _nets(), _data()
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    twin_head = copy.deepcopy(head)
    y = torch.utils.checkpoint.checkpoint(head, net(x), use_reentrant=False)
    (y - target).square().mean().backward()
    (twin_head(plain(x)) - target).square().mean().backward()
    _assert_grads_equal([p.grad for p in [*net.parameters(), *head.parameters()]],
                        [p.grad for p in [*plain.parameters(), *twin_head.parameters()]], "checkpointed head")


def test_frozen_prefix_is_not_reversed():
    """Layers before the first one that needs a gradient are not inverted in backward."""
    (net, plain), (x, target) = _nets(), _data()
    calls = []
    for model in (net, plain):
        for layer in list(model)[:3]:
            layer.requires_grad_(False)
    for layer in list(net)[:3]:
        layer.reverse = functools.partial(lambda *a, **k: calls.append(1))
    _loss(net, x, target).backward()
    _loss(plain, x, target).backward()
    assert not calls
    _assert_grads_equal([p.grad for p in net.parameters() if p.requires_grad],
                        [p.grad for p in plain.parameters() if p.requires_grad], "frozen prefix")


def test_torch_compile_gives_the_plain_gradients():
    (net, plain), (x, target) = _nets(), _data()
    _loss(torch.compile(net, backend="aot_eager"), x, target).backward()
    _loss(plain, x, target).backward()
    _assert_grads_equal([p.grad for p in net.parameters()], [p.grad for p in plain.parameters()], "compile")


@pytest.mark.parametrize("transform", ["grad", "vjp", "vmap"])
def test_torch_func_transforms_raise_a_clear_error(transform):
    (net, _), (x, _) = _nets(), _data()
    params = {k: v.detach() for k, v in net.named_parameters()}
    run = lambda p: torch.func.functional_call(net, p, (x,)).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match="torch.func transforms .* are not supported"):
        if transform == "grad":
            torch.func.grad(run)(params)
        elif transform == "vjp":
            torch.func.vjp(run, params)
        else:
            torch.func.vmap(lambda t: net(t.unsqueeze(0)))(x)



@pytest.mark.parametrize("layer", [0, 3])
def test_a_singular_weight_is_reported_before_any_gradient_is_written(layer):
    (net, _), (x, target) = _nets(), _data()
    with torch.no_grad():
        if layer == 0:
            net[0].weight[1] = net[0].weight[0]       # two equal rows
        else:
            net[3].lower[5, 0] = 1e20                 # pivots all fine, W singular to working precision
    loss = _loss(net, x, target)
    with pytest.raises(ValueError, match=f"found in layer {layer} .* before backward handed any gradient"):
        loss.backward()
    assert all(p.grad is None for p in net.parameters())


def test_a_parameter_changed_anywhere_is_reported_before_any_gradient_is_written():
    (net, _), (x, target) = _nets(), _data()
    loss = _loss(net, x.requires_grad_(), target)
    with torch.no_grad():
        net[0].weight.add_(0.1)
    with pytest.raises(RuntimeError, match="layer 0 .* modified by an inplace operation"):
        loss.backward()
    assert all(p.grad is None for p in net.parameters())


class _Conditioned(nn.Module):
    """A residual function of a half and a context: Linear(cat(h, c)) + tanh."""

    def __init__(self, half, width):
        super().__init__()
        self.linear = nn.Linear(half + width, half)

    def forward(self, h, c):
        return torch.tanh(self.linear(torch.cat([h, c], dim=1)))


def test_conditional_coupling_gradients_reach_the_context_producer():
    torch.manual_seed(4)
    layers = [m for _ in range(3) for m in (invlib.AdditiveCoupling(_Conditioned(4, 5), _Conditioned(4, 5)),
                                             invlib.LeakyReLU(0.5))]
    encoder = nn.Linear(3, 5)
    twin_layers, twin_encoder = copy.deepcopy(layers), copy.deepcopy(encoder)
    x, z, target = torch.randn(6, 8), torch.randn(6, 3), torch.randn(6, 8)
    net = invlib.InvertibleSequential(*layers)

    c = encoder(z)
    y = net(x, c)
    ((y - target).square().mean() + c.square().mean()).backward()  # the context feeds the loss too

    c_ref = twin_encoder(z)
    y_ref = x
    for layer in twin_layers:
        y_ref = layer(y_ref, c_ref) if layer.takes_context else layer(y_ref)
    ((y_ref - target).square().mean() + c_ref.square().mean()).backward()

    assert torch.equal(y.detach(), y_ref.detach())
    got = [p.grad for p in [*encoder.parameters(), *net.parameters()]]
    want = [p.grad for m in [twin_encoder, *twin_layers] for p in m.parameters()]
    _assert_grads_equal(got, want, "conditional coupling")
    torch.testing.assert_close(net.inverse(y.detach(), c.detach()), x, rtol=1e-10, atol=1e-10)


def test_a_context_without_conditional_layers_is_refused():
    net = invlib.InvertibleSequential(invlib.LeakyReLU(0.5))
    with pytest.raises(ValueError, match="no layer takes one"):
        net(torch.randn(2, 2), torch.randn(2, 2))
