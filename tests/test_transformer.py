"""Reversible transformers: coupling along the features, exact gradients against the same blocks
run by plain autograd and by checkpointing, dropout replay, DDP, autocast, and flat memory."""


import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import invlib
from invlib import transformer as T
from invlib.distributed import MODES, ddp_agreement
from invlib.memory import MemoryTracker


# ---- coupling along the last dimension -----------------------------------------------------------

def test_coupling_splits_the_dimension_it_is_given():
    torch.manual_seed(0)
    f, g = nn.Linear(3, 3).double(), nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    y = invlib.AdditiveCoupling(f, g, dim=-1)(x)
    x1, x2 = x[..., :3], x[..., 3:]
    y1 = x1 + f(x2)
    torch.testing.assert_close(y, torch.cat([y1, x2 + g(y1)], -1), rtol=0, atol=0)
    for dim in (-1, 2):
        layer = invlib.AdditiveCoupling(f, g, dim=dim)
        torch.testing.assert_close(layer.inverse(layer(x)), x, rtol=0, atol=1e-14)
        x_leaf = x.clone().requires_grad_()
        out = layer(x_leaf)
        y_bar = torch.randn_like(out)
        out.backward(y_bar)
        rebuilt, x_bar = layer.reverse(out.detach(), y_bar)
        torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-14)
        torch.testing.assert_close(x_bar, x_leaf.grad, rtol=1e-13, atol=1e-14)


def test_coupling_refuses_a_dimension_it_cannot_split():
    f = nn.Identity()
    with pytest.raises(ValueError, match="non-zero int"):
        invlib.AdditiveCoupling(f, f, dim=0)
    with pytest.raises(ValueError, match="even size along dim -1"):
        invlib.AdditiveCoupling(f, f, dim=-1)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="no dimension 3"):
        invlib.AdditiveCoupling(f, f, dim=3)(torch.randn(2, 4, 6))


# ---- the models ---------------------------------------------------------------------------------

def _vit(reversible, dropout=0.1):
    return T.vit(width=16, depth=3, heads=2, image=8, patch=4, channels=1, classes=5, reversible=reversible,
                 dropout=dropout).double()


def _lm(reversible, dropout=0.1):
    return T.causal_lm(vocabulary=11, length=9, width=16, depth=3, heads=2, reversible=reversible,
                       dropout=dropout).double()


def _batch(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        return torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (4,), generator=g)
    return torch.randint(0, 11, (4, 9), generator=g), torch.randint(0, 11, (4, 9), generator=g)


def _loss(model, x, target):
    out = model(x)
    return F.cross_entropy(out.flatten(0, -2) if out.ndim == 3 else out, target.flatten())


@pytest.mark.parametrize("kind", ["vit", "lm"])
def test_reversible_gradients_equal_plain_and_checkpointed_with_dropout(kind):
    make = _vit if kind == "vit" else _lm
    x, target = _batch(kind)
    grads = {}
    for method in T.METHODS:
        model = make(True)
        model.method = method
        torch.manual_seed(7)  # the same dropout masks for every method
        _loss(model, x, target).backward()
        grads[method] = [p.grad for p in model.parameters()]
    for method in ("plain", "checkpoint"):
        for a, b in zip(grads["invertible"], grads[method], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [_vit, _lm], ids=["vit", "lm"])
def test_both_forms_have_the_same_parameters_and_the_ordinary_one_refuses_inversion(make):
    rev, ordinary = make(True), make(False)
    assert [p.shape for p in rev.parameters()] == [p.shape for p in ordinary.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(rev.parameters(), ordinary.parameters()))
    ordinary.method = "invertible"
    x, _ = _batch("vit" if make is _vit else "lm")
    with pytest.raises(ValueError, match="needs a reversible stack"):
        ordinary(x)
    with pytest.raises(ValueError, match="method must be one of"):
        T.run_blocks(rev.blocks, torch.zeros(1), "recompute")


def test_causal_attention_does_not_look_ahead():
    model = _lm(True, dropout=0.0).eval()
    x, _ = _batch("lm")
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :5], model(changed)[:, :5], rtol=0, atol=1e-13)


def _ddp_model():
    return nn.Sequential(nn.Unflatten(1, (4, 6)), _SequenceModel())


