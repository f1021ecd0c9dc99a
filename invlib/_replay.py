"""Replaying a layer's randomness in its reverse step, so dropout draws the same masks.

A reverse step evaluates sub-networks again (a coupling block's F and G), and not in the order
the forward did: the forward runs F then G, the reverse G then F. Dropout, module or functional,
would draw new masks and the rebuilt activations and gradients would be wrong. So the forward
remembers the random-number generator's state just before each sub-network runs, under a name,
and the reverse restores the state of that name just before running it again:

    forward:  rng_point("F"); F(x2); rng_point("G"); G(y1)
    reverse:  rng_point("G"); G(y1); rng_point("F"); F(x2)

``rng_point`` does both: it records while :func:`recording` is active (the forward of one
layer inside :class:`invlib.InvertibleSequential`), restores while :func:`replaying` is active
(that layer's reverse step), and does nothing otherwise. Only the CPU generator and, for CUDA
tensors, the current device's generator are saved; that is what ``torch.utils.checkpoint``
preserves too (its ``preserve_rng_state``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_MODE: ContextVar[tuple[str, dict, torch.device] | None] = ContextVar("invlib_rng_mode", default=None)


def _get(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextmanager
def recording(tape: dict, device: torch.device) -> Iterator[None]:
    """Within: ``rng_point(name)`` stores the generator state in ``tape[(owner, name)]``;
    the state at entry is stored under ``None`` (for layers that name no points)."""
    tape[None] = _get(device)
    token = _MODE.set(("record", tape, device))
    try:
        yield
    finally:
        _MODE.reset(token)


@contextmanager
def replaying(tape: dict, device: torch.device) -> Iterator[None]:
    """Within: the generator starts from the state the forward started from, and
    ``rng_point(name)`` restores the state recorded under that name. On exit the generator is
    back where it was, so a reverse step consumes no randomness of the caller's."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if None in tape:
            _set(tape[None], device)
        token = _MODE.set(("replay", tape, device))
        try:
            yield
        finally:
            _MODE.reset(token)


def rng_point(owner: object, name: str) -> None:
    """Mark the point before sub-network ``name`` of ``owner`` runs (see the module docstring)."""
    mode = _MODE.get()
    if mode is None:
        return
    kind, tape, device = mode
    key = (id(owner), name)
    if kind == "record":
        tape[key] = _get(device)
    elif key in tape:
        _set(tape[key], device)
