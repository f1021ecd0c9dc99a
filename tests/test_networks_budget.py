"""invlib.networks (test networks with their cost model) and invlib.budget (largest batch/depth)."""

import pytest
import torch

from invlib import budget as bud
from invlib import costs
from invlib.networks import KINDS, POST_NETWORKS, build, model_bytes, network_cost

MiB = 2**20
SMALL = {
    "dense": dict(kind="dense", width=16),
    "coupling": dict(kind="coupling", width=16),
    "conv1d": dict(kind="conv1d", channels=4, size=(8,)),
    "conv2d": dict(kind="conv2d", channels=2, size=(4, 4)),
}


@pytest.mark.parametrize("kind", KINDS)
def test_build_matches_its_cost_model(kind):
    net = build(depth=3, batch=5, **SMALL[kind])
    cost, per = network_cost(depth=3, batch=5, **SMALL[kind])
    assert net.cost == cost and net.modules_per_layer == per
    assert net.x.shape[0] == 5 and net.x.requires_grad
    assert net.layer_output_bytes == net.x.numel() * 4  # shape-preserving layers
    y = net.x
    for layer in net.layers:
        y = layer(y)
    assert y.shape == net.x.shape
    assert net.param_bytes() == sum(p.numel() * 4 for p in net.parameters)
    assert len(net.layers) == 3 * per


def test_build_is_seeded():
    a, b = build(depth=2, batch=3, seed=7, **SMALL["dense"]), build(depth=2, batch=3, seed=7, **SMALL["dense"])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters, b.parameters)) and torch.equal(a.x, b.x)


@pytest.mark.parametrize("bad, message", [
    (dict(kind="mlp", width=4), "kind must be one of"),
    (dict(kind="dense"), "needs width"),
    (dict(kind="coupling", width=5), "must be even"),
    (dict(kind="conv2d", channels=2, size=(4,)), "2 entries"),
])
def test_build_refuses_bad_sizes(bad, message):
    with pytest.raises(ValueError, match=message):
        build(depth=1, batch=1, **bad)


def test_post_networks_are_the_posts_sizes():
    ratios = {name: network_cost(depth=4, batch=1, **spec)[0] for name, spec in POST_NETWORKS.items()}
    a_over_p = [c.activations / c.params for c in ratios.values()]
    assert a_over_p == pytest.approx([1 / 64, 1 / 256, 0.5, 16])  # 1.6 %, 0.4 %, 50 %, 1600 %


def test_model_bytes_are_the_cost_models():
    cost, per = network_cost(depth=4, batch=8, **SMALL["conv1d"])
    got = model_bytes(cost, per, 4)
    assert got["plain"] == 4 * cost.saved
    assert got["checkpoint"] == 4 * costs.checkpoint_elements(cost, modules_per_layer=per)
    assert got["invertible"] == 4 * cost.inversion_elements(chunked=True)


@pytest.mark.parametrize("kind", ["dense", "coupling", "conv1d"])
def test_measured_slope_is_the_models_and_invertible_is_flat(kind):
    spec = dict(SMALL[kind], **({"width": 32} if "width" in SMALL[kind] else {}))
    shallow, deep = build(depth=2, batch=64, **spec), build(depth=6, batch=64, **spec)
    ms, md = shallow.measure(["plain", "invertible"]), deep.measure(["plain", "invertible"])
    assert md["plain"] - ms["plain"] == deep.model_bytes()["plain"] - shallow.model_bytes()["plain"]
    # flat, but for what the check before the sweep keeps for the steps (factors, within one
    # layer output) and one byte per judged layer (its verdict code)
    assert abs(md["invertible"] - ms["invertible"]) <= deep.layer_output_bytes


def test_largest_searches_a_monotone_predicate():
    assert bud._largest(lambda n: n <= 37, limit=1000) == 37
    assert bud._largest(lambda n: n <= 1, limit=1000) == 1
    assert bud._largest(lambda n: False, limit=1000) == 0
    assert bud._largest(lambda n: True, limit=100) == 100


def test_calibration_reproduces_the_measured_steps():
    spec = SMALL["dense"]
    ov = bud.calibrate(spec, "plain", batches=(32, 64))
    for b in (32, 64):
        measured = bud.measured_bytes(build(depth=2, batch=b, **spec), "plain")
        assert bud.predicted_bytes(spec, "plain", 2, b, ov) == pytest.approx(measured, abs=2)


def test_predicted_bytes_ignores_device_and_dtype_keys():
    ov = bud.Overhead(1.0, 0.0)
    plain = bud.predicted_bytes(SMALL["dense"], "plain", 3, 8, ov)
    assert bud.predicted_bytes(dict(SMALL["dense"], device="cpu", dtype=torch.float32), "plain", 3, 8, ov) == plain


@pytest.mark.parametrize("kind", ["dense", "coupling"])
def test_largest_batch_fits_when_measured_and_ranks_the_methods(kind):
    spec = dict(kind=kind, width=32)
    budget = 4 * MiB
    batches = {}
    for m in ("plain", "checkpoint", "invertible"):
        b = bud.largest_batch(spec, m, budget, depth=8)
        used = bud.measured_bytes(build(depth=8, batch=b, **spec), m)
        assert 0.9 * budget < used <= 1.001 * budget, (m, b, used / budget)
        batches[m] = b
    assert batches["invertible"] > batches["checkpoint"] > batches["plain"]


def test_largest_depth_fits_when_measured():
    spec = dict(kind="dense", width=32)
    budget = 2 * MiB
    d = bud.largest_depth(spec, "plain", budget, batch=128, limit=512)
    assert 1 < d < 512
    assert bud.measured_bytes(build(depth=d, batch=128, **spec), "plain") <= 1.001 * budget
    assert bud.measured_bytes(build(depth=d + 2, batch=128, **spec), "plain") > budget
    # the invertible container's depth is bounded by the weights alone, so it reaches deeper
    assert bud.largest_depth(spec, "invertible", budget, batch=128, limit=512) > d


def test_no_batch_fits_a_budget_below_the_weights():
    assert bud.largest_batch(dict(kind="dense", width=64), "invertible", 10_000, depth=8) == 0
