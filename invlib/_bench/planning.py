"""The planning chapter's networks and its side-by-side measurement of plans and their peers.

Networks (each a flat chain of modules and an input batch):

* :func:`mixed_mlp`: a non-invertible stem (``Linear`` + ``ReLU``), blocks of an MLP coupling,
  an ``LULinear`` and a ``LeakyReLU``, and a ``Linear`` head. At a small batch an
  ``LULinear``'s inverse (a triangular solve against ``w x w`` factors, and their check) costs
  more than running it again, so inverting it is the wrong choice; at a large batch it is not.
* :func:`revnet`: :func:`invlib.image_nets.build`'s RevNet at a reduced size, flattened: stem,
  couplings, the strided non-invertible transitions, head.
* :func:`vit`: :func:`invlib.transformer.vit`, reversible, flattened: patch stem, the duplicated
  streams, the attention/MLP couplings, the averaged streams, the class token, norm and head.

:func:`peers` builds every method the planner is compared with, and :func:`measure` times them
interleaved and measures each one's peak with the allocator-level tracker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint_sequential

from .. import image_nets, transformer
from ..activations import LeakyReLU
from ..compare import interleaved_seconds, training_step
from ..coupling import AdditiveCoupling
from ..lu_linear import LULinear
from ..planner import Planned, all_inverted, flatten


def _mlp(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def mixed_mlp(batch: int, width: int = 256, blocks: int = 6, features: int = 64, classes: int = 10,
              seed: int = 0) -> tuple[list[nn.Module], Tensor]:
    """Stem ``Linear(features, width)`` + ``ReLU``; ``blocks`` x (MLP coupling with hidden
    ``2 width``, ``LULinear(width)``, ``LeakyReLU(0.5)``); head ``Linear(width, classes)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
    for _ in range(blocks):
        layers += [AdditiveCoupling(_mlp(width // 2, 2 * width), _mlp(width // 2, 2 * width)),
                   LULinear(width), LeakyReLU(0.5)]
    layers.append(nn.Linear(width, classes))
    return layers, torch.randn(batch, features)


def revnet(batch: int = 8, size: int = 16, blocks: tuple[int, int, int] = (3, 3, 3),
           widths: tuple[int, int, int, int] = (16, 16, 32, 64), seed: int = 0) -> tuple[list[nn.Module], Tensor]:
    """A RevNet (basic blocks) of ``blocks`` per stage on ``size``-pixel images, as a flat chain."""
    model = image_nets.build(image_nets.Spec("revnet", False, blocks, widths), seed=seed)
    torch.manual_seed(seed + 1)
    return flatten(model), torch.randn(batch, 3, size, size)


class Duplicate(nn.Module):
    """``h -> [h, h]`` along the last dimension: the two streams of a reversible stack."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([h, h], dim=-1)


class Merge(nn.Module):
    """The two streams' mean."""

    def forward(self, h: Tensor) -> Tensor:
        a, b = h.chunk(2, -1)
        return (a + b) / 2


class First(nn.Module):
    """The class token."""

    def forward(self, h: Tensor) -> Tensor:
        return h[:, 0]


def vit(batch: int = 8, width: int = 64, depth: int = 6, heads: int = 4, image: int = 32, patch: int = 4,
        seed: int = 0) -> tuple[list[nn.Module], Tensor]:
    """A reversible ViT as a flat chain: the same modules and function as
    ``invlib.transformer.vit(..., reversible=True)``."""
    model = transformer.vit(width=width, depth=depth, heads=heads, image=image, patch=patch, classes=10,
                            reversible=True, seed=seed)
    layers = [model.stem, Duplicate(), *model.blocks, Merge(), First(), model.norm, model.head]
    torch.manual_seed(seed + 1)
    return layers, torch.randn(batch, 3, image, image)


def checkpointed(layers: Sequence[nn.Module], segments: int) -> Callable[[Tensor], Tensor]:
    """``torch.utils.checkpoint.checkpoint_sequential`` with ``segments`` segments."""
    seq = nn.Sequential(*layers)
    return lambda x: checkpoint_sequential(seq, segments, x, use_reentrant=False)


def peers(layers: Sequence[nn.Module], x: Tensor, segment_counts: Sequence[int],
          compile_budgets: Sequence[float] = (), backend: str = "inductor") -> dict[tuple[str, float], Callable]:
    """Forwards keyed ``(method, setting)``: ``("all-keep", 0)``, ``("all-invert", 0)``,
    ``("checkpoint", s)`` for each segment count, ``("compile", b)`` for each memory budget."""
    from .compiled import compiled_forward
    found: dict[tuple[str, float], Callable] = {("all-keep", 0): Planned(layers, (("cache", 0, len(layers) - 1),)),
                                                ("all-invert", 0): Planned(layers, all_inverted(layers))}
    for s in segment_counts:
        found[("checkpoint", s)] = checkpointed(layers, s)
    for b in compile_budgets:
        found[("compile", b)] = compiled_forward(layers, x, b, backend)
    return found


def step_peak(forward: Callable[[Tensor], Tensor], x: Tensor, params: Sequence[Tensor]) -> int:
    """Peak bytes the c10 allocator hands out during one step ``mean(forward(x)**2).backward()``,
    with the gradients allocated beforehand (:func:`invlib._bench.compiled.allocator_peak`: the
    one instrument that sees compiled code too; on eager code it agrees with
    :func:`invlib.compare.step_memory`'s dispatch-level count, ``tests/test_compiled_peer.py``)."""
    from .compiled import allocator_peak
    for p in params:
        p.grad = torch.zeros_like(p)
    return allocator_peak(lambda: training_step(forward, x))[0]


def measure(forwards: dict, x: Tensor, params: Sequence[Tensor], repeats: int = 5, warmup: int = 1) -> dict:
    """``{key: (peak bytes, step seconds)}``: ``repeats`` steps per forward timed interleaved (so a
    shared machine's drifts hit every method alike), the fastest kept (identical computations then
    agree to a few percent; medians of a few steps differed by up to 7 %), then one step per
    forward for its peak (:func:`step_peak`)."""
    named = {str(k): f for k, f in forwards.items()}
    times, _ = interleaved_seconds(named, x, params, repeats, warmup)
    return {key: (step_peak(forward, x, params), min(times[str(key)]))
            for key, forward in forwards.items()}


def budgets(costs, count: int = 6) -> list[float]:
    """``count`` budgets evenly spaced from the smallest feasible one to the all-kept peak."""
    from ..planner import evaluate, minimum_peak
    low = minimum_peak(costs)
    high = max(low, evaluate((("cache", 0, len(costs) - 1),), costs)[0])
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def frontier(layers: Sequence[nn.Module], x: Tensor, count: int = 6, segment_counts: Sequence[int] | None = None,
             compile_budgets: Sequence[float] = (), backend: str = "inductor", repeats: int = 5) -> dict:
    """Plans at ``count`` budgets and every peer, measured side by side. Returns ``costs``,
    ``plans`` (one per budget) and ``measured`` (``{key: (peak bytes, seconds)}``, plans keyed
    ``("plan", budget)``)."""
    from ..planner import calibrate, plan_for
    if segment_counts is None:
        segment_counts = range(1, min(len(layers), 12) + 1)
    others = peers(layers, x, segment_counts, compile_budgets, backend)  # compiles first: the
    costs = calibrate(layers, x)  # calibration then runs in the process state the steps run in
    plans = [plan_for(costs, b) for b in budgets(costs, count)]
    forwards = {("plan", p.budget): Planned(layers, p) for p in plans}
    forwards.update(others)
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    return {"costs": costs, "plans": plans, "measured": measure(forwards, x, params, repeats)}


#: The chapter's networks: name -> builder of (layers, input).
NETWORKS: dict[str, Callable[[], tuple[list[nn.Module], Tensor]]] = {
    "MLP, batch 256": lambda: mixed_mlp(256),
    "MLP, batch 16": lambda: mixed_mlp(16),
    "RevNet": revnet,
    "reversible ViT": vit,
}

#: torch.compile's activation memory budgets swept.
COMPILE_BUDGETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def run(name: str, backend: str = "aot_eager", count: int = 6, repeats: int = 7) -> dict:
    """One network's plans and peers measured side by side, as plain data (JSON-able):
    ``layers`` (type names), ``actions`` and ``segments``/``budget``/predicted ``peak`` and
    ``seconds`` of each plan, ``measured`` rows ``(method, setting, peak bytes, seconds)``,
    the fitted ``scale`` and ``backend``; and ``costs``, the calibration (not JSON-able)."""
    layers, x = NETWORKS[name]()
    found = frontier(layers, x, count, range(1, len(layers) + 1), COMPILE_BUDGETS, backend, repeats)
    return {
        "costs": found["costs"],  # not JSON: dropped from records
        "network": name,
        "backend": backend,
        "layers": [type(layer).__name__ for layer in layers],
        "invertible": [c.invertible for c in found["costs"].layers],
        "scale": list(found["costs"].scale),
        "plans": [{"budget": p.budget, "segments": [list(s) for s in p.segments], "actions": p.actions(),
                   "peak": p.peak, "seconds": p.seconds} for p in found["plans"]],
        "measured": [[method, setting, peak, seconds] for (method, setting), (peak, seconds) in found["measured"].items()],
    }


PEER_METHODS = ("checkpoint", "compile", "all-invert")


def checks(result: dict, margin: float = 0.05) -> list[dict]:
    """Per plan, the issue's targets: measured peak within the budget (+``margin``); measured
    seconds no more than ``1 + margin`` times the fastest peer (checkpoint_sequential, compile,
    all-invert) that peaked no higher than the plan did, i.e. no peer point dominates the plan
    (``peer`` is ``None`` where every peer peaked higher); predicted seconds and peak against
    measured (relative error)."""
    rows = {(m, s): (peak, sec) for m, s, peak, sec in result["measured"]}
    out = []
    for p in result["plans"]:
        peak, seconds = rows[("plan", p["budget"])]
        peers = [(sec, m, s) for (m, s), (pk, sec) in rows.items() if m in PEER_METHODS and pk <= peak]
        best = min(peers) if peers else None
        out.append({
            "budget": p["budget"], "peak": peak, "seconds": seconds,
            "within_budget": peak <= (1 + margin) * p["budget"],
            "peer": None if best is None else f"{best[1]} {best[2]:g}",
            "peer_seconds": None if best is None else best[0],
            "vs_peer": None if best is None else seconds / best[0],
            "no_slower": best is None or seconds <= (1 + margin) * best[0],
            "time_error": p["seconds"] / seconds - 1,
            "peak_error": p["peak"] / peak - 1,
        })
    return out
