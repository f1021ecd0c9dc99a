"""Replaying a layer's randomness in its reverse step, so dropout draws the same masks.

A reverse step evaluates sub-networks again (a coupling block's F and G), and not in the order
the forward did: the forward runs F then G, the reverse G then F. Dropout, module or functional,
would draw new masks and the rebuilt activations and gradients would be wrong. So the forward
remembers the generators' states just before each sub-network runs, under a name, and the
reverse restores the states of that name just before running it again:

    forward:  rng_point("F"); F(x2); rng_point("G"); G(y1)
    reverse:  rng_point("G"); G(y1); rng_point("F"); F(x2)

``rng_point`` does both: it records while :func:`recording` is active (the forward of one
layer inside :class:`invlib.InvertibleSequential`), restores while :func:`replaying` is active
(that layer's reverse step), and does nothing otherwise.

Which generators: torch's CPU generator, the current CUDA device's for CUDA tensors (what
``torch.utils.checkpoint``'s ``preserve_rng_state`` covers), and any ``torch.Generator`` the
container was given (``InvertibleSequential(..., generators=[g])``). Other sources of randomness
(numpy, Python's ``random``, a generator not passed in) cannot be replayed.

Which layers: a layer whose every module is known not to draw random numbers (invlib's own
layers say so with ``draws_random = False``; torch's deterministic modules, such as ``Linear``,
``LayerNorm`` or ``Tanh``, are listed in :data:`DETERMINISTIC`) and has no forward hooks is not
watched at all (:func:`may_draw`). Any other module, a custom one included, is assumed to draw.

What is kept: a state is stored only where a generator moved. A :class:`Tape` compares the
states at the end of the layer's forward with those at its start and forgets everything if no
generator moved (a layer without dropout stores nothing); a point whose states equal the
previous point's shares that point's tensors. The CPU generator's state is 5,056 bytes (a
Mersenne twister); a CUDA generator's is 16 bytes (seed and offset). These tensors are created
outside the dispatcher, so :mod:`invlib.memory` cannot see them being made; every state made
here is announced to the functions in :data:`LISTENERS`, which the memory tracker uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

#: Called with every state tensor this module creates (``invlib.memory.MemoryTracker`` listens).
LISTENERS: list[Callable[[Tensor], None]] = []

_MODE: ContextVar[tuple[str, Tape] | None] = ContextVar("invlib_rng_mode", default=None)


#: torch.nn modules whose forward draws no random numbers (matched by exact type: a subclass may
#: override forward). Dropout, RReLU, fractional pooling and modules with dropout inside
#: (attention, transformer layers, recurrent nets) are left out.
DETERMINISTIC = frozenset(getattr(nn, name) for name in (
    "Identity Linear Bilinear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d "
    "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm LayerNorm GroupNorm RMSNorm LocalResponseNorm "
    "InstanceNorm1d InstanceNorm2d InstanceNorm3d Embedding EmbeddingBag Flatten Unflatten Fold Unfold "
    "Sequential ModuleList ModuleDict ParameterList ParameterDict "
    "ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU GLU SiLU Mish Tanh Sigmoid Hardtanh Hardswish Hardsigmoid "
    "Hardshrink Softshrink Tanhshrink Threshold Softplus Softsign LogSigmoid Softmax Softmin LogSoftmax "
    "Softmax2d MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d LPPool1d LPPool2d LPPool3d "
    "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d "
    "AdaptiveMaxPool3d Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle PixelUnshuffle "
    "ChannelShuffle ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d "
    "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d "
    "CircularPad1d CircularPad2d CircularPad3d CosineSimilarity PairwiseDistance").split())


def may_draw(modules: Sequence[nn.Module]) -> bool:
    """Whether a forward through ``modules`` (a layer and its sub-modules) may draw random
    numbers: some module is not known to be deterministic. Forward hooks, which may draw too,
    are checked at each forward (``invlib._state.Layout.hooked_forward``)."""
    return any(getattr(m, "draws_random", True) if hasattr(m, "draws_random") else type(m) not in DETERMINISTIC
               for m in modules)


def generators_for(device: torch.device, extra: Sequence[torch.Generator] = ()) -> tuple[torch.Generator, ...]:
    """The generators a layer on ``device`` may draw from: torch's CPU generator, the CUDA
    device's (for CUDA), and ``extra``."""
    found = [torch.default_generator]
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        found.append(torch.cuda.default_generators[index])
    found.extend(g for g in extra if all(g is not f for f in found))
    return tuple(found)


def _states(generators: tuple[torch.Generator, ...]) -> tuple[Tensor, ...]:
    states = tuple(g.get_state() for g in generators)
    for listen in LISTENERS:
        for state in states:
            listen(state)
    return states


def _same(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return all(x is y or torch.equal(x, y) for x, y in zip(a, b))


class Tape:
    """The generator states one layer's forward started from and met at each named point.

    Empty (falsy) when the forward moved no generator: nothing to replay, nothing stored.
    """

    __slots__ = ("generators", "points", "_last")

    def __init__(self, generators: tuple[torch.Generator, ...]) -> None:
        self.generators = generators
        self.points: dict[object, tuple[Tensor, ...]] = {}
        self._last: tuple[Tensor, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.points)

    def _mark(self, key: object) -> None:
        states = _states(self.generators)
        if self._last and _same(states, self._last):
            states = self._last  # nothing drawn since the previous point: share its tensors
        self.points[key] = self._last = states


@contextmanager
def recording(tape: Tape) -> Iterator[None]:
    """Within: the states at entry and at each ``rng_point`` are recorded on ``tape``; on exit
    the tape is emptied again if no generator moved."""
    tape._mark(None)
    token = _MODE.set(("record", tape))
    try:
        yield
    finally:
        _MODE.reset(token)
        if _same(_states(tape.generators), tape.points[None]):
            tape.points.clear()
        tape._last = ()


@contextmanager
def replaying(tape: Tape) -> Iterator[None]:
    """Within: the generators start from the states the forward started from, and
    ``rng_point(name)`` restores the states recorded under that name. On exit the generators are
    back where they were, so a reverse step consumes none of the caller's random numbers.
    An empty tape replays nothing and costs nothing."""
    if not tape:
        yield
        return
    saved = tuple(g.get_state() for g in tape.generators)
    _set(tape, tape.points[None])
    token = _MODE.set(("replay", tape))
    try:
        yield
    finally:
        _MODE.reset(token)
        _set(tape, saved)


def _set(tape: Tape, states: tuple[Tensor, ...]) -> None:
    for generator, state in zip(tape.generators, states):
        generator.set_state(state)


def rng_point(owner: object, name: str) -> None:
    """Mark the point before sub-network ``name`` of ``owner`` runs (see the module docstring)."""
    mode = _MODE.get()
    if mode is None:
        return
    kind, tape = mode
    key = (id(owner), name)
    if kind == "record":
        tape._mark(key)
    elif key in tape.points:
        _set(tape, tape.points[key])
