"""The seed post's checkable statements, each with the book's evidence and a verdict rule.

A :class:`Claim` pairs a short verbatim quotation of the post with an ``evidence`` function (it
calls :mod:`invlib`: the cost model, the NumPy reference, FLOP counts, small allocator-level
measurements; each takes well under a second) and a ``decide`` rule that turns the evidence into
one of four verdicts:

* ``confirmed``: the statement holds as written;
* ``corrected``: the idea holds, the statement as written does not (a number, a condition or a
  reading has to change);
* ``refuted``: the evidence contradicts it;
* ``open``: the evidence does not settle it yet.

:func:`claims` lists them in the post's order; :func:`evaluate` runs every evidence function and
rule. The book's chapter "What the post got right" renders the table, and ``tests/test_ledger.py``
fails when a verdict moves, i.e. when the evidence behind it crosses the rule's threshold. Every
printed number is an exact count or is rounded far from its rounding boundary, so the table does
not depend on the CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import costs, ode
from . import reference as ref
from .compare import chain, step_memory
from .conv import CircularConv2d
from .coupling import AdditiveCoupling
from .memory import MemoryTracker
from .sequential import InvertibleSequential

__all__ = ["VERDICTS", "Claim", "Row", "claims", "evaluate", "conv_inverse_flops"]

VERDICTS = ("confirmed", "corrected", "refuted", "open")


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the post.

    ``quote``: the post's words, verbatim (pieces joined by ``" ... "``); ``topic``: the claim in
    the book's words (may hold MyST math); ``evidence()`` returns ``(numbers, text)``, the deciding
    numbers and a one-line summary of them; ``decide(numbers)`` returns a verdict; ``rule`` states
    that rule in words; ``section``: a MyST cross-reference (the role ``{ref}`` with a section
    label, or ``{doc}`` with a chapter) to where the book shows the evidence at length; ``pending``: what a chapter still being
    written will measure to settle it further, or ``""``.
    """

    key: str
    topic: str
    quote: str
    evidence: Callable[[], tuple[dict[str, float], str]]
    decide: Callable[[dict[str, float]], str]
    rule: str
    section: str
    pending: str = ""


@dataclass(frozen=True)
class Row:
    """A claim with its evidence evaluated: ``numbers``, ``finding`` (text) and ``verdict``."""

    claim: Claim
    numbers: dict[str, float]
    finding: str
    verdict: str


# ---- small shared measurements (cached: several claims read the same numbers)

def _coupling_blocks(width: int, depth: int, seed: int = 0) -> list[AdditiveCoupling]:
    torch.manual_seed(seed)
    half = width // 2
    mlp = lambda: nn.Sequential(nn.Linear(half, half), nn.LeakyReLU(0.5))  # noqa: E731
    return [AdditiveCoupling(mlp(), mlp()) for _ in range(depth)]


@functools.lru_cache(maxsize=None)
def coupling_peaks(width: int = 64, batch: int = 64) -> dict[tuple[str, int], float]:
    """Peak of one training step above the gradients, in activations of the batch, for plain
    autograd and :class:`~invlib.InvertibleSequential` over coupling blocks at depths 2 and 8
    (:func:`invlib.compare.step_memory`, exact bytes)."""
    act = width * batch * 4
    out = {}
    for depth in (2, 8):
        blocks = _coupling_blocks(width, depth)
        params = [p for b in blocks for p in b.parameters()]
        x = torch.randn(batch, width, requires_grad=True)
        for method in ("plain", "checkpoint", "invertible"):
            peak = step_memory(chain(blocks, method), x, params, accumulate=True).peak_above_grads
            out[method, depth] = peak / act
    return out


