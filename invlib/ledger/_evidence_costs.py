"""Evidence for the post's claims about cost: memory against depth and batch, the four memory
percentages with and without scratch, and the FLOP items."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import costs
from ._measure import coupling_flops, coupling_peaks, inversion_overhead


def memory_constant():
    p = coupling_peaks()
    inv = p["invertible", 8] - p["invertible", 2]
    plain = p["plain", 8] - p["plain", 2]
    return ({"invertible_growth": abs(inv), "plain_growth": plain},
            f"coupling blocks, depth 2 -> 8, a step's peak above parameters and gradients, in activations: "
            f"invertible {p['invertible', 2]:.1f} -> {p['invertible', 8]:.1f}, plain {p['plain', 2]:.1f} -> "
            f"{p['plain', 8]:.1f}")


def linear_compute():
    f = coupling_flops()
    ratio = f["invertible", 8] / f["invertible", 4]
    return ({"ratio": ratio}, f"FLOPs of an invertible step, depth 4 -> 8: x{ratio:.3f} (counted)")


def dense_step_ratio(width: int, batch: int, weight_gradients: bool = True) -> float:
    """The post's algorithm on dense layers (one LU solve per layer) against backprop, FLOPs per
    step: ``4/3 + w/(9B)`` with weight gradients (:func:`invlib.costs.dense_step`), ``3/2 + w/(6B)``
    for the input gradient alone (the backward then has half its products)."""
    if weight_gradients:
        return costs.step_ratio(costs.dense_step(width, 1, batch, "invertible"),
                                costs.dense_step(width, 1, batch, "plain"))
    c = costs.dense(width, batch=batch)
    plain = c.flops_forward + c.flops_backward / 2
    return (plain + c.flops_lu + c.flops_solve) / plain


def double_compute():
    f = coupling_flops()
    coupling = f["invertible", 8] / f["plain", 8]
    at_width = min(dense_step_ratio(w, w) for w in (64, 256))
    at_one = min(dense_step_ratio(w, 1) for w in (64, 256))
    inputs_only = dense_step_ratio(256, 256, weight_gradients=False)
    return ({"dense_at_width": at_width, "dense_at_one": at_one, "coupling": coupling,
             "dense_one": dense_step_ratio(256, 1)},
            f"the post's dense algorithm, FLOPs against backprop with weight gradients (4/3 + w/(9B)): "
            f"{at_width:.2f} at batch w, {dense_step_ratio(64, 1):.1f} (w=64) and {dense_step_ratio(256, 1):.1f} "
            f"(w=256) at batch 1; 2 only near B = w/6. Input gradients only (3/2 + w/(6B)): {inputs_only:.2f} "
            f"at batch w. Coupling blocks: {coupling:.3f} (counted)")


def quadratic():
    c = costs.dense(64)
    exponent = math.log(c.activations) / math.log(c.params)
    return ({"exponent": exponent},
            f"width 64, one sample: cache {c.activations} floats, {c.params} parameters = cache squared "
            f"(cache ~ P^{exponent:.2f}): the parameters are quadratic in the cache, as the post's "
            "sentence means; its words 'the cache is a quadratic factor of the parameter count' say it "
            "the other way round")


def post_claim(index: int):
    return costs.post_memory_claims()[index]


ROUNDING = 0.05   # two significant digits round a value by less than 5 % of it


def arithmetic(index: int):
    def evidence():
        c = post_claim(index)
        post = float(c.post_percent) / 100
        error = abs(post - c.growth) / c.growth
        text = f"A/P = {100 * c.growth:.5g}%: the post's {c.post_percent}% is off by {error:.1%}"
        if c.growth < 0.1:
            text += f"; as a share of all memory, A/(P+A) = {100 * c.savings:.3g}%"
        if "factor" in c.matches and "growth" not in c.matches:
            text += f"; {c.post_percent}% is the factor (P+A)/P = {c.factor:.0f}x, a model {100 * c.growth:.0f}% larger"
        return ({"error": error}, text)
    return evidence


POST_NETWORKS = {
    0: lambda d: costs.dense(64, depth=d),
    1: lambda d: costs.dense(256, depth=d),
    2: lambda d: costs.conv1d(64, 256, 8, depth=d, padding="circular"),
    3: lambda d: costs.conv2d(64, 256, 256, 8, depth=d, padding="circular"),
}


SCRATCH_DEPTH = 64


def with_scratch(index: int):
    """What inversion saves at depth 64, batch 1, against the cache autograd really keeps (two
    tensors per dense block, ``Cost.saved``), with the inverse's scratch paid, per weight."""
    def evidence():
        make = POST_NETWORKS[index]
        c = make(SCRATCH_DEPTH)
        achieved = (c.cache_elements("autograd") - c.inversion_elements(True)) / c.params
        post = float(post_claim(index).post_percent) / 100
        even = costs.break_even_depth(make)
        return ({"of_post": achieved / post, "from_depth": even},
                f"depth {SCRATCH_DEPTH}, batch 1, autograd's cache minus the inverse's scratch: "
                f"{achieved:+.1%} of the weights, {achieved / post:.2f} of the post's {post:.1%}; "
                f"inversion saves memory from depth {even}")
    return evidence


