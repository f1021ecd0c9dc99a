"""invlib.planner: the plans' gradients equal plain autograd's under every training-loop feature
(float64, dropout, batch norm, hooks, mode switches, DDP, autocast), the search respects its
budget and its special cases, and measured peaks stay within the budget."""

import itertools
import time

import pytest
import torch
from torch import nn

import invlib
from invlib.compare import step_memory
from invlib.distributed import MODES, ddp_agreement
from invlib.planner import KINDS, Plan, Planned, calibrate, evaluate, minimum_peak, plan, plan_for, search


def _branch(width, hidden, dropout=0.0, norm=False):
    parts = [nn.Linear(width, hidden)]
    if norm:
        parts.append(nn.BatchNorm1d(hidden))
    parts += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, width)]
    return nn.Sequential(*parts)


def _chain(width=8, dropout=0.2, norm=True, dtype=torch.float64, seed=0):
    """Stem, couplings (dropout, batch norm), dense invertible layers and activations, a head."""
    torch.manual_seed(seed)
    half = width // 2
    layers = [nn.Linear(5, width), nn.Tanh(),
              invlib.AdditiveCoupling(_branch(half, 12, dropout, norm), _branch(half, 12, dropout)),
              invlib.LULinear(width), invlib.LeakyReLU(0.5),
              invlib.AdditiveCoupling(_branch(half, 12, dropout), _branch(half, 12, dropout, norm)),
              invlib.InvertibleLinear(width), invlib.Asinh(),
              nn.Dropout(dropout), nn.Linear(width, 3)]
    return [layer.to(dtype) for layer in layers]


def _segmentations(layers):
    """A spread of valid plans: all cached, all recomputed, every invertible layer inverted, and
    mixtures with segments of several lengths."""
    D = len(layers)
    inv = [isinstance(layer, invlib.Invertible) for layer in layers]
    plans = [(("cache", 0, D - 1),), (("recompute", 0, D - 1),),
             (("recompute", 0, 1), ("invert", 2, 7), ("cache", 8, 9)),
             (("cache", 0, 1), ("invert", 2, 3), ("recompute", 4, 6), ("invert", 7, 7), ("recompute", 8, 9)),
             (("recompute", 0, 0), ("cache", 1, 2), ("invert", 3, 4), ("cache", 5, 5), ("invert", 6, 7),
              ("cache", 8, 8), ("recompute", 9, 9))]
    for segments in plans:
        assert all(inv[i] for kind, a, b in segments if kind == "invert" for i in range(a, b + 1))
    return plans


def _grads(forward, layers, x, seed=7):
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    y = forward(x)
    (y.square().mean() + y.sum()).backward()
    return y.detach(), [p.grad.clone() for layer in layers for p in layer.parameters()]


def _plain(layers):
    def forward(x):
        for layer in layers:
            x = layer(x)
        return x
    return forward


def _buffers(layers):
    return [b.clone() for layer in layers for b in layer.buffers()]


@pytest.mark.parametrize("index", range(5))
def test_every_plan_gives_plain_autograds_gradients_float64_with_dropout_and_batch_norm(index):
    layers = _chain()
    x = torch.randn(16, 5, dtype=torch.float64)
    segments = _segmentations(layers)[index]
    start = _buffers(layers)
    y0, g0 = _grads(_plain(layers), layers, x)
    plain_buffers = _buffers(layers)
    with torch.no_grad():
        for b, v in zip((b for layer in layers for b in layer.buffers()), start):
            b.copy_(v)
    y1, g1 = _grads(Planned(layers, segments), layers, x)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # batch norm's running statistics moved once, as in the plain step
    for a, b in zip(_buffers(layers), plain_buffers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_module_backward_hooks_fire_once_per_layer_with_plain_autograds_gradients():
    layers = _chain(dropout=0.0, norm=False)
    x = torch.randn(8, 5, dtype=torch.float64)
    for segments in _segmentations(layers):
        seen = {"plain": {}, "plan": {}}
        for which, forward in (("plain", _plain(layers)), ("plan", Planned(layers, segments))):
            handles = [layer.register_full_backward_hook(
                lambda m, gi, go, i=i, which=which: seen[which].setdefault(i, []).append(go[0].clone()))
                for i, layer in enumerate(layers)]
            _grads(forward, layers, x)
            for h in handles:
                h.remove()
        assert sorted(seen["plan"]) == sorted(seen["plain"]) == list(range(len(layers))), segments
        for i in seen["plain"]:
            assert len(seen["plan"][i]) == 1, (segments, i)
            torch.testing.assert_close(seen["plan"][i][0], seen["plain"][i][0], rtol=1e-9, atol=1e-12)


def test_a_mode_switch_between_forward_and_backward_changes_nothing():
    layers = _chain()
    x = torch.randn(16, 5, dtype=torch.float64)
    start = _buffers(layers)
    y0, g0 = _grads(_plain(layers), layers, x)
    with torch.no_grad():
        for b, v in zip((b for layer in layers for b in layer.buffers()), start):
            b.copy_(v)
    net = Planned(layers, _segmentations(layers)[3])
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    y = net(x)
    net.eval()  # between forward and backward
    (y.square().mean() + y.sum()).backward()
    net.train()
    for a, b in zip([p.grad for layer in layers for p in layer.parameters()], g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _ddp_model():
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Tanh(),
              invlib.AdditiveCoupling(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)),
                                      nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))),
              invlib.LULinear(8), invlib.LeakyReLU(0.5), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)]
    return Planned(layers, (("cache", 0, 1), ("invert", 2, 4), ("recompute", 5, 6), ("cache", 7, 7)))