def _step_flops(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        forward(x).square().mean().backward()
    return counter.get_total_flops()


@functools.lru_cache(maxsize=None)
def coupling_flops(width: int = 64, batch: int = 64) -> dict[tuple[str, int], int]:
    """Matrix-multiply FLOPs of one training step (``FlopCounterMode``), plain and invertible,
    over coupling blocks at depths 4 and 8."""
    out = {}
    for depth in (4, 8):
        blocks = _coupling_blocks(width, depth)
        x = torch.randn(batch, width, requires_grad=True)
        out["plain", depth] = _step_flops(chain(blocks, "plain"), x)
        out["invertible", depth] = _step_flops(InvertibleSequential(*blocks), x)
    return out


def _inversion_overhead(cost: costs.Cost) -> float:
    """FLOPs of inverting a dense stack (LU + solves) per FLOP of its training step."""
    return (cost.flops_lu + cost.flops_solve) / (cost.flops_forward + cost.flops_backward)


def conv_inverse_flops(channels: int, spatial: tuple[int, ...], batch: int) -> float:
    """Leading-order FLOPs of inverting one circular convolution in the Fourier domain.

    With ``n_f`` the ``rfftn`` frequencies of the spatial shape (``N`` pixels): complex LU of
    every ``C x C`` response, ``(8/3) C^3 n_f`` (a complex multiply-add is 8 real FLOPs); two
    complex triangular solves per sample and frequency, ``8 B C^2 n_f``; a forward and an inverse
    real FFT of every channel, ``2 * 2.5 B C N log2 N``. Forming the responses
    (``8 C^2 k n_f``) is left out. An estimate, not a count: ``FlopCounterMode`` sees none of it.
    """
    n = math.prod(spatial)
    n_f = math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
    c, b = channels, batch
    return 8 / 3 * c**3 * n_f + 8 * b * c * c * n_f + 5 * b * c * n * math.log2(n)


def _raises(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except ValueError:
        return True
    return False


def _tiny_net(depth: int = 6, width: int = 8, seed: int = 0):
    layers = ref.random_layers(width=width, depth=depth, seed=seed)
    x = np.random.default_rng(1).standard_normal(width)
    return layers, x


# ---- evidence, one function per claim, in the post's order

def _adjoint_memory():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
    x0 = torch.randn(64, 8)
    peaks = {}
    for steps in (4, 16):
        with MemoryTracker() as mem:
            ode.adjoint_grad(f, x0, 1.0, steps, torch.ones_like)
        peaks["adjoint", steps] = mem.peak_bytes
        with MemoryTracker() as mem:
            ode.rk4(f, x0.clone().requires_grad_(), 1.0, steps).sum().backward()
        peaks["backprop", steps] = mem.peak_bytes
        f.zero_grad(set_to_none=True)
    adj = peaks["adjoint", 16] / peaks["adjoint", 4]
    bp = peaks["backprop", 16] / peaks["backprop", 4]
    return ({"adjoint": adj, "backprop": bp},
            f"peak memory from 4 to 16 RK4 steps: adjoint x{adj:.2f}, backprop through the solver x{bp:.1f}")


def _adjoint_width():
    f = nn.Linear(8, 9)
    refused = _raises(lambda: ode.euler(f, torch.zeros(1, 8), 1.0, 1))
    return ({"refused": float(refused)},
            "a field R^8 -> R^9 is refused: the state of an ODE keeps its width" if refused
            else "a width-changing field was accepted")


@functools.lru_cache(maxsize=None)
def _accumulation():
    width = 8
    x = np.ones(width)
    out = {}
    for blocks in (8, 16):
        net = ref.random_layers(width=width, depth=blocks, seed=3)
        for order, split in (("reverse", 0), ("forward", len(net))):
            book = ref.Ledger()
            ref.accumulate(net, lambda y: y, x, split, book)
            out[order, blocks] = (sum(book.flops.values()), book.peak)
    return out


def _accumulation_orders():
    a = _accumulation()
    ratio = a["forward", 16][0] / a["reverse", 16][0]
    return ({"flop_ratio": ratio},
            f"width 8, 16 blocks: forward mode (constant memory) costs {ratio:.1f}x the FLOPs of reverse mode")


def _accumulation_retraction():
    a = _accumulation()
    fwd_growth = a["forward", 16][1] - a["forward", 8][1]
    rev_growth = a["reverse", 16][1] - a["reverse", 8][1]
    ratio = a["forward", 16][0] / a["reverse", 16][0]
    return ({"fwd_growth": fwd_growth, "rev_growth": rev_growth, "flop_ratio": ratio},
            f"8 -> 16 blocks: reverse mode stores +{rev_growth} floats, forward mode +{fwd_growth} "
            f"at {ratio:.1f}x the FLOPs; no order has both")


def _invertible_network():
    singular = _raises(lambda: ref.Dense(np.array([[1.0, 2.0], [2.0, 4.0]])))
    relu = _raises(lambda: ref.LeakyReLU(negative_slope=0.0))
    return ({"singular_refused": float(singular), "relu_refused": float(relu)},
            "also needs every weight nonsingular (a rank-1 W has no inverse), during all of training; "
            "ReLU is not invertible")


def _memory_constant():
    p = coupling_peaks()
    inv = p["invertible", 8] - p["invertible", 2]
    plain = p["plain", 8] - p["plain", 2]
    return ({"invertible_growth": inv, "plain_growth": plain},
            f"coupling blocks, depth 2 -> 8, peak in activations: invertible {p['invertible', 2]:.1f} -> "
            f"{p['invertible', 8]:.1f}, plain {p['plain', 2]:.1f} -> {p['plain', 8]:.1f}")


def _linear_compute():
    f = coupling_flops()
    ratio = f["invertible", 8] / f["invertible", 4]
    return ({"ratio": ratio}, f"FLOPs of an invertible step, depth 4 -> 8: x{ratio:.3f} (counted)")


def _double_compute():
    f = coupling_flops()
    coupling = f["invertible", 8] / f["plain", 8]
    dense_big = 1 + _inversion_overhead(costs.dense(256, batch=256))
    dense_one = 1 + _inversion_overhead(costs.dense(256, batch=1))
    return ({"coupling": coupling, "dense_big": dense_big, "dense_one": dense_one},
            f"FLOPs against backprop: coupling {coupling:.3f} (counted); dense + LU, width 256: "
            f"{dense_big:.2f} at batch 256, {dense_one:.1f} at batch 1 (model)")


def _pseudocode():
    layers, x = _tiny_net()
    target = np.random.default_rng(2).standard_normal(x.size)
    dL = lambda y: y - target  # noqa: E731
    loss = lambda z: 0.5 * np.sum((ref.forward(layers, z) - target) ** 2)  # noqa: E731
    truth = ref.finite_difference_grad(loss, x, eps=1e-5)
    fs, dfs, inv = ref.post_inputs(layers)
    literal = ref.post_pseudocode(fs, dfs, inv, dL, x)
    fixed = ref.post_pseudocode_corrected(fs, dfs, inv, dL, x)
    literal_err = np.inf if literal.shape != x.shape else float(np.abs(literal - truth).max())
    fixed_err = float(np.abs(fixed - truth).max())
    return ({"literal_error": literal_err, "fixed_error": fixed_err},
            f"as printed it returns a {literal.shape[0]}x{literal.shape[1]} matrix, not a gradient; with two "
            f"lines fixed it matches finite differences to < 1e-09")


def _same_accumulation():
    layers, x = _tiny_net()
    books = {}
    grads = {}
    for name, routine in (("cache", ref.grad_by_caching), ("inversion", ref.grad_by_inversion)):
        books[name] = ref.Ledger()
        grads[name], _ = routine(layers, lambda y: y, x, books[name])
    shared = {k: v for k, v in books["cache"].flops.items()}
    same = all(books["inversion"].flops.get(k) == v for k, v in shared.items())
    extra = sum(v for k, v in books["inversion"].flops.items() if k not in shared)
    equal = bool(np.array_equal(grads["cache"], grads["inversion"]))
    return ({"same_flops": float(same), "same_gradient": float(equal), "extra": extra},
            f"every forward and VJP FLOP count equal ({sum(shared.values())} each), plus {extra} for the "
            f"inverses; input gradient equal bit for bit")


def _quadratic():
    c = costs.dense(64)
    exponent = math.log(c.activations) / math.log(c.params)
    return ({"exponent": exponent},
            f"width 64, one sample: cache {c.activations} = sqrt of {c.params} parameters "
            f"(exponent {exponent:.2f}, not 2)")


def _post_claim(index: int):
    return costs.post_memory_claims()[index]


def _arithmetic(index: int, reading: str):
    def evidence():
        c = _post_claim(index)
        value = {"growth": c.growth, "savings": c.savings}[reading]
        other = "share of memory A/(P+A)" if reading == "savings" else "growth A/P"
        return ({"matches": float(reading in c.matches), "growth_matches": float("growth" in c.matches)},
                f"{other} = {value:.2%}; A/P = {c.growth:.2%}")
    return evidence


_POST_NETWORKS = {
    0: lambda d: costs.dense(64, depth=d),
    1: lambda d: costs.dense(256, depth=d),
    2: lambda d: costs.conv1d(64, 256, 8, depth=d, padding="circular"),
    3: lambda d: costs.conv2d(64, 256, 256, 8, depth=d, padding="circular"),
}


def _with_scratch(index: int):
    def evidence():
        c = _POST_NETWORKS[index](64)
        achieved = c.net_saving(chunked=True) / c.params
        post = float(_post_claim(index).post_percent) / 100
        return ({"achieved": achieved, "post": post},
                f"depth 64, batch 1, inverse's scratch counted: {achieved:+.1%} "
                f"(post {post:.1%})")
    return evidence


def _decide_with_scratch(n: dict[str, float]) -> str:
    if n["achieved"] <= 0:
        return "refuted"
    return "confirmed" if n["achieved"] >= 0.9 * n["post"] else "corrected"


def _batch_linear():
    one, eight = costs.conv1d(64, 256, 8, batch=1), costs.conv1d(64, 256, 8, batch=8)
    ratio = (eight.activations / eight.params) / (one.activations / one.params)
    return ({"ratio": ratio}, f"cache per weight, batch 1 -> 8: x{ratio:g} (model, exact)")


def _larger_batch():
    p = coupling_peaks()
    ratio = p["plain", 8] / p["invertible", 8]
    return ({"ratio": ratio},
            f"coupling blocks, depth 8: a step's batch-sized memory is {ratio:.1f}x smaller by inversion, "
            "so a batch that much larger fits (measured)")


def _inverse_cost():
    w = 4096
    one = costs.dense(w, batch=1)
    full = costs.dense(w, batch=w)
    r1, rw = one.flops_lu / one.flops_forward, full.flops_lu / full.flops_forward
    return ({"at_one": r1, "at_width": rw},
            f"LU / forward pass, width {w}: {r1:.0f}x at batch 1 (forward is quadratic), "
            f"{rw:.2f}x at batch {w}")


def _flop_forward():
    w, d = 256, 4
    post = costs.post_flops(w, d).forward
    model = costs.dense(w, depth=d, batch=1).flops_forward
    net = nn.Sequential(*[nn.Linear(w, w, bias=False) for _ in range(d)])
    counted = costs.counted_flops(net, torch.randn(1, w, requires_grad=True)).forward
    return ({"post_over_counted": post / counted, "model_is_counted": float(model == counted), "width": w},
            f"width {w}, depth {d}, one sample: counted {counted:,}; the post's count is {post / counted:g}x "
            "that, the count for a batch of w")


def _flop_backward():
    w, d = 256, 4
    net = nn.Sequential(*[nn.Linear(w, w, bias=False) for _ in range(d)])
    counted = costs.counted_flops(net, torch.randn(1, w, requires_grad=True))
    post = costs.post_flops(w, d).backward
    return ({"backward_over_forward": counted.backward / counted.forward, "post_over_counted": post / counted.backward},
            f"counted backward = {counted.backward / counted.forward:g}x forward at any size; the post's "
            f"2w^4d^3 is {post / counted.backward:.1e}x the count")


def _flop_inversion():
    w, d = 256, 4
    post = costs.post_flops(w, d)
    model = costs.dense(w, depth=d, batch=1)
    return ({"inversion_over_lu": post.inversion / model.flops_lu, "apply_over_solve": post.apply / model.flops_solve},
            f"solving instead of inverting needs the LU only: 1/{post.inversion / model.flops_lu:g} of (8/3)w^3; "
            f"applying it to one sample costs 1/{post.apply / model.flops_solve:g} of 2w^3")


def _dominates():
    overheads = [_inversion_overhead(costs.dense(w, batch=b)) for w in (256, 1024, 4096)
                 for b in (1, 64, 4096, 65536)]
    f = coupling_flops()
    coupling = f["invertible", 8] / f["plain", 8] - 1
    return ({"min_overhead": min(overheads), "coupling": coupling},
            f"inversion's extra FLOPs per training step: >= {min(overheads):.2f} for dense + LU at every width "
            f"and batch (w/(9B) + 1/3), {coupling:.3f} for coupling blocks")


def _lu():
    post = costs.post_flops(256, 1)
    lu = costs.dense(256).flops_lu
    return ({"saving": post.inversion / lu},
            f"LU factors alone cost 1/{post.inversion / lu:g} of the explicit inverse's (8/3)w^3; "
            "also more accurate")


def _param_jacobian():
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


def _conv_flops():
    shares = {}
    for b in (1, 64):
        conv = costs.conv1d(64, 256, 8, batch=b)
        shares["conv", b] = conv_inverse_flops(64, (256,), b) / (conv.flops_forward + conv.flops_backward)
        shares["dense", b] = _inversion_overhead(costs.dense(64, batch=b))
    smaller = all(shares["conv", b] < shares["dense", b] for b in (1, 64))
    return ({"smaller": float(smaller), **{f"{k}_{b}": v for (k, b), v in shares.items()}},
            f"inversion's extra FLOPs per training step (estimate), batch 1 / 64: conv1d C=64, L=256, k=8 "
            f"{shares['conv', 1]:.1f} / {shares['conv', 64]:.2f}; dense width 64 {shares['dense', 1]:.1f} / "
            f"{shares['dense', 64]:.2f}")


def _conv_next():
    growth = {c.claim.split(",")[0]: c.growth for c in costs.post_memory_claims()}
    conv = CircularConv2d(3, 3).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (conv.inverse(conv(x)) - x).abs().max().item()
    largest = max(growth, key=growth.get)
    return ({"conv2d_largest": float(largest == "conv2d"), "round_trip": err},
            "the book inverts circular convolutions (CircularConv1d/2d, round trip < 1e-12 in float64); "
            f"the largest A/P of the post's examples is {largest}'s, {growth[largest]:g}")


def _analogy():
    torch.manual_seed(0)
    n, hidden = 8, 16
    make = lambda m: nn.Sequential(nn.Linear(m, hidden), nn.Tanh(), nn.Linear(hidden, m)).double()  # noqa: E731
    f, F, G = make(n), make(n // 2), make(n // 2)
    x0 = torch.randn(16, n, dtype=torch.float64)

    def grads(forward, module):
        x = x0.clone().requires_grad_()
        module.zero_grad()
        forward(x).square().sum().mul(0.5).backward()
        return [x.grad, *(p.grad.clone() for p in module.parameters())]

    def worst(a, b):
        return max(((u - v).norm() / v.norm()).item() for u, v in zip(a, b))

    exact = grads(lambda x: ode.euler(f, x, 1.0, 8), f)
    x_bar, theta_bar = ode.adjoint_grad(f, x0, 1.0, 8, lambda y: y, method="euler")
    adjoint_err = worst([x_bar, *theta_bar], exact)
    net = ode.reversible_euler(F, G, 1.0, 8)

    def plain(x):
        for layer in net:
            x = layer(x)
        return x
    inversion_err = worst(grads(net, net), grads(plain, net))
    return ({"adjoint_error": adjoint_err, "inversion_error": inversion_err},
            f"memory flat for both; the adjoint's gradient is off by about {adjoint_err:.0e} "
            "(Euler, 8 steps), inversion through coupling steps is exact to < 1e-12")


def _revnet():
    f = coupling_flops()
    p = coupling_peaks()
    ratio = f["invertible", 8] / f["plain", 8]
    return ({"ratio": ratio, "flat": p["invertible", 8] - p["invertible", 2]},
            f"RevNet's coupling blocks: FLOPs {ratio:.3f}x backprop, memory flat in depth; RevNet inverts "
            "coupling blocks only, the post also dense layers")


# ---- the claims, in the post's order

def claims() -> tuple[Claim, ...]:
    """Every checkable statement of the post, in the order it makes them."""
    return (
        Claim("adjoint-memory", "Neural ODEs train in memory constant in depth by the adjoint method",
              "constant memory scaling as a function of network depth",
              _adjoint_memory, lambda n: "confirmed" if n["adjoint"] < 1.1 < 2 < n["backprop"] else "refuted",
              "confirmed if the adjoint's peak grows < 10% from 4 to 16 steps while backprop's at least doubles",
              "{ref}`adjoint-memory`"),
        Claim("adjoint-width", "The adjoint method needs a constant width",
              "the width of the network must remain constant",
              _adjoint_width, lambda n: "confirmed" if n["refused"] else "refuted",
              "confirmed if a width-changing vector field is refused", "{ref}`adjoint-equations`"),
        Claim("accumulation-orders", "With equal widths every order of Jacobian accumulation costs the same, "
              "so memory can be constant at no cost",
              "all jacobian accumulations require the same number of FLOPs ... constant memory without "
              "needing to make computational tradeoffs",
              _accumulation_orders, lambda n: "refuted" if n["flop_ratio"] > 1.5 else "confirmed",
              "refuted if the constant-memory order (forward mode) costs > 1.5x reverse mode's FLOPs",
              "{ref}`algorithm-accumulation`"),
        Claim("accumulation-retraction", "The retraction: no accumulation order scales memory better",
              "does not enable better scaling of memory through different Jacobian accumulations",
              _accumulation_retraction,
              lambda n: "confirmed" if n["rev_growth"] > 0 and n["fwd_growth"] == 0 and n["flop_ratio"] > 1.5
              else "refuted",
              "confirmed if reverse mode's memory grows with depth and forward mode's, flat, costs > 1.5x the FLOPs",
              "{ref}`algorithm-accumulation`"),
        Claim("invertible-network", "An invertible activation makes a fixed-width network invertible",
              "using an invertible activation makes the entire network invertible",
              _invertible_network,
              lambda n: "corrected" if n["singular_refused"] and n["relu_refused"] else "confirmed",
              "corrected if a network with an invertible activation and a singular weight has no inverse",
              "{ref}`algorithm-setting`",
              pending="Stability chapter: how far from singular the weights and activations must stay, in float32, "
                      "during training"),
        Claim("memory-constant", "Memory constant in depth", "scale memory as a constant instead of a linear "
              "factor of network depth",
              _memory_constant,
              lambda n: "confirmed" if abs(n["invertible_growth"]) < 0.01 and n["plain_growth"] > 1 else "refuted",
              "confirmed if the invertible step's peak moves < 0.01 activations from depth 2 to 8 while plain "
              "autograd's grows", "{ref}`blocks-memory`",
              pending="Training chapter: peak memory over a whole training run, against depth"),
        Claim("linear-compute", "Compute stays linear in depth", "retaining linear computational complexity",
              _linear_compute, lambda n: "confirmed" if abs(n["ratio"] - 2) < 1e-9 else "refuted",
              "confirmed if doubling the depth doubles the counted FLOPs exactly", "{ref}`blocks-coupling-flops`"),
        Claim("double-compute", "About twice backprop's compute",
              "roughly double the compute of backpropagation",
              _double_compute, lambda n: "confirmed" if 1.75 <= n["coupling"] <= 2.25 else "corrected",
              "confirmed if the counted FLOP ratio for coupling blocks is within 1.75-2.25, corrected otherwise",
              "{ref}`blocks-coupling-flops`",
              pending="Compute chapter: measured step-time ratios (coupling, dense/LU, conv) against the FLOP ratio"),
        Claim("pseudocode", "The pseudo-code computes the gradient",
              "aFi = inv(fs[i])(x) ... dFi = dfs[i](aFi) * dFi",
              _pseudocode,
              lambda n: "corrected" if n["literal_error"] > 1e-3 and n["fixed_error"] < 1e-9 else "confirmed",
              "corrected if the listing as printed misses the gradient and the two-line fix matches finite "
              "differences to 1e-9", "{ref}`algorithm-pseudocode`"),
        Claim("same-accumulation", "Backprop by inversion runs backprop's Jacobian products",
              "this performs the same jacobian accumulation as backpropagation",
              _same_accumulation,
              lambda n: "confirmed" if n["same_flops"] and n["same_gradient"] else "refuted",
              "confirmed if the forward and VJP FLOP counts and the input gradient are identical",
              "{ref}`algorithm-same-flops`",
              pending="Stability chapter: the same products at rebuilt points, so equal only up to the rebuild's "
                      "error; its size in float32"),
        Claim("quadratic", "The cache is a quadratic factor of the parameter count",
              "a quadratic factor of the parameter count",
              _quadratic, lambda n: "corrected" if abs(n["exponent"] - 0.5) < 0.01 else "confirmed",
              "corrected if the one-sample cache grows as the square root of the parameter count",
              "{doc}`envelope`"),
        Claim("mem-dense-64", "Dense, width 64: the cache is 1.6% of memory",
              "width 64 has 4096 parameters ... 1.6% memory savings",
              _arithmetic(0, "savings"),
              lambda n: "confirmed" if n["matches"] else ("corrected" if n["growth_matches"] else "refuted"),
              "confirmed if the share of memory rounds to the post's figure; corrected if only the growth A/P does",
              "{doc}`envelope`"),
        Claim("mem-dense-256", "Dense, width 256: 0.4%", "reduced to 0.4% when we consider layers with width 256",
              _arithmetic(1, "savings"),
              lambda n: "confirmed" if n["matches"] else ("corrected" if n["growth_matches"] else "refuted"),
              "as for width 64", "{doc}`envelope`"),
        Claim("mem-conv1d", "Conv1d, 8x64x64 kernel on 256x64: a 50% larger model",
              "train a 50% larger model", _arithmetic(2, "growth"),
              lambda n: "confirmed" if n["matches"] else "corrected",
              "confirmed if the growth A/P rounds to the post's figure", "{doc}`envelope`"),
        Claim("mem-conv2d", "Conv2d, 8x8x64x64 kernels on 256x256x64: a 1700% larger model",
              "models that are 1700% larger", _arithmetic(3, "growth"),
              lambda n: "confirmed" if n["matches"] else "corrected",
              "confirmed if the growth A/P rounds to the post's figure", "{doc}`envelope`"),
        Claim("scratch-dense-64", "The 1.6%, with the inverse's own scratch", "1.6% memory savings",
              _with_scratch(0), _decide_with_scratch,
              "refuted if inversion saves nothing at depth 64; confirmed if it achieves >= 90% of the post's "
              "figure; corrected otherwise", "{doc}`envelope`"),
        Claim("scratch-dense-256", "The 0.4%, with scratch", "reduced to 0.4%", _with_scratch(1),
              _decide_with_scratch, "as above", "{doc}`envelope`"),
        Claim("scratch-conv1d", "The 50%, with scratch", "a 50% larger model", _with_scratch(2),
              _decide_with_scratch, "as above", "{doc}`envelope`"),
        Claim("scratch-conv2d", "The 1700%, with scratch", "1700% larger", _with_scratch(3),
              _decide_with_scratch, "as above", "{doc}`envelope`"),
        Claim("batch-linear", "The saving grows linearly with the batch",
              "this improvement scales linearly with batch sizes",
              _batch_linear, lambda n: "confirmed" if n["ratio"] == 8 else "refuted",
              "confirmed if eight times the batch gives exactly eight times the cache per weight",
              "{doc}`envelope`"),
        Claim("larger-batch", "Larger batches without gradient accumulation",
              "larger batch sizes without the need for gradient accumulation",
              _larger_batch, lambda n: "confirmed" if n["ratio"] > 1.5 else "refuted",
              "confirmed if inversion's batch-sized peak is > 1.5x smaller than plain autograd's",
              "{doc}`measured`",
              pending="Training chapter: the largest batch that fits one memory budget, trained end to end"),
        Claim("inverse-cost", "Inverting a layer costs about a forward pass; both are cubic",
              "a cost comparable (though slightly higher) to the forward pass ... Both are cubic",
              _inverse_cost, lambda n: "corrected" if n["at_one"] > 10 and n["at_width"] < 1 else "confirmed",
              "corrected if the LU costs > 10x the one-sample forward pass (quadratic) and is comparable only "
              "at a batch as large as the width", "{doc}`envelope`",
              pending="Compute chapter: measured time of an LU factorisation against a forward pass"),
        Claim("flop-1", "FLOP item (1): $2w^3d$ for the forward pass",
              "FLOPS for matrix multiplication in the forwards pass",
              _flop_forward,
              lambda n: "corrected" if n["model_is_counted"] and n["post_over_counted"] == n["width"] else "confirmed",
              "corrected if the counted one-sample FLOPs are the post's count divided by w (it holds for a batch of w)",
              "{doc}`envelope`", pending="Compute chapter: forward FLOPs counted at batch 1 and at batch w"),
        Claim("flop-2", "FLOP item (2): $2w^4d^3$ for the backward pass",
              "FLOPS for the backwards jacobiaan accumulations",
              _flop_backward, lambda n: "refuted" if n["backward_over_forward"] == 2 and n["post_over_counted"] > 100
              else "open",
              "refuted if the counted backward is exactly 2x the forward and the post's count > 100x it",
              "{doc}`envelope`", pending="Compute chapter: counted backward FLOPs against 2w^4d^3 as w and d grow"),
        Claim("flop-3", "FLOP item (3): $\\frac83 n^3 d$ to invert, $2w^3d$ to apply",
              "FLOPS for matrix inversions with an additional",
              _flop_inversion, lambda n: "corrected" if n["inversion_over_lu"] == 4 else "confirmed",
              "corrected if solving with the LU factors needs a quarter of the post's inversion count",
              "{doc}`envelope`",
              pending="Compute chapter: LU factorisation and triangular solves timed against (8/3)n^3 d + 2w^3 d"),
        Claim("flop-dominates", "(2) dominates, so inversion's overhead vanishes for large models",
              "(2) comes to dominate the FLOP cost ... becomes neglegable for very large models",
              _dominates, lambda n: "refuted" if n["min_overhead"] >= 1 / 3 and n["coupling"] >= 1 / 3 - 1e-9
              else "confirmed",
              "refuted if the overhead stays >= 1/3 of a training step at every size",
              "{doc}`envelope`", pending="Compute chapter: measured overhead against model size"),
        Claim("lu", "Solving with an LU factorisation instead of inverting helps slightly",
              "can likely be optimized slightly ... using LU decomposition",
              _lu, lambda n: "corrected" if n["saving"] >= 2 else "confirmed",
              "confirmed if LU saves < 2x of the inversion's FLOPs; corrected (more than slightly) otherwise",
              "{ref}`blocks-lu`", pending="Compute chapter: measured time of explicit inverse against LU solve"),
        Claim("param-jacobian", "Item (2) might be optimised because each layer uses few of the parameters",
              "most of our model parameters are not used directly in any given layer",
              _param_jacobian, lambda n: "confirmed" if n["param_share"] == 1 else "open",
              "confirmed if all weight gradients together cost exactly one forward pass: reverse mode "
              "already exploits it", "{doc}`envelope`"),
        Claim("conv-flops", "For convolutions the same calculation is similar, inversion less dominant",
              "would be similar but smaller",
              _conv_flops, lambda n: "confirmed" if n["smaller"] else "open",
              "confirmed if the estimated inversion overhead of the post's conv1d is below the dense layer's "
              "at batch 1 and 64; open otherwise", "{ref}`blocks-conv`",
              pending="Compute chapter: counted and timed inverse of CircularConv1d/2d against a training step"),
        Claim("conv-next", "Next: inverting convolutional models, where memory savings are greatest",
              "inverting convolutional models where we expect to see the greatest memory savings",
              _conv_next,
              lambda n: "confirmed" if n["conv2d_largest"] and n["round_trip"] < 1e-12 else "open",
              "confirmed if conv2d has the largest A/P and a circular conv2d inverts to 1e-12",
              "{ref}`blocks-conv`"),
        Claim("adjoint-analogy", "Backprop by inversion is the discrete analogue of the adjoint method",
              "Comparison to Adjoint Differentiation of ODEs (WIP)",
              _analogy,
              lambda n: "corrected" if n["adjoint_error"] > 1e-6 and n["inversion_error"] < 1e-12 else "confirmed",
              "corrected if memory behaves alike but the adjoint's gradient misses the discrete one (> 1e-6) "
              "while inversion's matches it (< 1e-12)", "{ref}`adjoint-gradient`"),
        Claim("revnet", "The May 2024 update: RevNet already did this",
              "most of these ideas are reflected already in",
              _revnet, lambda n: "confirmed" if abs(n["ratio"] - 4 / 3) < 1e-9 and abs(n["flat"]) < 0.01
              else "open",
              "confirmed if RevNet coupling blocks train in flat memory at exactly 4/3 of backprop's FLOPs",
              "{ref}`blocks-coupling-flops`"),
    )


def evaluate(selected: tuple[Claim, ...] | None = None) -> list[Row]:
    """Run each claim's evidence and rule; a rule returning anything but a verdict is an error."""
    rows = []
    for claim in claims() if selected is None else selected:
        numbers, finding = claim.evidence()
        verdict = claim.decide(numbers)
        if verdict not in VERDICTS:
            raise ValueError(f"claim {claim.key!r}: the rule returned {verdict!r}, expected one of {VERDICTS}")
        rows.append(Row(claim, numbers, finding, verdict))
    return rows