def batch_linear():
    one, eight = costs.conv1d(64, 256, 8, batch=1), costs.conv1d(64, 256, 8, batch=8)
    ratio = (eight.activations / eight.params) / (one.activations / one.params)
    return ({"ratio": ratio}, f"cache per weight, batch 1 -> 8: x{ratio:g} (model, exact)")


def larger_batch():
    p = coupling_peaks()
    ratio = p["plain", 8] / p["invertible", 8]
    return ({"ratio": ratio},
            f"coupling blocks, depth 8: a step's batch-sized memory is {ratio:.1f}x smaller by inversion, "
            "so a batch that much larger fits (measured)")


def inverse_cost():
    w = 4096
    one = costs.dense(w, batch=1)
    full = costs.dense(w, batch=w)
    r1, rw = one.flops_lu / one.flops_forward, full.flops_lu / full.flops_forward
    return ({"at_one": r1, "at_width": rw},
            f"LU / forward pass, width {w}: {r1:.0f}x at batch 1 (forward is quadratic), "
            f"{rw:.2f}x at batch {w}")


def flop_forward():
    w, d = 256, 4
    post = costs.post_flops(w, d).forward
    model = costs.dense(w, depth=d, batch=1).flops_forward
    net = nn.Sequential(*[nn.Linear(w, w, bias=False) for _ in range(d)])
    counted = costs.counted_flops(net, torch.randn(1, w, requires_grad=True)).forward
    return ({"post_over_width": post / counted / w, "model_is_counted": float(model == counted)},
            f"width {w}, depth {d}, one sample: counted {counted:,}; the post's count is {post / counted:g}x "
            "that, the count for a batch of w")


def flop_backward():
    w, d = 256, 4
    net = nn.Sequential(*[nn.Linear(w, w, bias=False) for _ in range(d)])
    counted = costs.counted_flops(net, torch.randn(1, w, requires_grad=True))
    post = costs.post_flops(w, d).backward
    return ({"backward_over_forward": counted.backward / counted.forward, "post_over_counted": post / counted.backward},
            f"counted backward = {counted.backward / counted.forward:g}x forward at any size; the post's "
            f"2w^4d^3 is {post / counted.backward:.1e}x the count")


def flop_inversion():
    w, d = 256, 4
    post = costs.post_flops(w, d)
    model = costs.dense(w, depth=d, batch=1)
    return ({"inversion_over_lu": post.inversion / model.flops_lu, "apply_over_solve": post.apply / model.flops_solve},
            f"solving instead of inverting needs the LU only: 1/{post.inversion / model.flops_lu:g} of (8/3)w^3; "
            f"applying it to one sample costs 1/{post.apply / model.flops_solve:g} of 2w^3")


def dominates():
    overheads = [inversion_overhead(costs.dense(w, batch=b)) for w in (256, 1024, 4096)
                 for b in (1, 64, 4096, 65536)]
    f = coupling_flops()
    coupling = f["invertible", 8] / f["plain", 8] - 1
    return ({"min_overhead": min(min(overheads), coupling)},
            f"inversion's extra FLOPs per training step: >= {min(overheads):.2f} for dense + LU at every width "
            f"and batch (w/(9B) + 1/3), {coupling:.3f} for coupling blocks")


def lu():
    w = 256
    post = costs.post_flops(w, 1)
    at_width = costs.dense(w, batch=w)
    at_one = costs.dense(w, batch=1)
    item3 = (post.inversion + post.apply) / (at_width.flops_lu + at_width.flops_solve)
    one = (post.inversion + at_one.flops_solve) / (at_one.flops_lu + at_one.flops_solve)
    step = at_width.flops_forward + at_width.flops_backward
    whole = (step + post.inversion + post.apply) / (step + at_width.flops_lu + at_width.flops_solve)
    return ({"item3_saving": item3},
            f"item (3) at the post's batch of w, applying included: (8/3 + 2)/(2/3 + 2) = {item3:.2f}x fewer "
            f"FLOPs ({one:.1f}x at batch 1); a whole training step at batch w: {whole:.2f}x")