def test_ddp_trains_a_planned_chain_exactly_like_one_process():
    g = torch.Generator().manual_seed(3)
    x, target = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    worst = ddp_agreement(_ddp_model, x, target, steps=2)
    assert set(worst) == set(MODES)
    assert max(worst.values()) <= 1e-5


def test_autocast_gradients_are_as_close_to_float32_as_the_plain_loops():
    layers = _chain(width=16, dropout=0.0, norm=False, dtype=torch.float32)
    x = torch.randn(64, 5)
    _, exact = _grads(_plain(layers), layers, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain = _grads(_plain(layers), layers, x)
        _, planned = _grads(Planned(layers, _segmentations(layers)[3]), layers, x)

    def error(grads):
        return max(float((g - e).norm() / e.norm()) for g, e in zip(grads, exact))

    assert error(planned) <= 2 * error(plain) + 1e-6


# ---- the search


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    layers = _chain(width=32, dropout=0.0, norm=False, dtype=torch.float32)
    x = torch.randn(64, 5)
    return layers, x, calibrate(layers, x, repeats=2)


def test_the_all_cached_plan_at_the_all_cached_peak_and_the_minimum_is_feasible(measured):
    layers, x, costs = measured
    D = len(layers)
    keep_peak, _ = evaluate((("cache", 0, D - 1),), costs)
    assert all(kind != "recompute" for kind, _, _ in plan_for(costs, keep_peak * 1.5).segments)
    least = minimum_peak(costs)
    assert least < keep_peak
    found = plan_for(costs, least)
    assert found.peak <= least
    with pytest.raises(ValueError, match=f"feasible minimum for this chain and input is {least:,} bytes"):
        plan_for(costs, least * 0.9)


def test_the_search_obeys_the_allowed_kinds_and_never_inverts_a_plain_layer(measured):
    layers, x, costs = measured
    keep_peak, _ = evaluate((("cache", 0, len(layers) - 1),), costs)
    least = minimum_peak(costs, kinds=("cache", "recompute"))
    assert least >= minimum_peak(costs)  # inverting can only help
    for budget in (least, (least + keep_peak) / 2):
        found = search(costs, budget, kinds=("cache", "recompute"))
        assert found is not None and all(kind != "invert" for kind, _, _ in found)
        for kind, a, b in plan_for(costs, budget).segments:
            if kind == "invert":
                assert all(isinstance(layers[i], invlib.Invertible) for i in range(a, b + 1))


def test_the_program_finds_the_fastest_plan_among_all_segmentations(measured):
    """Brute force over every segmentation of a short chain: the program's plan is feasible and
    no feasible segmentation is faster (up to the program's rounding of memory to bins)."""
    layers, x, costs = measured
    D = len(costs)
    sub = costs.__class__(costs.layers[2:8], costs.loss_extra, costs.t_loss, costs.t_checkpoint, costs.t_container)
    n = len(sub)
    keep_peak, _ = evaluate((("cache", 0, n - 1),), sub)
    for frac in (0.3, 0.5, 0.8, 1.0):
        budget = frac * keep_peak
        best = None
        for cuts in itertools.product((False, True), repeat=n - 1):
            bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
            pieces = list(zip(bounds[:-1], bounds[1:]))
            for kinds in itertools.product(KINDS, repeat=len(pieces)):
                segments = tuple((k, a, b - 1) for k, (a, b) in zip(kinds, pieces))
                if any(k == "invert" and not all(c.invertible for c in sub.layers[a:b + 1]) for k, a, b in segments):
                    continue
                peak, seconds = evaluate(segments, sub)
                if peak <= budget * (1 - 1 / 100) and (best is None or seconds < best):
                    best = seconds
        found = search(sub, budget, bins=400)
        if best is None:
            continue
        assert found is not None
        peak, seconds = evaluate(found, sub)
        assert peak <= budget
        assert seconds <= best * (1 + 1e-9), (frac, found)
    assert D > n


def test_measured_peaks_stay_within_the_budget(measured):
    layers, x, costs = measured
    params = [p for layer in layers for p in layer.parameters()]
    keep_peak, _ = evaluate((("cache", 0, len(layers) - 1),), costs)
    least = minimum_peak(costs)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        budget = least + frac * (keep_peak - least)
        found = plan_for(costs, budget)
        peak = step_memory(Planned(layers, found), x, params, accumulate=True).peak_bytes
        assert peak <= 1.05 * budget, (found, peak)
        assert abs(found.peak - peak) <= 0.15 * peak, (found, peak)


def test_plan_takes_a_module_and_refuses_bad_budgets_and_segments():
    layers = _chain(width=8, dropout=0.0, norm=False, dtype=torch.float32)
    x = torch.randn(8, 5)
    grads_before = [p.grad for layer in layers for p in layer.parameters()]
    nested = nn.Sequential(nn.Sequential(*layers[:4]), invlib.InvertibleSequential(*layers[4:8]), *layers[8:])
    found = plan(nested, x, 10**9)
    assert isinstance(found, Plan) and found.segments[-1][2] == len(layers) - 1 and found.budget == 10**9
    assert [p.grad for layer in layers for p in layer.parameters()] == grads_before  # None stays None
    net = Planned(nested, (("recompute", 0, 3), ("invert", 4, 7), ("cache", 8, 9)))
    assert list(net) == layers  # flattened the way plan flattens
    torch.testing.assert_close(net(x), nn.Sequential(*layers)(x))
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="budget_bytes must be a positive number"):
            plan(layers, x, bad)
    with pytest.raises(ValueError, match="segments cover layers 0..3 of 10"):
        Planned(layers, (("cache", 0, 3),))
    with pytest.raises(ValueError, match="kind"):
        Planned(layers, (("keep", 0, len(layers) - 1),))
    with pytest.raises(TypeError, match="must be an invlib.Invertible"):
        Planned(layers, (("invert", 0, len(layers) - 1),))
    costs = calibrate(layers, x, repeats=1)
    with pytest.raises(ValueError, match=r"layers \[0, 1, 8, 9\] are not invlib.Invertible"):
        evaluate((("invert", 0, len(layers) - 1),), costs)


