"""The memory tracker counts exact bytes: known allocations, views, frees, depth, backward."""

import pytest
import torch
from torch import nn

from invlib.compare import chain, compare_methods, step_memory
from invlib.memory import CudaMemoryTracker, MemoryTracker, measure_peak, track_memory

torch.manual_seed(0)


def test_known_allocation_is_exact():
    with MemoryTracker() as mem:
        x = torch.empty(1000, dtype=torch.float64)
    assert mem.peak_bytes == 8000
    assert mem.live_bytes == 8000
    del x


def test_views_and_inplace_add_nothing():
    x = torch.ones(250, 4)  # made before entering: not counted
    with MemoryTracker() as mem:
        v = x[1:].T.reshape(4, 249)[0]
        x.add_(1)
        v.mul_(2)
    assert (mem.peak_bytes, mem.live_bytes) == (0, 0)


def test_ops_returning_lists_of_new_tensors_are_counted():
    """Results may come back as a list (``_foreach`` ops, as optimisers use): each is an allocation;
    a list of views (``unbind``) is not."""
    a, b = torch.zeros(1000), torch.zeros(500)
    with MemoryTracker() as mem:
        scaled = torch._foreach_mul([a, b], 2.0)
        rows = torch.stack([a, a]).unbind(0)
    assert mem.peak_bytes == 4 * (1000 + 500) + 4 * 2000
    assert mem.live_bytes == 4 * (1000 + 500) + 4 * 2000  # the stacked storage lives on in the views
    del scaled, rows


def test_freed_temporary_keeps_peak():
    with MemoryTracker() as mem:
        a = torch.zeros(1000)           # 4000 bytes, kept
        b = torch.zeros(2000)           # 8000 bytes, freed below
        del b
        c = torch.zeros(500)            # 2000 bytes, kept
    assert mem.peak_bytes == 12000
    assert mem.live_bytes == 6000
    del a, c


def test_resize_to_zero_counts_as_freed():
    with MemoryTracker() as mem:
        a = torch.zeros(1000)
        a.untyped_storage().resize_(0)  # not a dispatched op: seen at the next op
        torch.zeros(1)
    assert mem.peak_bytes == 4000
    assert mem.live_bytes == 0


def test_tensor_from_python_data_is_counted():
    with MemoryTracker() as mem:
        t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert mem.live_bytes == 24
    del t


def test_ops_inside_backward_are_counted():
    big = 1_000_000  # float32 elements: 4 MB, far above the rest of the graph

    class AllocatesInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, y_bar):
            # A local graph differentiated inside backward, as a constant-memory layer does.
            with torch.enable_grad():
                w = torch.ones(3, requires_grad=True)
                torch.autograd.backward((w * w).sum())
            scratch = torch.ones(big)
            return 2 * y_bar + scratch[:1] * 0

    x = torch.randn(10, requires_grad=True)
    with MemoryTracker() as forward_only:
        AllocatesInBackward.apply(x).sum()
    with MemoryTracker() as mem:
        AllocatesInBackward.apply(x).sum().backward()
    assert mem.peak_bytes >= 4 * big
    assert forward_only.peak_bytes < 1000
    assert torch.equal(x.grad, torch.full((10,), 2.0))


def mlp_step_peak(depth: int, width: int = 64, batch: int = 256) -> int:
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]
    x = torch.randn(batch, width)
    params = [p for layer in layers for p in layer.parameters()]
    return step_memory(chain(layers, "plain"), x, params).peak_bytes


def test_plain_mlp_peak_grows_linearly_with_depth():
    p2, p4, p8 = (mlp_step_peak(d) for d in (2, 4, 8))
    per_layer_low, per_layer_high = (p4 - p2) / 2, (p8 - p4) / 4
    assert per_layer_low > 0
    assert per_layer_high == pytest.approx(per_layer_low, rel=0.03)
    # Each Linear+ReLU pair keeps one activation for backward: the ReLU output, which is also
    # the next Linear's saved input (the Linear output it replaces dies at once). At most one
    # layer's gradients come on top, depending on where in backward the peak falls.
    activation, layer_grads = 256 * 64 * 4, (64 * 64 + 64) * 4
    assert activation <= per_layer_low <= activation + layer_grads


def test_measurement_is_deterministic():
    assert len({mlp_step_peak(3) for _ in range(3)}) == 1


def test_grads_allocated_in_step_are_counted():
    layer = nn.Linear(100, 100, bias=False)
    x = torch.randn(8, 100)
    fresh = step_memory(layer, x, layer.parameters(), accumulate=False)
    accumulated = step_memory(layer, x, layer.parameters(), accumulate=True)
    assert fresh.grad_bytes == 40000 and accumulated.grad_bytes == 0
    assert fresh.live_bytes == 40000   # the step leaves exactly the weight's gradient behind
    assert accumulated.live_bytes == 0  # it added into the existing one
    assert fresh.peak_bytes >= 40000


def test_measure_peak_and_cpu_dispatch():
    assert measure_peak(lambda n: torch.empty(n, dtype=torch.int16), 500) == 1000
    assert measure_peak(lambda t: t * 2, torch.zeros(10)) == 40
    assert isinstance(track_memory("cpu"), MemoryTracker)


def test_methods_agree_and_checkpoint_saves_memory():
    torch.manual_seed(0)
    layers = [m for _ in range(9) for m in (nn.Linear(32, 32), nn.Tanh())]
    x = torch.randn(128, 32, requires_grad=True)
    reports = compare_methods(layers, x, methods=("plain", "checkpoint"), steps=1, warmup=0)
    plain, ckpt = reports["plain"], reports["checkpoint"]
    assert ckpt.loss == pytest.approx(plain.loss, rel=1e-6)
    assert ckpt.fresh.peak_above_grads < plain.fresh.peak_above_grads
    assert ckpt.fresh.live_bytes == plain.fresh.live_bytes  # gradients only, nothing leaked
    assert len(plain.seconds) == 1 and plain.median_seconds > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="method must be one of"):
        chain([nn.Identity()], "reversible")
    with pytest.raises(ValueError, match="at least one module"):
        chain([], "plain")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CudaMemoryTracker("cpu")
    with pytest.raises(ValueError, match="steps >= 1"):
        compare_methods([nn.Identity()], torch.zeros(1), steps=0)


def coupling_layers(depth: int, width: int = 32) -> list[nn.Module]:
    import invlib

    def sub() -> nn.Module:
        return nn.Sequential(nn.Linear(width // 2, width // 2), nn.LeakyReLU())

    torch.manual_seed(0)
    return [invlib.AdditiveCoupling(sub(), sub()) for _ in range(depth)]


def test_invertible_chain_memory_is_flat_in_depth():
    x = torch.randn(256, 32, requires_grad=True)
    activation = x.numel() * x.element_size()
    extra = {}
    for depth in (2, 8):
        layers = coupling_layers(depth)
        params = [p for layer in layers for p in layer.parameters()]
        for method in ("plain", "invertible"):
            mem = step_memory(chain(layers, method), x, params)
            extra[method, depth] = mem.peak_above_grads
            assert mem.live_bytes == mem.grad_bytes + activation  # parameter grads and x.grad
    # Plain keeps several activations per block; inversion keeps the same few at any depth.
    assert extra["plain", 8] - extra["plain", 2] >= 6 * 2 * activation
    assert abs(extra["invertible", 8] - extra["invertible", 2]) <= activation // 2