def param_jacobian():
    w, d = 64, 4
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(w, w, bias=False) for _ in range(d)])
    x = torch.randn(8, w, requires_grad=True)
    full = costs.counted_flops(net, x)
    for p in net.parameters():
        p.requires_grad_(False)
    inputs_only = costs.counted_flops(net, x)
    extra = (full.backward - inputs_only.backward) / full.forward
    return ({"param_share": extra},
            f"all weight gradients together add {extra:g}x one forward pass (counted), not a "
            "Jacobian in all w^2 d parameters")


def conv_flops():
    """Inversion's extra FLOPs per training step, the post's Conv1d (the model of :doc:`compute`,
    responses and FFTs included) against dense layers of width 64, at batch 1 and 64."""
    extra = {}
    for b in (1, 64):
        conv = [costs.conv_step(64, (256,), 8, 1, b, m) for m in ("invertible", "plain")]
        extra["conv", b] = costs.step_ratio(*conv) - 1
        extra["dense", b] = dense_step_ratio(64, b) - 1
    worst = max(extra["conv", b] / extra["dense", b] for b in (1, 64))
    return ({"conv_over_dense": worst},
            f"inversion's extra FLOPs per training step (model), batch 1 / 64: the post's conv1d (C=64, L=256, "
            f"k=8) {extra['conv', 1]:.2f} / {extra['conv', 64]:.2f}; dense width 64 {extra['dense', 1]:.2f} / "
            f"{extra['dense', 64]:.2f}: the same form, at most {worst:.2f} of the dense overhead")


def conv_next():
    """The post's next step, taken in the chapter on real convolutional networks: the conv2d
    example has the largest A/P; on MemCNN's CIFAR networks a RevNet-110 keeps a fraction of
    ResNet-110's activations (model, exact to the tracker there); and the fully invertible
    i-RevNet's kept memory, measured, does not grow from 3 to 18 couplings per stage."""
    from ..costs import image_memory
    from ..image_nets import SPECS, irevnet
    from ..memory import MemoryTracker

    growth = {c.claim.split(",")[0]: c.growth for c in costs.post_memory_claims()}
    largest = max(growth, key=growth.get)
    share = image_memory(SPECS["RevNet-110"]).per_image / image_memory(SPECS["ResNet-110"]).per_image
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kept = []
    for blocks in (3, 18):
        model = irevnet(blocks, hidden=(8, 8, 8))
        with MemoryTracker() as tracker:
            model(x).square().mean()
            kept.append(tracker.live_bytes)
    one_activation = x.numel() * x.element_size()
    irevnet_growth = (kept[1] - kept[0]) / one_activation
    return ({"conv2d_largest": float(largest == "conv2d"), "revnet_share": share, "irevnet_growth": irevnet_growth},
            f"the largest A/P of the post's examples is {largest}'s, {growth[largest]:g}; on CIFAR shapes "
            f"RevNet-110 keeps {share:.2f} of ResNet-110's activations (the transitions and the stem), and the "
            f"fully invertible i-RevNet's kept memory grows by {irevnet_growth:.2f} of one input batch from 3 to 18 "
            "couplings per stage")


def revnet():
    f = coupling_flops()
    p = coupling_peaks()
    ratio = f["invertible", 8] / f["plain", 8]
    growth = transformer_growth()
    return ({"off_four_thirds": abs(ratio - 4 / 3), "growth": abs(p["invertible", 8] - p["invertible", 2]),
             "transformer_growth": growth},
            f"RevNet's coupling blocks: FLOPs {ratio:.3f}x backprop, memory flat in depth, and so is a reversible "
            f"transformer's step (peak {growth:+.2f} of one block's cache from 2 to 6 blocks); RevNet inverts "
            "coupling blocks only, the post also dense layers")


def transformer_growth(width: int = 32, tokens: int = 64) -> float:
    """How much a reversible causal language model's step peak grows from 2 to 6 blocks, in units
    of what one ordinary block keeps (flash attention, batch 2)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..costs import block_elements
    from ..memory import MemoryTracker
    from ..transformer import causal_lm

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (2, tokens), generator=g)
    peaks = []
    for depth in (2, 6):
        model = causal_lm(vocabulary=16, length=tokens, width=width, depth=depth, heads=2, reversible=True)
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), MemoryTracker() as tracker:
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        peaks.append(tracker.peak_bytes)
    return (peaks[1] - peaks[0]) / (4 * 2 * tokens * block_elements(width, 2, tokens))
