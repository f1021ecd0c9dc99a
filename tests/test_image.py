"""Image models: squeeze, invertible 1x1 convolution, conv couplings with batch norm, and the
ResNet / RevNet / i-RevNet classifiers against MemCNN's shapes and the memory model."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import invlib
from invlib import image_nets as nets
from invlib.costs import image_memory
from invlib.memory import MemoryTracker


# ---- layers against independent references ------------------------------------------------------

def test_squeeze_matches_a_reshape_of_patches():
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    b, c, h, w = x.shape
    expected = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
    torch.testing.assert_close(invlib.Squeeze2d()(x), expected, rtol=0, atol=0)
    assert torch.equal(invlib.Squeeze2d().inverse(expected), x)
    y3 = invlib.Squeeze2d(3)(torch.randn(1, 2, 6, 9))
    assert y3.shape == (1, 18, 2, 3)


def test_conv1x1_is_a_1x1_convolution_and_lulinear_per_pixel():
    torch.manual_seed(0)
    layer = invlib.InvertibleConv1x1(5, bias=True).double()
    with torch.no_grad():
        layer.bias.normal_()
        layer.lower.add_(0.1 * torch.randn_like(layer.lower))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    conv = nn.Conv2d(5, 5, 1).double()
    with torch.no_grad():
        conv.weight.copy_(layer.weight.detach()[:, :, None, None])
        conv.bias.copy_(layer.bias.detach())
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-13, atol=1e-13)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 5)
    dense = invlib.LULinear(5).double()
    dense.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x).permute(0, 2, 3, 1).reshape(-1, 5), dense(rows), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=0, atol=1e-13)


# ---- bad input gets a clear error -----------------------------------------------------------------

def test_squeeze_and_conv1x1_refuse_bad_input():
    with pytest.raises(ValueError, match="divisible by factor=2"):
        invlib.Squeeze2d()(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="multiple of factor"):
        invlib.Squeeze2d().inverse(torch.randn(1, 6, 2, 2))
    with pytest.raises(ValueError, match=r"\(batch, C, H, W\)"):
        invlib.Squeeze2d()(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="positive int"):
        invlib.Squeeze2d(0)
    layer = invlib.InvertibleConv1x1(4)
    with pytest.raises(ValueError, match="C=4"):
        layer(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="C=4"):
        layer(torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating dtype"):
        layer(torch.ones(1, 4, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="float64"):
        layer(torch.randn(1, 4, 2, 2, dtype=torch.float64))
    with torch.no_grad():
        layer.log_s[1] = -float("inf")
    with pytest.raises(ValueError, match="singular"):
        layer(torch.randn(1, 4, 2, 2))


def test_badly_conditioned_conv1x1_is_refused_before_any_gradient():
    torch.manual_seed(0)
    layer = invlib.InvertibleConv1x1(6)
    with torch.no_grad():
        layer.lower.copy_(torch.tril(torch.full((6, 6), 1e4), -1))  # cond(W) ~ 1e20 in float32
    net = invlib.InvertibleSequential(layer)
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="InvertibleConv1x1|singular|condition"):
        net(x).sum().backward()
    assert layer.lower.grad is None


# ---- conv couplings with batch norm at image shapes ------------------------------------------------

def _branch(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 3, padding=1, bias=False),
                         nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, c, 3, padding=1))


def test_conv_couplings_with_batch_norm_match_plain_autograd_and_update_statistics_once():
    torch.manual_seed(0)
    layers = [invlib.Squeeze2d(), invlib.InvertibleConv1x1(8)]
    layers += [invlib.AdditiveCoupling(_branch(4), _branch(4)) for _ in range(3)]
    net = invlib.InvertibleSequential(*layers).double()
    twin = copy.deepcopy(net)
    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    w = torch.randn(4, 8, 8, 8, dtype=torch.float64)
    (net(x) * w).sum().backward()
    h = x
    for layer in twin:
        h = layer(h)
    (h * w).sum().backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-11, msg=name)
    for (name, b), c in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-13, atol=1e-14, msg=name)  # running stats: one update each


# ---- the networks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(nets.SPECS))
def test_networks_have_memcnns_parameter_counts_and_depths(name):
    model = nets.build(name)
    assert nets.count_parameters(model) == nets.MEMCNN_TABLE[name]["parameters"]
    assert nets.SPECS[name].depth == int(name.split("-")[1])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("make", [
    lambda: nets.build(nets.Spec("revnet", False, (2, 2, 2), (8, 8, 16, 24))),
    lambda: nets.build(nets.Spec("revnet", True, (2, 2, 2), (8, 8, 8, 8))),
    lambda: nets.irevnet((2, 1, 2), hidden=(8, 8, 8)),
], ids=["revnet-basic", "revnet-bottleneck", "irevnet"])
def test_invertible_image_models_match_plain_and_checkpointed_gradients_in_float64(make):
    torch.manual_seed(1)
    models = {m: make().double() for m in nets.METHODS}  # same seed: same weights
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([1, 0, 7])
    grads = {}
    for method, model in models.items():
        F.cross_entropy(nets.forward_by(model, method)(x), target).backward()
        grads[method] = [p.grad for p in model.parameters()]
    for method in ("plain", "checkpoint"):
        for a, b in zip(grads["invertible"], grads[method]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # one update of the running statistics each, as plain autograd (checkpointing runs the
    # forward of every segment twice and updates them twice, so it is not compared)
    for b, c in zip(models["invertible"].buffers(), models["plain"].buffers()):
        torch.testing.assert_close(b, c, rtol=1e-13, atol=1e-14)


def test_forward_by_refuses_unknown_methods_and_builders_refuse_wrong_kinds():
    with pytest.raises(ValueError, match="method must be one of"):
        nets.forward_by(nn.Sequential(), "recompute")
    with pytest.raises(ValueError, match="irevnet"):
        nets.build(nets.Spec("irevnet", False, (1, 1, 1), (4, 4, 4, 4)))


# ---- memory: the model is what autograd keeps -------------------------------------------------------

def _kept(model: nn.Module, batch: int, size: int, method: str = "invertible") -> tuple[int, int]:
    torch.manual_seed(2)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 10, (batch,))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    forward = nets.forward_by(model, method)
    with MemoryTracker() as tracker:
        loss = F.cross_entropy(forward(x), target)
        kept = tracker.live_bytes
        loss.backward()
    return kept, tracker.peak_bytes


@pytest.mark.parametrize("spec", [
    nets.SPECS["ResNet-32"], nets.SPECS["RevNet-38"], nets.Spec("revnet", True, (2, 2, 2), (8, 8, 8, 8)),
    nets.Spec("resnet", True, (2, 2, 2), (8, 8, 16, 32)), nets.irevnet_spec(2, hidden=(8, 8, 8)),
], ids=["resnet32", "revnet38", "revnet-bottleneck", "resnet-bottleneck", "irevnet"])
@pytest.mark.parametrize("size", [16, 32])
def test_memory_model_counts_what_a_step_keeps_per_image(spec, size):
    model = nets.irevnet(2, hidden=(8, 8, 8)) if spec.kind == "irevnet" else nets.build(spec)
    (k2, _), (k4, _) = _kept(model, 2, size), _kept(model, 4, size)
    per_image = (k4 - k2) / 2 / 4
    predicted = image_memory(spec, size)
    assert per_image == predicted.per_image  # exact: what the loss keeps is counted in the head
    assert abs(k2 - predicted.bytes(2)) <= 16  # up to the loss's scalars


def test_plain_run_of_a_revnet_keeps_what_the_resnet_rules_predict():
    spec = nets.Spec("revnet", False, (3, 3, 3), (8, 8, 16, 16))
    as_resnet = nets.Spec("resnet", False, (3, 3, 3), (8, 8, 16, 16))
    model = nets.build(spec)
    (k2, _), (k4, _) = _kept(model, 2, 16, "plain"), _kept(model, 4, 16, "plain")
    invertible = image_memory(spec, 16).per_image
    assert (k4 - k2) / 8 > 2 * invertible  # the invertible stages are what the RevNet saves
    assert image_memory(as_resnet, 16).per_image > 2 * invertible


def test_irevnet_memory_does_not_grow_with_depth():
    peaks, kept = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for blocks in (1, 4, 8):
            k, p = _kept(nets.irevnet(blocks, hidden=(8, 8, 8)), 8, 16)
            kept.append(k)
            peaks.append(p)
    # what grows is the replay record of each layer (batch-norm buffers as they were before the
    # forward), a few hundred bytes per coupling at these widths, whatever the batch: less than one
    # activation here
    one_activation = 8 * 3 * 16 * 16 * 4
    assert max(kept) - min(kept) < one_activation
    assert max(peaks) - min(peaks) < one_activation
