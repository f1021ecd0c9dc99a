"""invlib.costs against hand arithmetic, the seed post's numbers, saved_tensors_hooks and FlopCounterMode."""

import pytest
import torch
from torch import nn

import invlib
import invlib.costs as costs
import invlib.memory

F64 = torch.float64
ACTS = {"leaky_relu": lambda: nn.LeakyReLU(0.1), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU,
        "identity": nn.Identity}


def stack(layer, activation, depth):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(layer(), ACTS[activation]()) for _ in range(depth)])


def dense_stack(width, activation, depth, bias=False):
    return stack(lambda: nn.Linear(width, width, bias=bias, dtype=F64), activation, depth)


def conv_stack(conv, channels, k, activation, depth, padding="zeros"):
    return stack(lambda: conv(channels, channels, k, padding=k // 2, padding_mode=padding, bias=False, dtype=F64),
                 activation, depth)


# ---- counts against hand arithmetic -------------------------------------------------------------

def test_dense_counts_by_hand():
    assert costs.dense(64).params == 4096
    assert costs.dense(256).params == 65536
    c = costs.dense(64, depth=3, batch=5)
    assert (c.params, c.activations, c.layer_output) == (12288, 960, 320)
    assert (c.saved_per_layer, c.saved) == (640, 1920)  # LeakyReLU: x_{k-1} and z_k per layer
    assert (c.flops_forward, c.flops_backward, c.flops_solve) == (122880, 245760, 122880)
    assert c.flops_lu == 524288.0  # (2/3) * 64^3 * 3


def test_conv_counts_by_hand():
    c = costs.conv1d(64, 256, 8)
    assert (c.params, c.activations) == (32768, 16384)
    c = costs.conv2d(64, 256, 256, 8)
    assert (c.params, c.activations) == (262144, 4194304)
    c = costs.conv1d(4, 10, 3, depth=2, batch=3)
    assert (c.params, c.activations, c.layer_output, c.saved) == (96, 240, 120, 480)
    assert (c.flops_forward, c.flops_backward, c.flops_lu, c.flops_solve) == (5760, 11520, None, None)
    assert costs.conv1d(4, 10, 3, depth=2, batch=3, padding="circular").saved == 528  # 2 * (3*4*12 + 120)
    c = costs.conv2d(4, 6, 5, 3, depth=2, batch=2)
    assert (c.params, c.activations, c.flops_forward) == (288, 480, 34560)


@pytest.mark.parametrize("make", [lambda d, b: costs.dense(16, d, b), lambda d, b: costs.conv1d(3, 9, 5, d, b),
                                  lambda d, b: costs.conv2d(3, 7, 6, 3, d, b)])
def test_linear_in_depth_and_batch(make):
    one = make(1, 1)
    for d, b in [(1, 4), (3, 1), (5, 7)]:
        c = make(d, b)
        assert c.params == d * one.params
        assert c.activations == d * b * one.activations
        assert c.saved_per_layer == b * one.saved_per_layer
        assert (c.flops_forward, c.flops_backward) == (d * b * one.flops_forward, d * b * one.flops_backward)


def test_bytes():
    c = costs.dense(64, depth=3, batch=5)
    assert c.nbytes(torch.float32) == {"params": 49152, "activations": 3840, "saved": 7680}
    assert c.nbytes(torch.float64)["params"] == 98304
    assert c.nbytes(torch.bfloat16)["activations"] == 1920


def test_training_bytes():
    c = costs.dense(64, depth=4, batch=5)  # P = 16384, A = 1280, saved = 2560, one output = 320
    assert c.training_bytes(optimizer=None) == 70656  # (16384 + 1280) * 4
    assert c.training_bytes() == 136192  # sgd: (2*16384 + 1280) * 4
    assert c.training_bytes("sgd_momentum") == 201728  # (3*16384 + 1280) * 4
    assert c.training_bytes("adam", dtype=torch.float64) == 534528  # (4*16384 + 1280) * 8
    assert c.training_bytes("sgd", cache="autograd") == 141312  # (2*16384 + 2560) * 4
    assert c.training_bytes("sgd", cache="none") == 134912  # (2*16384 + 3*320) * 4
    assert costs.dense(64, depth=40, batch=5).cache_elements("none") == 960  # constant in depth


# ---- the post's numbers ---------------------------------------------------------------------------

def test_post_memory_claims():
    dense64, dense256, c1, c2 = costs.post_memory_claims()
    assert dense64.growth == 0.015625 and dense64.matches == ("growth",)  # 1.5625% -> 1.6%; A/(P+A) = 1.54%
    assert dense256.growth == 0.00390625 and dense256.matches == ("growth", "savings")
    assert (c1.growth, c1.factor, c1.matches) == (0.5, 1.5, ("growth",))
    assert (c2.growth, c2.factor, c2.matches) == (16.0, 17.0, ("factor",))  # 1600% larger, 17x as large


def test_memory_ratios():
    c1, c2 = costs.conv1d(64, 256, 8), costs.conv2d(64, 256, 256, 8)
    assert costs.larger_model_factor(c1) == 1.5
    assert costs.larger_model_factor(c1, "sgd") == 1.25
    assert costs.larger_model_factor(c1, "adam") == 1.125
    assert costs.larger_model_factor(c1, cache="autograd") == 2.0  # LeakyReLU saves 2 outputs per layer
    assert costs.larger_model_factor(c2) == 17.0
    assert costs.larger_model_factor(costs.conv1d(64, 256, 8, depth=9)) == 1.5
    assert costs.savings_fraction(costs.dense(64)) == 64 / 4160
    assert costs.savings_fraction(c1) == 1 / 3


def test_batch_where_cache_equals_params():
    assert costs.batch_where_cache_equals_params(costs.dense(64)) == 64.0
    assert costs.batch_where_cache_equals_params(costs.dense(64, batch=7)) == 64.0
    assert costs.batch_where_cache_equals_params(costs.dense(64), "adam") == 256.0
    assert costs.batch_where_cache_equals_params(costs.dense(64), cache="autograd") == 32.0
    assert costs.batch_where_cache_equals_params(costs.dense(64), "adam", "autograd") == 128.0
    tanh = costs.dense(64, depth=3, activation="tanh")  # saves x_0 ... x_3: 4 outputs for 3 layers
    assert costs.batch_where_cache_equals_params(tanh, cache="autograd") == 48.0


def test_post_flops_literal():
    p = costs.post_flops(64, 3)
    assert (p.forward, p.backward, p.inversion, p.apply) == (1572864, 905969664, 2097152.0, 1572864)
    assert costs.post_flops(2, 1) == costs.PostFlops(16, 32, 64 / 3, 16)


def test_post_flops_vs_correct():
    w, d = 64, 3
    post, at_b_equals_w, one = costs.post_flops(w, d), costs.dense(w, d, batch=w), costs.dense(w, d)
    assert post.forward == at_b_equals_w.flops_forward == w * one.flops_forward
    assert post.apply == at_b_equals_w.flops_solve
    assert post.inversion == 4 * one.flops_lu
    # 2 w^4 d^3 = (w d)^2 forward passes of one sample; the correct backward is 2 of them
    assert post.backward == one.flops_forward * (w * d) ** 2 == one.flops_backward * (w * d) ** 2 // 2


# ---- measured: saved_tensors_hooks and FlopCounterMode ------------------------------------------

@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("x_grad", [False, True])
def test_saved_dense_matches_hooks(activation, x_grad):
    w, b = 8, 5
    for depth in (1, 2, 3):
        x = torch.randn(b, w, dtype=F64, requires_grad=x_grad)
        got = costs.autograd_saved(dense_stack(w, activation, depth), x)
        model = costs.dense(w, depth, b, activation=activation)
        assert got.activation_elements == model.saved
        assert got.activation_bytes == 8 * model.saved
        # every weight is saved by reference, except the first one's when x needs no gradient
        assert got.parameter_elements == model.params - (0 if x_grad else w * w)
    assert costs.dense(8, 3, 5, activation="tanh").saved == 160  # (3 + 1) * 5 * 8


def test_saved_per_layer_is_the_marginal_count():
    x = torch.randn(5, 8, dtype=F64)
    for activation in ACTS:
        two, three = (costs.autograd_saved(dense_stack(8, activation, d), x).activation_elements for d in (2, 3))
        assert three - two == costs.dense(8, batch=5, activation=activation).saved_per_layer


def test_saved_ignores_bias():
    x = torch.randn(5, 8, dtype=F64)
    got = costs.autograd_saved(dense_stack(8, "leaky_relu", 3, bias=True), x)
    assert got.activation_elements == costs.dense(8, 3, 5).saved == 240


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh", "identity"])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_saved_conv_matches_hooks(activation, padding):
    for depth in (1, 3):
        got = costs.autograd_saved(conv_stack(nn.Conv1d, 4, 3, activation, depth, padding),
                                   torch.randn(3, 4, 10, dtype=F64))
        model = costs.conv1d(4, 10, 3, depth, 3, activation=activation, padding=padding)
        assert (got.activation_elements, got.parameter_elements) == (model.saved, model.params)
        got = costs.autograd_saved(conv_stack(nn.Conv2d, 3, 3, activation, depth, padding),
                                   torch.randn(2, 3, 6, 5, dtype=F64))
        model = costs.conv2d(3, 6, 5, 3, depth, 2, activation=activation, padding=padding)
        assert (got.activation_elements, got.parameter_elements) == (model.saved, model.params)


def test_flops_match_flop_counter():
    x = torch.randn(5, 8, dtype=F64, requires_grad=True)
    got, model = costs.counted_flops(dense_stack(8, "leaky_relu", 3), x), costs.dense(8, 3, 5)
    assert (got.forward, got.backward) == (model.flops_forward, model.flops_backward) == (1920, 3840)
    got = costs.counted_flops(dense_stack(8, "tanh", 3), x.detach())  # no x_bar for the first layer
    assert got.backward == model.flops_backward - model.flops_forward // 3 == 3200
    got = costs.counted_flops(conv_stack(nn.Conv1d, 4, 3, "leaky_relu", 2),
                              torch.randn(3, 4, 10, dtype=F64, requires_grad=True))
    assert (got.forward, got.backward) == (5760, 11520)
    model = costs.conv2d(4, 6, 5, 3, depth=2, batch=2)
    got = costs.counted_flops(conv_stack(nn.Conv2d, 4, 3, "tanh", 2),
                              torch.randn(2, 4, 6, 5, dtype=F64, requires_grad=True))
    assert (got.forward, got.backward) == (model.flops_forward, model.flops_backward) == (34560, 69120)


# ---- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: costs.dense(0), "width must be a positive int, got 0"),
    (lambda: costs.dense(64, depth=-1), "depth must be a positive int"),
    (lambda: costs.dense(64, batch=0), "batch must be a positive int"),
    (lambda: costs.dense(2.5), "width must be a positive int"),
    (lambda: costs.dense(True), "width must be a positive int"),
    (lambda: costs.dense(8, activation="gelu"), "activation must be one of"),
    (lambda: costs.conv1d(0, 10, 3), "channels must be a positive int"),
    (lambda: costs.conv1d(4, 10, 11), "kernel_size=11 is larger than the input length=10"),
    (lambda: costs.conv2d(4, 6, 5, 6), "kernel_size=6 is larger than the input width=5"),
    (lambda: costs.conv2d(4, 6, 5, 0), "kernel_size must be a positive int"),
    (lambda: costs.conv1d(4, 10, 3, padding="reflect"), "padding must be 'zeros' or 'circular'"),
    (lambda: costs.dense(8).training_bytes("rmsprop"), "optimizer must be one of"),
    (lambda: costs.dense(8).training_bytes(cache="maybe"), "cache must be one of"),
    (lambda: costs.larger_model_factor(costs.dense(8), cache="none"), "cache must be 'post' or 'autograd'"),
    (lambda: costs.post_flops(64, 0), "depth must be a positive int"),
    (lambda: costs.counted_flops(nn.Identity(), torch.randn(2)), "nothing to differentiate"),
])
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: costs.dense(8).nbytes("float32"), "dtype must be a torch.dtype"),
    (lambda: costs.autograd_saved(torch.tanh, torch.randn(2)), "module must be a torch.nn.Module"),
    (lambda: costs.autograd_saved(nn.Tanh(), [1.0]), "x must be a torch.Tensor"),
])
def test_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# ---- coupling blocks and checkpointing ----------------------------------------------------------

