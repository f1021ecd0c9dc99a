"""The check before the reverse sweep: every layer's inverse judged at once, on the device.

A reverse step hands its layer's parameter gradients to autograd as soon as it returns, so a
singular weight must be found before the first step, not when the sweep reaches its layer.
:func:`judge_all` runs in the first reverse step of a backward, before it does anything else:

1. each class of judged layers (``Invertible.judge``: dense, LU, convolutions, ELU) judges all
   its layers of the stack in one call, batching same-shaped weights into one factorisation
   where the memory allows, and returns one :class:`invlib._checks.Verdict` per layer, a device
   code; nothing is read back;
2. the codes of every layer are read in one transfer (``deliver``): the only host read of the
   check, whatever the depth. The lowest layer refused raises (no gradient has left yet);
   badly conditioned layers warn;
3. what the factorisations produced is kept for the reverse steps within a :class:`Budget`
   (default: one layer output), so that a dense layer is factorised once per backward rather
   than twice; layers beyond the budget are factorised again in their own step, unchecked.

Layers of your own that override only ``check_inverse`` are checked by calling it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ._state import State
from ._verdict import GROWTH, WARN, Verdicts
from .base import Invertible


class Budget:
    """Bytes the check may use: factors kept for the reverse steps plus the working memory of
    the batch being judged. Kept factors come first; once they fill it, batches shrink to what
    is left (at least one layer), so the check adds at most the budget plus one layer's working
    memory to the step's peak, whatever the depth."""

    __slots__ = ("total", "left")

    def __init__(self, total: int) -> None:
        self.total = self.left = max(int(total), 0)

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` for kept factors if they fit in what is left."""
        if nbytes <= self.left:
            self.left -= nbytes
            return True
        return False

    def batch(self, per_item: int) -> int:
        """How many items of ``per_item`` working bytes fit in what is left (at least one)."""
        return max(1, self.left // max(per_item, 1))

    def chunks(self, count: int, kept: int, working: int) -> Iterator[tuple[int, bool]]:
        """Split ``count`` layers into batches ``(size, keep)``: a batch is kept (its factors,
        ``kept`` bytes a layer, stay for the reverse steps) while kept factors and the batch's
        ``working`` bytes a layer fit in what is left; later batches are only judged."""
        while count:
            size = min(count, self.left // max(kept + working, 1))
            keep = size >= 1
            if keep:
                self.left -= size * kept
            else:
                size = min(count, self.batch(working))
            yield size, keep
            count -= size


def kept_layers(count: int, kept: int, working: int, budget: int) -> int:
    """How many of ``count`` same-shaped layers keep their factors for the reverse steps, the
    rest being factorised again there (as :meth:`Budget.chunks` splits them; for the cost model)."""
    return sum(size for size, keep in Budget(budget).chunks(count, kept, working) if keep)


def applied(state: State, weight: Tensor) -> Tensor:
    """``weight`` as the forward's matmul or convolution applied it: under the forward's autocast
    state, rounded to the autocast dtype (``invlib.base.as_applied``), detached."""
    device, dtype, enabled = state.autocast
    weight = weight.detach()
    if enabled and weight.dtype != torch.float64 and weight.device.type == device:
        return weight.to(dtype)
    return weight


def read(state: State, name: str) -> Tensor:
    """Attribute ``name`` of the layer as its forward read it (parameters substituted back, so a
    parametrised or ``functional_call`` weight is the one the forward used)."""
    layer = state.layer
    for i, (module, _, slot) in enumerate(state.names):  # a plain parameter or buffer of the layer
        if module is layer and slot == name:
            return state.tensors[i]
    with torch.no_grad(), state.substituted(state.tensors):
        return getattr(layer, name)


def judge_all(states: Sequence[State], budget: Budget) -> bool:
    """Judge every layer in ``states`` (forward order) before any gradient leaves (module doc);
    return whether some layer was found badly conditioned (and warned)."""
    groups: dict[type, list[State]] = {}
    for state in reversed(states):  # top first: its held factors are the first to be used (and freed)
        layer = state.layer
        if type(layer).judge is not None:
            groups.setdefault(type(layer), []).append(state)
        elif type(layer).check_inverse is not Invertible.check_inverse:
            try:
                with state.substituted(state.tensors):
                    layer.check_inverse()
            except ValueError as error:
                error.add_note(_note(state))
                raise
    verdicts = Verdicts(sum(len(members) for members in groups.values()))
    for kind, members in groups.items():
        kind.judge(members, budget, verdicts)
    labels = {state.index: state for state in states}
    return bool(verdicts.deliver(lambda index: _note(labels[index])) & (WARN | GROWTH))


def _note(state: State) -> str:
    return (f"InvertibleSequential: found in layer {state.label} ({type(state.layer).__name__}) "
            "before backward handed any gradient to autograd.")
