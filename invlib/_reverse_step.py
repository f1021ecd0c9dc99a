"""One autograd node per layer: the reverse step of :class:`invlib.InvertibleSequential`.

Forward: ``y = layer(x)`` with nothing taped and nothing saved; the node's inputs are ``x``, the
optional context and every tensor the layer reads (:class:`_State`), so autograd knows where
each layer's gradients go. Backward: take ``x_k`` from the :class:`_Relay`, run

    (x_{k-1}, x_bar_{k-1}, theta_bar_k) = layer_k.reverse(x_k, x_bar_k)

on leaf aliases of the layer's tensors (under the forward's random state and autocast state),
leave ``x_{k-1}`` in the relay for node ``k-1`` and return ``x_bar_{k-1}`` and ``theta_bar_k`` to
autograd, which accumulates them (hooks, DDP) before it calls node ``k-1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import conditioning_judged
from ._replay import recording, replaying
from ._storage import shares_memory, sole_reference
from .base import Invertible


def _unshared(x: Tensor, x_bar: Tensor, y: Tensor, y_bar: Tensor) -> bool:
    """True if a reverse step's results share no memory with its inputs: then they are ours to reuse
    (a layer may return its input itself, e.g. an identity, which stays the caller's)."""
    return not (shares_memory(x, y, y_bar) or shares_memory(x_bar, y, y_bar))


class _State:
    """Every tensor one layer reads: the (module, dict, name) slots of its parameters and buffers
    and what they hold when forward runs (a parametrisation's ``original``, or what
    ``torch.func.functional_call`` substituted), with their version counters after forward."""

    def __init__(self, layer: Invertible, index: int) -> None:
        self.layer, self.index = layer, index
        self.slots = [(module, kind, name) for module in layer.modules()
                      for kind in ("_parameters", "_buffers")
                      for name, t in getattr(module, kind).items() if t is not None]
        self.tensors = tuple(getattr(module, kind)[name] for module, kind, name in self.slots)
        self.versions: list[int] = []
        # Buffers of modules in training mode as they are *before* forward: a forward may update
        # them (batch-norm running statistics, spectral norm's power iteration), and the reverse
        # step must start from the same values and leave the real ones updated once.
        self.before = {i: t.clone() for i, ((module, kind, _), t) in enumerate(zip(self.slots, self.tensors))
                       if kind == "_buffers" and module.training}
        self.rng: dict = {}  # generator states before each sub-network (invlib._replay)

    def leaves(self) -> list[Tensor]:
        """What the reverse step reads: detached leaf aliases of the parameters (their gradients
        are collected there) and fresh copies of the pre-forward training-mode buffers."""
        return [self.before[i] if i in self.before
                else t.detach().requires_grad_(t.requires_grad and t.is_floating_point())
                for i, t in enumerate(self.tensors)]

    def record_versions(self) -> None:
        self.versions = [t._version for t in self.tensors]

    def check_versions(self, index: int) -> None:
        for (module, kind, name), t, version in zip(self.slots, self.tensors, self.versions):
            if t._version != version:
                what = "parameter" if kind == "_parameters" else "buffer"
                raise RuntimeError(
                    f"InvertibleSequential: layer {index} ({type(self.layer).__name__}) {what} "
                    f"{type(module).__name__}.{name} was modified by an inplace operation between "
                    f"forward and backward (version {version} -> {t._version}); one of the variables "
                    "needed for gradient computation has been modified by an inplace operation. "
                    "Call backward before changing parameters (e.g. before optimizer.step())."
                )

    @contextmanager
    def substituted(self, tensors: Sequence[Tensor]) -> Iterator[None]:
        """Let the layer read ``tensors`` instead of what its slots hold now, for the duration."""
        held = [getattr(module, kind)[name] for module, kind, name in self.slots]
        try:
            for (module, kind, name), t in zip(self.slots, tensors):
                getattr(module, kind)[name] = t
            yield
        finally:
            for (module, kind, name), t in zip(self.slots, held):
                getattr(module, kind)[name] = t


class _Relay:
    """The activation handed from one reverse step to the next, outside autograd's tape.

    ``y`` is the output of layer ``index`` (the forward's result at first), ``y_bar`` the
    cotangent the step after it returned to autograd, and ``owned`` says whether both are ours
    to overwrite (never the caller's output, nor memory another tensor shares). ``anchors``
    holds the activations forward stored (``anchor_every``): layer ``index``'s step starts from
    its anchor, exact, instead of the ``y`` rebuilt through the layers above.
    """

    def __init__(self) -> None:
        self.last = 0
        self.states: list[_State] = []  # the layers autograd will reverse, for the checks up front
        self.index: int | None = None
        self.y: Tensor | None = None
        self.y_bar: Tensor | None = None
        self.version = 0
        self.owned = False
        self.anchors: dict[int, tuple[Tensor, int]] = {}
        self.judged = False  # every layer's inverse checked (check_inverse) in this backward

    def anchor(self, index: int, y: Tensor) -> None:
        """Keep layer ``index``'s output for its reverse step: a detached alias, which creates no
        reference cycle and shares the output's version counter (checked in :meth:`take`)."""
        self.anchors[index] = (y.detach(), y._version)

    def hand_over(self, index: int, y: Tensor, y_bar: Tensor | None, owned: bool) -> None:
        self.index, self.y, self.y_bar, self.owned = index, y, y_bar, owned

    def take(self, index: int, y_bar: Tensor, layer: Invertible) -> tuple[Tensor, Tensor, bool]:
        if self.index != index or self.y is None:
            raise RuntimeError(
                "InvertibleSequential: backward ran twice through the same forward pass; activations "
                "are rebuilt, and the output's memory reused, during the first backward "
                "(retain_graph=True is not supported). Run the forward pass again before a second backward."
            )
        y, handed, self.y, self.y_bar = self.y, self.y_bar, None, None
        if handed is None:  # the last layer: y is the caller's output
            if y._version != self.version:
                raise RuntimeError(
                    "InvertibleSequential: the output of the forward pass was modified in place before "
                    "backward, so the activations cannot be rebuilt from it; clone the output before "
                    "modifying it (y = net(x).clone())."
                )
            # Ours once the caller has let go of it; the engine's cotangent is copied to match.
            owned = layer.reverse_in_place and sole_reference(y)
            return y, (y_bar.clone() if owned else y_bar), owned
        # The engine passes on exactly what the step above returned, unless a hook replaced it.
        owned = self.owned and y_bar is handed
        if index in self.anchors:  # restart from the stored activation; the rebuilt one is dropped
            y, version = self.anchors.pop(index)
            if y._version != version:
                raise RuntimeError(
                    f"InvertibleSequential: the activation stored after layer {index} (anchor_every) was "
                    f"modified by an inplace operation between forward and backward (version {version} -> "
                    f"{y._version}); clone activations before modifying them.")
            owned = owned and sole_reference(y)
        return y, y_bar, owned


class _ReverseStep(torch.autograd.Function):
    """One layer: forward without a tape; backward by inverting the layer (``layer.reverse``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, relay: _Relay, index: int, last: bool, state: _State,
                context: Tensor | None, *tensors: Tensor) -> Tensor:
        # Autograd is off inside Function.forward, so nothing is taped. Detaching also keeps
        # module hooks (e.g. FlopCounterMode's tracker) from treating x as a graph input.
        with recording(state.rng, x.device):
            if context is None:
                y = state.layer(x.detach())
            else:
                y = state.layer(x.detach(), context.detach())
        state.record_versions()
        ctx.context = context  # an input, so no reference cycle; its version is checked below
        ctx.context_version = None if context is None else context._version
        ctx.relay, ctx.index, ctx.state = relay, index, state
        # The reverse step re-evaluates sub-networks under the forward's autocast state, so they
        # compute what the forward computed.
        device = x.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.x_dtype = x.dtype
        if last:
            # The only activation kept from forward to backward, outside save_for_backward so the
            # sweep can drop it after the first step. A detached alias creates no reference cycle
            # and shares the output's version counter (checked in backward).
            relay.hand_over(index, y.detach(), None, False)
            relay.version = y._version
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, y_bar: Tensor) -> tuple[Tensor | None, ...]:
        relay, index, state = ctx.relay, ctx.index, ctx.state
        layer = state.layer
        y, y_bar, owned = relay.take(index, y_bar, layer)
        state.check_versions(index)
        if index == relay.last:  # before any gradient leaves: can every layer be inverted?
            for other in relay.states:
                other.check_versions(other.index)
                try:
                    with other.substituted(other.tensors):
                        other.layer.check_inverse()
                except ValueError as error:
                    error.add_note(f"InvertibleSequential: found in layer {other.index} "
                                   f"({type(other.layer).__name__}) before backward handed any gradient to autograd.")
                    raise
            relay.judged = True  # so the steps below skip a second condition estimate of each weight
        # ---- reverse step, on detached leaf aliases of what the layer read in forward, so that
        # its parameter gradients land here (and are returned) rather than in the real `.grad`;
        # with the forward's random state, so dropout draws the forward's masks.
        leaves = state.leaves()
        context = ctx.context
        extra = {}
        if context is not None:
            if context._version != ctx.context_version:
                raise RuntimeError("InvertibleSequential: the context was modified by an inplace operation "
                                   "between forward and backward; clone it before modifying it.")
            extra["context"] = context.detach().requires_grad_(context.requires_grad)
        try:
            device, dtype, enabled = ctx.autocast
            with state.substituted(leaves), replaying(state.rng, y.device), \
                    torch.autocast(device, dtype=dtype, enabled=enabled), \
                    (conditioning_judged() if relay.judged else nullcontext()):
                x, x_bar = layer.reverse(y, y_bar, overwrite=owned, **extra)
        except Exception as error:
            if index < relay.last:
                error.add_note(
                    f"InvertibleSequential: this error came from the reverse step of layer {index} "
                    f"({type(layer).__name__}); layers {index + 1} to {relay.last} had already handed "
                    "their parameter gradients to autograd, so .grad holds part of this backward: "
                    "call zero_grad() before the next step.")
            raise
        owned = owned or _unshared(x, x_bar, y, y_bar)
        del y
        # Under autocast, a half-precision input is rebuilt in float32 and kept so (autocast casts
        # it where needed): rounding it back would add up to one half-precision unit of error to
        # every later reconstruction. Without autocast, layers need the dtype they ran in.
        if not (ctx.autocast[2] and ctx.x_dtype in (torch.float16, torch.bfloat16)):
            x = x.to(ctx.x_dtype)
        # ---- hand x to the step below (if autograd will run one), the gradients to autograd.
        if index > 0 and ctx.needs_input_grad[0]:
            relay.hand_over(index - 1, x, x_bar, owned)
        grads = []
        for leaf in leaves:
            grads.append(leaf.grad)
            leaf.grad = None
        context_bar = extra["context"].grad if context is not None else None
        return (x_bar if ctx.needs_input_grad[0] else None), None, None, None, None, context_bar, *grads
