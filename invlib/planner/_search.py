"""The fastest plan within a memory budget: a dynamic program over the chain.

A plan cuts the chain of layers ``f_0, ..., f_{D-1}`` into segments, each differentiated one way:

* ``cache``: plain autograd; every tensor the layers' backward needs is saved in forward;
* ``recompute``: a checkpoint; the segment's input is saved, and its forward runs again, taped,
  just before its backward (``torch.utils.checkpoint``);
* ``invert``: an :class:`~invlib.InvertibleSequential`; nothing is saved but the segment's
  output, and each layer's input is rebuilt from its output by the layer's reverse step.

Memory (bytes alive above the model, its gradients and the step's input). Going forward, each
segment leaves behind what it keeps until its backward; going backward, segment ``s`` runs while
everything the segments before it keep is still alive and everything after it is gone, so

    peak = max_s ( sum_{r < s} keep_r + work_s ),    then also  sum_r keep_r + loss work,

where ``keep`` and ``work`` (the segment's largest transient: a layer's saved tensors, its
cotangents and backward scratch, or a reverse step's rebuilt input and inversion scratch) come
from :func:`invlib.planner.calibrate`. An activation is stored once however many segments
need it: an inverting segment's output is the next checkpoint's input, and a cached layer
that saves its output shares it with the next layer that saves its input.

Time: a cached layer costs a taped forward and a backward; a recomputed one two taped forwards
and a backward; an inverted one an untaped forward and a reverse step; each checkpoint and each
inverting container adds its fixed cost.

The program runs over the boundaries ``p = 0..D`` of the chain; its state is the bytes kept so
far (in ``bins`` steps of ``budget / bins``, rounded up, so a plan it accepts fits) and whether
``x_p`` is stored already, or ends an open inverting segment. Caching and inverting extend a
segment one layer at a time; a checkpoint spans ``i..j``, so the program is ``O(D^2 bins)``
(numpy over the bins). With inverting forbidden it is optimal single-level checkpointing
(Chen et al. 2016 place sqrt(D) equal segments; revolve's nested, binomial schedules are not in
this space). ``anchor_every``'s schedules (inverting segments of ``k`` layers, each keeping its
output) are in the space, but never faster: anchors buy accuracy, which the model does not
count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ._costs import Costs, LayerCost

KINDS = ("cache", "recompute", "invert")
_CACHE, _RECOMPUTE, _INVERT = range(3)


@dataclass(frozen=True)
class Plan:
    """Segments ``(kind, first, last)`` (layer indices, inclusive) covering the chain in order,
    with the predicted peak bytes and seconds of one training step, and the budget it was made
    for (``None`` for a plan written by hand)."""

    segments: tuple[tuple[str, int, int], ...]
    peak: int
    seconds: float
    budget: int | None = None

    def actions(self) -> list[str]:
        """Per layer: ``"cache"``, ``"store"`` (the first layer of a checkpoint: its input is
        stored), ``"recompute"`` or ``"invert"``."""
        out = []
        for kind, first, last in self.segments:
            for i in range(first, last + 1):
                out.append("store" if kind == "recompute" and i == first else kind)
        return out

    def __str__(self) -> str:
        parts = [f"{kind} {first}" + (f"-{last}" if last > first else "") for kind, first, last in self.segments]
        return (f"Plan({', '.join(parts)}; peak {self.peak / 2**20:.2f} MiB, "
                f"{self.seconds * 1e3:.1f} ms)")


def _cache_steps(layers: Sequence[LayerCost], stored: bool) -> Iterator[tuple[int, int, bool]]:
    """Caching ``layers`` in a row after an input that is ``stored`` or not: after each layer,
    (bytes kept so far, largest transient above what was kept before, whether its output is stored)."""
    kept = work = 0
    for c in layers:
        if c.saves_input and not stored:
            kept += c.in_bytes
        kept += c.internal
        work = max(work, kept + c.forward_extra + c.out_bytes)
        stored = c.saves_output
        if stored:
            kept += c.out_bytes
        work = max(work, kept + c.out_bytes + c.backward_extra)
        yield kept, work, stored


def _cache_walk(layers: Sequence[LayerCost], stored: bool) -> tuple[int, int, bool]:
    """:func:`_cache_steps` after the last layer."""
    found = (0, 0, stored)
    for found in _cache_steps(layers, stored):
        pass
    return found


def _segment(kind: str, layers: Sequence[LayerCost], stored: bool) -> tuple[int, int, bool]:
    """(bytes the segment keeps, its largest transient above what earlier segments keep,
    whether its output is stored); an inverting segment's output is kept by its container."""
    if kind == "cache":
        return _cache_walk(layers, stored)
    if kind == "recompute":
        first = 0 if stored else layers[0].in_bytes
        _, work, _ = _cache_walk(layers, True)
        return first, first + work, False
    work = max(max(c.forward_extra, 2 * c.out_bytes + c.reverse_extra) for c in layers)
    return layers[-1].out_bytes, work, True