def test_planning_two_hundred_layers_is_quick(measured):
    _, _, costs = measured
    many = costs.__class__(costs.layers * 20, costs.loss_extra, costs.t_loss, costs.t_checkpoint, costs.t_container)
    assert len(many) == 200
    keep_peak, _ = evaluate((("cache", 0, 199),), many)
    start = time.perf_counter()
    found = plan_for(many, 0.3 * keep_peak)
    elapsed = time.perf_counter() - start
    assert found.peak <= 0.3 * keep_peak
    assert elapsed < 20  # the chapter reports the time; this only catches a blow-up


@pytest.mark.parametrize("index", [2, 3, 4])
def test_two_forwards_then_one_backward_equal_the_plain_loop(index):
    """Micro-batches whose losses are summed before one backward: each forward's recomputation
    and reverse steps replay that forward's modes, buffers and random state."""
    layers = _chain()
    x1, x2 = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 5, dtype=torch.float64)
    start = _buffers(layers)

    def step(forward):
        for layer in layers:
            layer.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        y1 = forward(x1)
        y2 = forward(x2)
        (y1.square().mean() + y2.sum()).backward()
        return [p.grad.clone() for layer in layers for p in layer.parameters()], _buffers(layers)

    want, want_buffers = step(_plain(layers))
    with torch.no_grad():
        for b, v in zip((b for layer in layers for b in layer.buffers()), start):
            b.copy_(v)
    got, got_buffers = step(Planned(layers, _segmentations(layers)[index]))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for a, b in zip(got_buffers, want_buffers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_a_recomputed_layer_sees_the_buffers_its_forward_saw():
    """Spectral norm's power iteration updates its vector ``u`` in every training-mode forward and
    computes the weight from it: the recomputation must use ``u`` as it was before the forward
    (and leave the updated one in place), or the gradient is that of another weight."""
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    layers = [spectral_norm(nn.Linear(6, 6)).double(), nn.Tanh(), spectral_norm(nn.Linear(6, 3)).double()]
    x = torch.randn(8, 6, dtype=torch.float64)
    start = _buffers(layers)
    want = _grads(_plain(layers), layers, x)[1]
    after = _buffers(layers)
    with torch.no_grad():
        for b, v in zip((b for layer in layers for b in layer.buffers()), start):
            b.copy_(v)
    got = _grads(Planned(layers, (("recompute", 0, 2),)), layers, x)[1]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(_buffers(layers), after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