def test_coupling_counts_by_hand():
    c = costs.coupling(8, depth=3, batch=5)
    # params: 2 * 4*4 * 3 = 96; post cache 8*5*3 = 120; per block 8*5 + 4*5 + 2*4*5 = 100
    assert (c.params, c.activations, c.layer_output) == (96, 120, 40)
    assert (c.saved_per_layer, c.saved) == (100, 300)
    assert (c.flops_forward, c.flops_backward) == (2 * 5 * 4 * 4 * 2 * 3, 2 * 2 * 5 * 4 * 4 * 2 * 3)
    assert costs.coupling(8, activation="identity").saved_per_layer == 8 + 4
    with pytest.raises(ValueError, match="even"):
        costs.coupling(7)


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh", "identity"])
def test_coupling_saved_matches_hooks(activation):
    import invlib

    torch.manual_seed(0)
    w, d, B = 8, 4, 3
    mlp = lambda: nn.Sequential(nn.Linear(w // 2, w // 2, bias=False, dtype=F64), ACTS[activation]())
    net = nn.Sequential(*[invlib.AdditiveCoupling(mlp(), mlp()) for _ in range(d)])
    x = torch.randn(B, w, dtype=F64)
    saved = costs.autograd_saved(net, x)
    # The model counts each block's output (kept by the next block); measured, the last output is
    # saved by nothing inside the stack but the first block saves the input x instead: same total.
    model = costs.coupling(w, depth=d, batch=B, activation=activation)
    assert saved.activation_elements == model.saved


def test_checkpoint_elements_by_hand():
    c = costs.dense(10, depth=16, batch=2)               # layer_output 20, saved_per_layer 40
    assert costs.checkpoint_elements(c) == 4 * 20 + 4 * 40            # runs of 4, 4, 4, 4
    assert costs.checkpoint_elements(c, segments=2) == 2 * 20 + 8 * 40
    assert costs.checkpoint_elements(c, segments=3) == 3 * 20 + 6 * 40  # runs of 5, 5, 6
    assert costs.checkpoint_elements(c, segments=16) == 16 * 20 + 1 * 40
    assert costs.checkpoint_elements(costs.dense(10, depth=1)) == 10 + 20
    # Linear and LeakyReLU listed separately: 32 modules in 6 runs of 5, 5, 5, 5, 5, 7
    assert costs.checkpoint_elements(c, modules_per_layer=2) == 6 * 20 + 7 * 20


def test_checkpoint_structure_matches_measured_checkpointing():
    """checkpoint_sequential really keeps what the model assumes: run inputs plus a plain last run."""
    from invlib.memory import MemoryTracker

    torch.manual_seed(0)
    w, d, B = 32, 16, 8
    net = nn.Sequential(*[m for _ in range(d) for m in (nn.Linear(w, w, bias=False), nn.LeakyReLU())])
    x = torch.randn(B, w, requires_grad=True)
    with MemoryTracker() as mem:
        y = torch.utils.checkpoint.checkpoint_sequential(net, 6, x, use_reentrant=False)
    # 32 modules, runs of 5 x 5 then 7: inputs of runs 2..6 (5 tensors; run 1's is x), and the
    # last run's 7 modules each save their input (the first is run 6's input, counted) + output.
    out = w * B * 4
    assert mem.live_bytes == (5 + 6 + 1) * out
    del y


def test_inversion_scratch_by_hand():
    dense = costs.dense(64, depth=10)
    assert dense.scratch == dense.scratch_unchunked == 64 * 64  # one LU copy of W
    assert dense.inversion_elements() == 3 * 64 + 64 * 64
    assert dense.net_saving() == 10 * 64 - (3 * 64 + 64 * 64) < 0  # batch 1: the LU copy outweighs the cache
    conv = costs.conv2d(64, 256, 256, 8, padding="circular")
    nfreq, out = 256 * 129, 64 * 256 * 256
    assert conv.scratch_unchunked == 2 * 64 * nfreq + 4 * nfreq * 64 * 64
    assert conv.scratch == 2 * 64 * nfreq + out
    assert costs.conv2d(64, 256, 256, 8).scratch == 0  # zero padding: no Fourier inverse modelled
    # Chunking turns a loss into a saving from a handful of layers on.
    deep = costs.conv2d(64, 256, 256, 8, depth=8, padding="circular")
    assert deep.net_saving(chunked=True) > 0 > deep.net_saving(chunked=False)


def test_chunked_conv_scratch_bounds_the_measured_inverse():
    torch.manual_seed(0)
    layer = invlib.CircularConv2d(16, 3)
    y = torch.randn(2, 16, 32, 32)
    model = costs.conv2d(16, 32, 32, 3, batch=2, padding="circular")
    with torch.no_grad(), invlib.memory.track_memory(y.device) as tracker:
        layer.inverse(y)
    measured = tracker.peak_bytes / 4  # float32 elements, the rebuilt output included
    assert measured <= model.layer_output + model.scratch
    assert measured >= 0.5 * (model.layer_output + model.scratch)  # and the bound is not vacuous


def test_break_even_depth_is_the_first_depth_where_the_cache_exceeds_the_inverse():
    make = lambda d: costs.dense(64, depth=d)  # noqa: E731
    for cache in ("post", "autograd"):
        d = costs.break_even_depth(make, cache=cache)
        assert make(d).cache_elements(cache) > make(d).inversion_elements()
        assert make(d - 1).cache_elements(cache) <= make(d - 1).inversion_elements()
    # the w^2 scratch against 2w (autograd) or w (post) per layer: about w/2 and w
    assert costs.break_even_depth(make) == 34 and costs.break_even_depth(make, cache="post") == 68
    with pytest.raises(ValueError, match="never saves"):
        costs.break_even_depth(make, limit=10)
    with pytest.raises(ValueError, match="cache must be"):
        costs.break_even_depth(make, cache="none")