class _SequenceModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stack = T.blocks(6, 2, 2, reversible=True)

    def forward(self, x):
        return self.stack(torch.cat([x, x], -1)).flatten(1)[:, :8]


def test_ddp_trains_a_reversible_stack_exactly_like_one_process():
    g = torch.Generator().manual_seed(3)
    x, target = torch.randn(16, 24, generator=g), torch.randn(16, 8, generator=g)
    worst = ddp_agreement(_ddp_model, x, target, steps=2)
    assert set(worst) == set(MODES)
    assert max(worst.values()) <= 1e-5  # float32: each rank rebuilds its own activations


def test_autocast_error_of_the_reversible_stack_is_close_to_the_plain_loops():
    torch.manual_seed(0)
    model = T.causal_lm(vocabulary=32, length=16, width=32, depth=4, heads=4, reversible=True)
    x = torch.randint(0, 32, (64, 16))
    target = torch.randint(0, 32, (64, 16))
    reference = model.double()
    reference.method = "plain"
    _loss(reference, x, target).backward()
    exact = [p.grad.clone() for p in reference.parameters()]
    model = model.float()
    errors = {}
    for method in ("invertible", "plain"):
        model.zero_grad(set_to_none=True)
        model.method = method
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, target)
        loss.backward()
        errors[method] = max(((p.grad.double() - e).norm() / e.norm()).item()
                             for p, e in zip(model.parameters(), exact))
    assert errors["plain"] > 1e-4  # autocast really ran in bfloat16
    assert errors["invertible"] <= 2 * errors["plain"], errors


def test_reversible_memory_is_flat_in_depth_and_plain_grows():
    x = torch.randint(0, 32, (2, 128))
    target = torch.randint(0, 32, (2, 128))
    peaks = {}
    for depth in (2, 6):
        model = T.causal_lm(vocabulary=32, length=128, width=32, depth=depth, heads=4, reversible=True)
        for method in ("invertible", "plain"):
            model.method = method
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), MemoryTracker() as tracker:
                _loss(model, x, target).backward()
            peaks[method, depth] = tracker.peak_bytes
    token_bytes = 2 * 128 * 2 * 32 * 4  # one (batch, tokens, 2 width) activation
    assert abs(peaks["invertible", 6] - peaks["invertible", 2]) < token_bytes
    assert peaks["plain", 6] - peaks["plain", 2] > 4 * 4 * token_bytes


@pytest.mark.parametrize("kernel", ["flash", "math"])
@pytest.mark.parametrize("method", invlib.costs.TRANSFORMER_METHODS)
@pytest.mark.parametrize("kind", ["lm", "vit"])
def test_memory_model_counts_what_a_step_keeps(kind, method, kernel):
    from invlib.costs import transformer_memory

    depth, width, heads = 3, 32, 4
    if kind == "lm":
        model = T.causal_lm(vocabulary=16, length=24, width=width, depth=depth, heads=heads,
                            reversible=method == "invertible")
        make = lambda b: (torch.randint(0, 16, (b, 24)), torch.randint(0, 16, (b, 24)))  # noqa: E731
        tokens, outputs = 24, 16
    else:
        model = T.vit(width=width, depth=depth, heads=heads, image=16, patch=4, channels=1, classes=5,
                      reversible=method == "invertible")
        make = lambda b: (torch.randn(b, 1, 16, 16), torch.randint(0, 5, (b,)))  # noqa: E731
        tokens, outputs = 17, 5
    model.method = "checkpoint" if method == "checkpoint" else model.method
    kept = []
    for batch in (2, 3):  # the math kernel keeps other tensors at a batch of one
        x, target = make(batch)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION if kernel == "flash" else SDPBackend.MATH), \
                MemoryTracker() as tracker:
            _loss(model, x, target)
            kept.append(tracker.live_bytes)
    predicted = transformer_memory(width, heads, tokens, depth, method=method, kernel=kernel, outputs=outputs,
                                   per_token_head=kind == "lm")
    assert (kept[1] - kept[0]) / 4 == predicted


def test_memory_model_refuses_unknown_methods_and_kernels():
    from invlib.costs import block_elements, transformer_memory

    with pytest.raises(ValueError, match="kernel must be"):
        block_elements(8, 2, 4, "xformers")
    with pytest.raises(ValueError, match="method must be one of"):
        transformer_memory(8, 2, 4, 1, method="offload", outputs=2, per_token_head=True)
