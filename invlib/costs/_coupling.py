"""The cost of a stack of RevNet additive-coupling blocks, and of gradient checkpointing.

A block splits ``x`` (``B x w``) into halves and computes ``y1 = x1 + F(x2)``,
``y2 = x2 + G(y1)`` with ``F, G = sigma(W h + c)``, ``W`` of shape ``(w/2, w/2)`` (Gomez et al.
2017). Counts are in elements, biases excluded, as in :mod:`invlib.costs._model`.
"""

from __future__ import annotations

import math

from invlib._checks import check_positive_int
from invlib.costs._model import ACTIVATION_SAVES, Cost


def coupling(width: int, depth: int = 1, batch: int = 1, activation: str = "leaky_relu") -> Cost:
    """Costs of ``depth`` additive-coupling blocks of ``width`` features (``width`` even).

    With ``w = width``, ``d = depth``, ``B = batch``: ``params = 2 (w/2)^2 d = w^2 d / 2``,
    ``activations = w B d`` (the post's one output per block), ``flops_forward = B w^2 d``
    (two half-width matmuls per block), ``flops_backward = 2 flops_forward``.

    What autograd saves per block: ``F``'s matmul saves ``x2`` (a view of the block input, which
    the previous block already holds), ``G``'s matmul saves ``y1`` (``w B / 2``), the
    concatenated output is kept by the next block (``w B``), and each activation that saves a
    tensor of its own (LeakyReLU its input, Tanh/Sigmoid/ReLU their output, which nothing else
    shares here) adds ``w B / 2``: ``saved_per_layer = 2.5 w B`` with an activation, ``1.5 w B``
    without. Inverting a block costs one forward of ``F`` and ``G``: ``flops_forward / d`` per
    block; ``flops_lu`` and ``flops_solve`` are ``None`` (no factorisation, no solve).
    """
    w = check_positive_int(width, name="width", owner="costs.coupling")
    d = check_positive_int(depth, name="depth", owner="costs.coupling")
    b = check_positive_int(batch, name="batch", owner="costs.coupling")
    if w % 2:
        raise ValueError(f"costs.coupling: width must be even to split into halves, got {w}")
    if activation not in ACTIVATION_SAVES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_SAVES)}, got {activation!r}")
    half = w // 2
    per = w * b + half * b + (2 * half * b if ACTIVATION_SAVES[activation] is not None else 0)
    forward = 2 * b * half * half * 2 * d
    return Cost("coupling", activation, d, b, params=2 * half * half * d, activations=w * b * d,
                layer_output=w * b, saved_per_layer=per, saved=per * d, flops_forward=forward,
                flops_backward=2 * forward, flops_lu=None, flops_solve=None)


def checkpoint_elements(cost: Cost, segments: int | None = None, modules_per_layer: int = 1) -> int:
    """Activation elements held at the peak of ``checkpoint_sequential`` with ``segments`` segments.

    ``checkpoint_sequential`` cuts a list of ``m = modules_per_layer * depth`` modules (2 when each
    layer is a ``Linear`` and an activation listed separately) into ``segments - 1`` checkpointed
    runs of ``m // segments`` modules, which keep only their input, and a last run of the
    remaining modules, which runs without checkpointing. The backward then recomputes one run at
    a time. The peak is the ``segments`` run inputs plus the graph of the longest run,
    ``saved_per_layer / modules_per_layer`` per module (this counts the run's own input twice:
    an upper estimate by one layer output). Default ``segments = round(sqrt(m))``, which keeps
    the total near ``2 sqrt(m)`` layer outputs: memory grows as the square root of depth, for one
    extra forward pass (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
    """
    per = check_positive_int(modules_per_layer, name="modules_per_layer", owner="costs.checkpoint_elements")
    m = per * cost.depth
    s = max(1, round(math.sqrt(m))) if segments is None else check_positive_int(
        segments, name="segments", owner="costs.checkpoint_elements")
    s = min(s, m)
    size = m // s
    last = m - (s - 1) * size
    return s * cost.layer_output + max(size, last) * cost.saved_per_layer // per
