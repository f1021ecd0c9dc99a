"""Evidence for the post's claims about cost: memory against depth and batch, the four memory
percentages with and without scratch, and the FLOP items."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import costs
from ..conv import CircularConv2d
from ._measure import conv_inverse_flops, coupling_flops, coupling_peaks, inversion_overhead


def memory_constant():
    p = coupling_peaks()
    inv = p["invertible", 8] - p["invertible", 2]
    plain = p["plain", 8] - p["plain", 2]
    return ({"invertible_growth": inv, "plain_growth": plain},
            f"coupling blocks, depth 2 -> 8, peak in activations: invertible {p['invertible', 2]:.1f} -> "
            f"{p['invertible', 8]:.1f}, plain {p['plain', 2]:.1f} -> {p['plain', 8]:.1f}")


def linear_compute():
    f = coupling_flops()
    ratio = f["invertible", 8] / f["invertible", 4]
    return ({"ratio": ratio}, f"FLOPs of an invertible step, depth 4 -> 8: x{ratio:.3f} (counted)")


def double_compute():
    f = coupling_flops()
    coupling = f["invertible", 8] / f["plain", 8]
    dense_big = 1 + inversion_overhead(costs.dense(256, batch=256))
    dense_one = 1 + inversion_overhead(costs.dense(256, batch=1))
    return ({"coupling": coupling, "dense_big": dense_big, "dense_one": dense_one},
            f"FLOPs against backprop: coupling {coupling:.3f} (counted); dense + LU, width 256: "
            f"{dense_big:.2f} at batch 256, {dense_one:.1f} at batch 1 (model)")




def quadratic():
    c = costs.dense(64)
    exponent = math.log(c.activations) / math.log(c.params)
    return ({"exponent": exponent},
            f"width 64, one sample: cache {c.activations} = sqrt of {c.params} parameters "
            f"(exponent {exponent:.2f}, not 2)")


def post_claim(index: int):
    return costs.post_memory_claims()[index]


def arithmetic(index: int, reading: str):
    def evidence():
        c = post_claim(index)
        value = {"growth": c.growth, "savings": c.savings}[reading]
        other = "share of memory A/(P+A)" if reading == "savings" else "growth A/P"
        return ({"matches": float(reading in c.matches), "growth_matches": float("growth" in c.matches)},
                f"{other} = {value:.2%}; A/P = {c.growth:.2%}")
    return evidence


POST_NETWORKS = {
    0: lambda d: costs.dense(64, depth=d),
    1: lambda d: costs.dense(256, depth=d),
    2: lambda d: costs.conv1d(64, 256, 8, depth=d, padding="circular"),
    3: lambda d: costs.conv2d(64, 256, 256, 8, depth=d, padding="circular"),
}


def with_scratch(index: int):
    def evidence():
        c = POST_NETWORKS[index](64)
        achieved = c.net_saving(chunked=True) / c.params
        post = float(post_claim(index).post_percent) / 100
        return ({"achieved": achieved, "post": post},
                f"depth 64, batch 1, inverse's scratch counted: {achieved:+.1%} "
                f"(post {post:.1%})")
    return evidence


def decide_with_scratch(n: dict[str, float]) -> str:
    if n["achieved"] <= 0:
        return "refuted"
    return "confirmed" if n["achieved"] >= 0.9 * n["post"] else "corrected"


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
    return ({"post_over_counted": post / counted, "model_is_counted": float(model == counted), "width": w},
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
    return ({"min_overhead": min(overheads), "coupling": coupling},
            f"inversion's extra FLOPs per training step: >= {min(overheads):.2f} for dense + LU at every width "
            f"and batch (w/(9B) + 1/3), {coupling:.3f} for coupling blocks")


def lu():
    post = costs.post_flops(256, 1)
    lu = costs.dense(256).flops_lu
    return ({"saving": post.inversion / lu},
            f"LU factors alone cost 1/{post.inversion / lu:g} of the explicit inverse's (8/3)w^3; "
            "also more accurate")


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
    shares = {}
    for b in (1, 64):
        conv = costs.conv1d(64, 256, 8, batch=b)
        shares["conv", b] = conv_inverse_flops(64, (256,), b) / (conv.flops_forward + conv.flops_backward)
        shares["dense", b] = inversion_overhead(costs.dense(64, batch=b))
    smaller = all(shares["conv", b] < shares["dense", b] for b in (1, 64))
    return ({"smaller": float(smaller), **{f"{k}_{b}": v for (k, b), v in shares.items()}},
            f"inversion's extra FLOPs per training step (estimate), batch 1 / 64: conv1d C=64, L=256, k=8 "
            f"{shares['conv', 1]:.1f} / {shares['conv', 64]:.2f}; dense width 64 {shares['dense', 1]:.1f} / "
            f"{shares['dense', 64]:.2f}")


def conv_next():
    growth = {c.claim.split(",")[0]: c.growth for c in costs.post_memory_claims()}
    conv = CircularConv2d(3, 3).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (conv.inverse(conv(x)) - x).abs().max().item()
    largest = max(growth, key=growth.get)
    return ({"conv2d_largest": float(largest == "conv2d"), "round_trip": err},
            "the book inverts circular convolutions (CircularConv1d/2d, round trip < 1e-12 in float64); "
            f"the largest A/P of the post's examples is {largest}'s, {growth[largest]:g}")




def revnet():
    f = coupling_flops()
    p = coupling_peaks()
    ratio = f["invertible", 8] / f["plain", 8]
    return ({"ratio": ratio, "flat": p["invertible", 8] - p["invertible", 2]},
            f"RevNet's coupling blocks: FLOPs {ratio:.3f}x backprop, memory flat in depth; RevNet inverts "
            "coupling blocks only, the post also dense layers")
