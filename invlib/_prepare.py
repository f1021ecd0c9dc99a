"""The check before the reverse sweep: every layer's inverse judged at once, on the device.

A reverse step hands its layer's parameter gradients to autograd as soon as it returns, so a
singular weight must be found before the first step, not when the sweep reaches its layer.
:func:`judge_all` runs in the first reverse step of a backward, before it does anything else:

1. each class of judged layers (``Invertible.judge``: dense, LU, convolutions, ELU) judges all
   its layers of the stack in one call, batching same-shaped weights into one factorisation
   where the memory allows, and returns one code per layer (``invlib._verdict.code_of``), an ``int8``
   tensor on the device; nothing is read back;
2. the codes of every layer are read in one transfer (``Verdicts.deliver``): the only host read of the
   check, whatever the depth. The lowest layer refused raises (no gradient has left yet);
   badly conditioned layers warn;
3. what the factorisations produced may be kept for the reverse steps within a :class:`Budget`
   (``scratch_bytes``; by default nothing is kept, which keeps the step's memory exactly flat
   in depth), so that a dense layer is factorised once per backward rather than twice; layers
   beyond it are factorised again in their own step, unchecked.

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
    """What the check may spend on memory: ``working`` bytes for the batch of layers it judges
    at once (freed before the next batch; default one layer output, so the check never holds
    more than the sweep itself will), and ``keep`` bytes of factors kept for the reverse steps
    (``InvertibleSequential(scratch_bytes=...)``; default none, which keeps memory exactly flat
    in depth at the price of a second factorisation in each step)."""

    __slots__ = ("working", "keep")

    def __init__(self, working: int, keep: int = 0) -> None:
        self.working, self.keep = max(int(working), 0), max(int(keep), 0)

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` of kept factors if they fit in what is left."""
        if nbytes <= self.keep:
            self.keep -= nbytes
            return True
        return False

    def batch(self, per_item: int) -> int:
        """How many items of ``per_item`` working bytes one batch may hold (at least one)."""
        return max(1, self.working // max(per_item, 1))

    def chunks(self, count: int, kept: int, working: int) -> Iterator[tuple[int, bool]]:
        """Split ``count`` layers into batches ``(size, keep)`` of at most :meth:`batch` layers;
        a batch is kept (its factors, ``kept`` bytes a layer, stay for the reverse steps) while
        they fit in what is left to keep."""
        while count:
            size = min(count, self.batch(working))
            keep = kept > 0 and self.keep >= kept
            if keep:
                size = min(size, self.keep // kept)
                self.keep -= size * kept
            yield size, keep
            count -= size


def kept_layers(count: int, kept: int, working: int, output: int, keep: int = 0) -> int:
    """How many of ``count`` same-shaped layers keep their factors for the reverse steps (the
    rest are factorised again there), as :meth:`Budget.chunks` splits them with a working
    budget of one layer ``output`` and ``keep`` bytes to keep; for the cost model."""
    return sum(size for size, kept_ in Budget(output, keep).chunks(count, kept, working) if kept_)


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


def judged(state: State) -> bool:
    """Whether :func:`judge_all` reads ``state``'s layer: its class judges, or checks its inverse."""
    kind = type(state.layer)
    return kind.judge is not None or kind.check_inverse is not Invertible.check_inverse


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
    verdicts = Verdicts()
    for kind, members in groups.items():
        kind.judge(members, budget, verdicts)
    labels = {state.index: state for state in states}
    return bool(verdicts.deliver(lambda index: _note(labels[index])) & (WARN | GROWTH))


def _note(state: State) -> str:
    return (f"InvertibleSequential: found in layer {state.label} ({type(state.layer).__name__}) "
            "before backward handed any gradient to autograd.")