def _layer_seconds(kind: int, c: LayerCost, costs: Costs) -> float:
    if kind == _CACHE:
        return costs.scale[0] * (c.t_forward + c.t_backward)
    if kind == _RECOMPUTE:
        return costs.scale[1] * (2 * c.t_forward + c.t_backward)
    return costs.scale[2] * (c.t_replay + c.t_reverse)


def _seconds(kind: str, layers: Sequence[LayerCost], costs: Costs) -> float:
    code = KINDS.index(kind)
    fixed = (0.0, costs.t_checkpoint, costs.t_container)[code]
    return fixed + sum(_layer_seconds(code, c, costs) for c in layers)


def evaluate(segments: Sequence[tuple[str, int, int]], costs: Costs) -> tuple[int, float]:
    """Predicted (peak bytes, seconds) of one step by ``segments`` (see the module doc)."""
    _check_segments(segments, costs)
    kept, peak, stored, seconds = 0, 0, True, costs.t_loss  # the step's input exists already
    for kind, first, last in segments:
        layers = costs.layers[first:last + 1]
        keep, work, stored = _segment(kind, layers, stored)
        peak = max(peak, kept + work)
        kept += keep
        seconds += _seconds(kind, layers, costs)
    out = costs.layers[-1].out_bytes
    peak = max(peak, kept + (0 if stored else out) + costs.loss_extra)
    return peak, seconds


def _check_segments(segments: Sequence[tuple[str, int, int]], costs: Costs) -> None:
    expected = 0
    for kind, first, last in segments:
        if kind not in KINDS:
            raise ValueError(f"invlib.plan: segment kind must be one of {KINDS}, got {kind!r}")
        if first != expected or last < first:
            raise ValueError(f"invlib.plan: segments must cover the layers 0..{len(costs) - 1} in order, "
                             f"got {list(segments)}")
        if kind == "invert":
            bad = [i for i in range(first, last + 1) if not costs.layers[i].invertible]
            if bad:
                raise ValueError(f"invlib.plan: layers {bad} are not invlib.Invertible, so they cannot be inverted; "
                                 "cache or recompute them")
        expected = last + 1
    if expected != len(costs):
        raise ValueError(f"invlib.plan: segments must cover the layers 0..{len(costs) - 1}, got {list(segments)}")


