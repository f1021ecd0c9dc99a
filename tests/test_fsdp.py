"""InvertibleSequential under FSDP2 (``fully_shard`` per layer or per block, and on the root), on
two CPU ranks (gloo): gradients equal one process on the whole batch, every layer type, both
``reshard_after_forward`` settings, bfloat16 parameters, dropout and batch-norm replay, the
conditioning check before any gradient leaves, and step memory flat in depth.

All cases run in one pair of spawned processes (``invlib.fsdp.run_cases``), to keep the cost of
starting ranks out of every test.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from invlib.fsdp import KINDS, Case, gradient_error, run_cases, single_process

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed support")

GRID = [Case(f"{kind}-{per}-{reshard}", kind, per=per, reshard_after_forward=reshard)
        for kind in KINDS for per in ("block", "layer") for reshard in (True, False)]
BF16 = [Case(f"bf16-{kind}-{method}", kind, method=method, bf16=True, width=16, batch=64)
        for kind in ("coupling", "mixed") for method in ("plain", "invlib")]
REPLAY = [Case(f"replay-{method}", "coupling", method=method, dropout=0.2, batchnorm=True, batch=16)
          for method in ("plain", "invlib")]
ERRORS = [Case("singular", "dense", singular=True), Case("inner-unit", "coupling", inner_unit=True),
          Case("grouped", "coupling", grouped=True)]
MEMORY = [Case(f"memory-{method}-{depth}", "coupling", method=method, depth=depth, width=16, batch=16,
               memory=True) for method in ("plain", "invlib") for depth in (2, 8)]
CONDITIONAL = [Case(f"conditional-{per}-{reshard}", "conditional", per=per, reshard_after_forward=reshard)
               for per, reshard in (("block", True), ("layer", False))]
CASES = GRID + BF16 + REPLAY + ERRORS + MEMORY + CONDITIONAL


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, dict]]:
    return run_cases(CASES, world_size=2)


@pytest.mark.parametrize("case", GRID, ids=[c.name for c in GRID])
def test_gradients_equal_one_process_on_the_whole_batch(ranks, case):
    reference = single_process(case)
    for results in ranks:
        result = results[case.name]
        assert result["error"] is None, result["error"]
        assert gradient_error(result["grads"], reference) < 1e-12


@pytest.mark.parametrize("kind", ["coupling", "mixed"])
def test_bfloat16_parameters_as_accurate_as_plain_fsdp(ranks, kind):
    """MixedPrecisionPolicy(param_dtype=bfloat16): against the float64 gradient of one process,
    invlib's error stays within twice plain FSDP's (both round the weights and activations)."""
    reference = single_process(Case("ref", kind, width=16, batch=64))
    plain, ours = (ranks[0][f"bf16-{kind}-{method}"] for method in ("plain", "invlib"))
    assert plain["error"] is None and ours["error"] is None, (plain["error"], ours["error"])
    plain_error, our_error = gradient_error(plain["grads"], reference), gradient_error(ours["grads"], reference)
    assert 1e-4 < plain_error < 0.1  # bfloat16 rounding, not exactness and not garbage
    assert our_error <= 2 * plain_error


def test_dropout_and_batch_norm_replayed_under_fsdp(ranks):
    """Same seeds on each rank: the reverse steps redraw the forward's dropout masks and
    normalise with the forward's batch statistics, so the gradients equal plain FSDP's."""
    for results in ranks:
        plain, ours = results["replay-plain"], results["replay-invlib"]
        assert plain["error"] is None and ours["error"] is None, (plain["error"], ours["error"])
        assert gradient_error(ours["grads"], plain["grads"]) < 1e-12


def test_a_singular_sharded_weight_is_refused_before_any_gradient_leaves(ranks):
    for results in ranks:
        result = results["singular"]
        assert result["error"] is not None and "singular" in result["error"]
        assert not any(result["grads_left"])


def test_fully_shard_inside_a_layer_is_refused_clearly(ranks):
    for results in ranks:
        assert "fully_shard on the layer itself" in results["inner-unit"]["error"]


def test_fully_shard_of_several_modules_in_one_call_is_refused_clearly(ranks):
    for results in ranks:
        error = results["grouped"]["error"]
        assert error is not None and "fully_shard([a, b])" in error and "not supported" in error
        assert not any(results["grouped"]["grads_left"])


@pytest.mark.parametrize("case", GRID, ids=[c.name for c in GRID])
def test_units_stay_gathered_between_forward_and_backward_only_without_reshard(ranks, case):
    """FSDP's reshard_after_forward holds for the units' nodes: freed after the forward when
    True, kept gathered for the backward when False (also when each layer is its own unit,
    whose own forward runs inside the unit's nodes)."""
    for results in ranks:
        gathered = results[case.name]["gathered"]
        assert gathered and all(g == (not case.reshard_after_forward) for g in gathered)


def test_step_memory_per_rank_is_flat_in_depth_and_plain_fsdp_grows(ranks):
    """Peak above the rank's parameter and gradient shards (the tracker watches the storages
    FSDP gathers into)."""
    for results in ranks:
        ours = [results[f"memory-invlib-{d}"]["peak"] for d in (2, 8)]
        plain = [results[f"memory-plain-{d}"]["peak"] for d in (2, 8)]
        activation = 8 * 16 * 8  # batch 8 per rank, width 16, float64
        unit = 4 * (8 * 8 + 8) * 8  # one block's parameters, gathered: F and G, two Linear(8, 8) each
        assert abs(ours[1] - ours[0]) <= 2 * unit + activation  # the bound (flat at larger sizes)
        assert plain[1] - plain[0] > 6 * 2 * activation  # six more blocks' caches, two activations or more each


@pytest.mark.parametrize("case", CONDITIONAL, ids=[c.name for c in CONDITIONAL])
def test_conditional_blocks_under_fsdp_give_the_parameter_and_context_gradients(ranks, case):
    """net(x, context) with coupling blocks whose F and G read the context: the parameters'
    gradients equal one process's, and so does each rank's share of the context's gradient."""
    reference, context_reference = single_process(case, context_grad=True)
    for rank, results in enumerate(ranks):
        result = results[case.name]
        assert result["error"] is None, result["error"]
        assert gradient_error(result["grads"], reference) < 1e-12
        share = context_reference.chunk(len(ranks))[rank]
        assert float((result["context_grad"] - share).norm() / share.norm()) < 1e-12