def search(costs: Costs, budget: float, bins: int = 1000,
           kinds: Sequence[str] = KINDS) -> tuple[tuple[str, int, int], ...] | None:
    """The fastest segments whose predicted peak is at most ``budget`` bytes, or ``None``.
    ``kinds``: the segment kinds allowed (e.g. ``("cache", "recompute")``)."""
    layers, D = costs.layers, len(costs)
    if budget <= 0:
        return None
    unit = budget / bins
    M = bins + 1
    inf = math.inf

    def up(n: float) -> int:
        return int(math.ceil(n / unit - 1e-9))

    def limit(work: float) -> int:  # the largest bin from which a transient of ``work`` fits
        return int(math.floor((budget - work) / unit + 1e-9))

    value = np.full((D + 1, 3, M), inf)
    prev = np.full((D + 1, 3, M, 3), -1, dtype=np.int32)  # (position, state, bin) it came from
    how = np.full((D + 1, 3, M), -1, dtype=np.int8)
    value[0, 1, 0] = 0.0  # the input is stored already (it is the caller's)
    idx = np.arange(M)

    def relax(p: int, src: np.ndarray, src_state: np.ndarray, src_bin: np.ndarray, q: int, state: int,
              shift: int, lim: int, dt: float, kind: int) -> None:
        n = min(lim, M - 1 - shift) + 1
        if n <= 0:
            return
        cand = src[:n] + dt
        target = value[q, state, shift:shift + n]
        better = cand < target
        if not better.any():
            return
        sel = np.nonzero(better)[0]
        target[sel] = cand[sel]
        prev[q, state, shift + sel] = np.stack([np.full(len(sel), p), src_state[sel], src_bin[sel]], axis=1)
        how[q, state, shift + sel] = kind

    for p in range(D):
        now = value[p]
        if not np.isfinite(now).any():
            continue
        # close an open inverting segment at x_p: its container keeps x_p
        closed_val = [now[0].copy(), now[1].copy()]
        closed_state = [np.zeros(M, dtype=np.int32), np.ones(M, dtype=np.int32)]
        closed_bin = [idx.astype(np.int32), idx.astype(np.int32)]
        if p > 0 and np.isfinite(now[2]).any():
            shift = up(layers[p - 1].out_bytes)
            if shift < M:
                cand = np.full(M, inf)
                cand[shift:] = now[2][:M - shift] + costs.t_container
                better = cand < closed_val[1]
                closed_val[1] = np.where(better, cand, closed_val[1])
                closed_state[1] = np.where(better, 2, 1).astype(np.int32)
                closed_bin[1] = np.where(better, idx - shift, idx).astype(np.int32)
        c = layers[p]
        if "cache" in kinds:
            for s in (0, 1):
                keep, work, stored = _cache_walk([c], bool(s))
                relax(p, closed_val[s], closed_state[s], closed_bin[s], p + 1, int(stored), up(keep), limit(work),
                      _layer_seconds(_CACHE, c, costs), _CACHE)
        if "invert" in kinds and c.invertible:
            _, work, _ = _segment("invert", [c], True)
            for s in (0, 1, 2):
                relax(p, now[s], np.full(M, s, dtype=np.int32), idx.astype(np.int32), p + 1, 2, 0, limit(work),
                      _layer_seconds(_INVERT, c, costs), _INVERT)
        if "recompute" in kinds:
            for s in (0, 1):
                src = closed_val[s]
                if not np.isfinite(src).any():
                    continue
                first = 0 if s else c.in_bytes
                seconds = costs.t_checkpoint
                # the segment p..j, one layer longer each time: its tape is what caching p..j keeps
                for j, (_, work, _) in enumerate(_cache_steps(layers[p:], True), start=p):
                    seconds += _layer_seconds(_RECOMPUTE, layers[j], costs)
                    lim = limit(first + work)
                    if lim < 0:
                        break
                    relax(p, src, closed_state[s], closed_bin[s], j + 1, 0, up(first), lim, seconds,
                          _RECOMPUTE)
    # the end: close an open inverting segment; the loss's backward runs on top of everything
    out = layers[-1].out_bytes
    best, where = inf, None
    for s in (0, 1, 2):
        extra_bins = up(out) if s == 2 else 0
        dt = costs.t_container if s == 2 else 0.0
        work = (0 if s else out) + costs.loss_extra
        for b in range(M):
            v = value[D, s, b]
            if v + dt < best and b + extra_bins <= limit(work):
                best, where = v + dt, (s, b)
    if where is None:
        return None
    # walk back
    segments: list[tuple[str, int, int]] = []
    q, s, b = D, *where
    open_end = q - 1 if s == 2 else None
    while q > 0:
        kind = int(how[q, s, b])
        p, ps, pb = (int(v) for v in prev[q, s, b])
        if kind == _INVERT:
            if open_end is None:
                open_end = q - 1
            if ps != 2:  # the segment starts here
                segments.append(("invert", p, open_end))
                open_end = None
        else:
            if ps == 2:  # an inverting segment ended at x_p before this one
                open_end = p - 1
            if kind == _CACHE:
                segments.append(("cache", p, q - 1))
            else:
                segments.append(("recompute", p, q - 1))
        q, s, b = p, ps, pb
    segments.reverse()
    return tuple(_merge(segments))


def _merge(segments: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Adjacent cached layers as one segment (caching composes layer by layer)."""
    out: list[tuple[str, int, int]] = []
    for kind, first, last in segments:
        if out and kind == "cache" and out[-1][0] == "cache":
            out[-1] = ("cache", out[-1][1], last)
        else:
            out.append((kind, first, last))
    return out
