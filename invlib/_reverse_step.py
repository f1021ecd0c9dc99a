"""One autograd node per layer: the reverse step of :class:`invlib.InvertibleSequential`.

Forward: ``y = layer(x)`` with nothing taped and nothing saved; the node's inputs are ``x``, the
optional context and every tensor the layer reads (:class:`invlib._state.State`), so autograd
knows where each layer's gradients go. Backward: take ``x_k`` from the :class:`Relay`, run

    (x_{k-1}, x_bar_{k-1}, theta_bar_k) = layer_k.reverse(x_k, x_bar_k)

on leaf aliases of the layer's tensors (in the forward's modes, random states and autocast
state), leave ``x_{k-1}`` in the relay for node ``k-1`` and return ``x_bar_{k-1}`` and
``theta_bar_k`` to autograd, which accumulates them (hooks, DDP) before it calls node ``k-1``.
The first node to run judges every layer first (:func:`invlib._prepare.judge_all`); the last
checks the rebuilt input against the forward's (``Relay.compare_input``).
"""

from __future__ import annotations

import math
import warnings
import weakref
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._fsdp import gathered, hooks_set_aside
from ._hooks import run_hooks, run_pre_hooks
from ._prepare import Budget, judge_all, judged
from ._replay import Tape, generators_for, recording, replaying
from ._state import State
from ._storage import shares_memory, sole_reference
from .base import Invertible


_HALF = (torch.float16, torch.bfloat16)
#: Relative deviation of the rebuilt input (2-norm) above which the sweep warns.
TOLERANCE = 1e-2


class ReconstructionWarning(UserWarning):
    """The input rebuilt by the reverse sweep differs from the forward's input by more than one
    percent: the gradients carry an error of that order (``Relay.compare_input``)."""


def _unshared(x: Tensor, x_bar: Tensor, y: Tensor, y_bar: Tensor) -> bool:
    """True if a reverse step's results share no memory with its inputs: then they are ours to reuse
    (a layer may return its input itself, e.g. an identity, which stays the caller's)."""
    return not (shares_memory(x, y, y_bar) or shares_memory(x_bar, y, y_bar))


class Relay:
    """The activation handed from one reverse step to the next, outside autograd's tape.

    ``y`` is the output of layer ``index`` (the forward's result at first), ``y_bar`` the
    cotangent the step after it returned to autograd, and ``owned`` says whether both are ours
    to overwrite (never the caller's output, nor memory another tensor shares). ``anchors``
    holds the activations forward stored (``anchor_every``): layer ``index``'s step starts from
    its anchor, exact, instead of the ``y`` rebuilt through the layers above. ``opens`` and
    ``closes`` map a layer to the nested containers whose first or last layer it is (their
    backward hooks run there).
    """

    def __init__(self, generators: tuple[torch.Generator, ...], scratch_bytes: int | None) -> None:
        self.last = 0
        self.states: list[State] = []  # the layers autograd will reverse, for the check up front
        self.generators = generators
        self.scratch_bytes = scratch_bytes
        self.index: int | None = None
        self.y: Tensor | None = None
        self.y_bar: Tensor | None = None
        self.version = 0
        self.owned = False
        self.anchors: dict[int, tuple[Tensor, int]] = {}
        self.judged = False
        self.opens: dict[int, list] = {}
        self.closes: dict[int, list] = {}
        self.grad_outputs: dict[int, tuple] = {}  # a nested container's hooked y_bar, until its first layer
        self.input: tuple[weakref.ref, int] | None = None
        self.labels: list[str] = []
        self.warned = False  # the check before the sweep warned of a badly conditioned layer
        self.units: dict[int, object] = {}  # layer index -> the FSDP unit holding its parameters

    def anchor(self, index: int, y: Tensor) -> None:
        """Keep layer ``index``'s output for its reverse step: a detached alias, which creates no
        reference cycle and shares the output's version counter (checked in :meth:`take`)."""
        self.anchors[index] = (y.detach(), y._version)

    def hand_over(self, index: int, y: Tensor, y_bar: Tensor | None, owned: bool) -> None:
        self.index, self.y, self.y_bar, self.owned = index, y, y_bar, owned

    def judge(self, y: Tensor) -> None:
        """Before any gradient leaves: no parameter changed since forward, every inverse judged."""
        for state in self.states:
            state.check_versions()
        output = y.numel() * y.element_size()
        budget = Budget(max(output, self.scratch_bytes or 0), self.scratch_bytes or 0)
        # One call per FSDP unit, top first; a unit whose parameters are freed now is gathered for
        # its call (invlib._fsdp). Without FSDP that is one call for every layer.
        by_unit: dict[int, tuple[object, list[State]]] = {}
        for state in self.states:
            unit = self.units.get(state.index)
            by_unit.setdefault(id(unit), (unit, []))[1].append(state)
        self.warned = False
        for unit, members in reversed(by_unit.values()):
            gather = unit is not None and any(judged(state) for state in members)
            with gathered(unit, [t for state in members for t in state.tensors]) if gather else nullcontext():
                self.warned |= judge_all(members, budget)
        self.judged = True

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

    def compare_input(self, x: Tensor, autocast: tuple) -> None:
        """Warn (:class:`ReconstructionWarning`) if the input rebuilt by the sweep differs from the
        forward's input, when that is still alive and unchanged, by more than :data:`TOLERANCE`
        (one percent) relative in the 2-norm, or ``sqrt(eps)`` of a half precision the forward
        computed in: the gradients are then off by about as much.

        Rounding compounded over many badly conditioned layers does that (``anchor_every``
        helps), and so do sub-networks whose randomness the reverse step cannot replay (numpy,
        a ``torch.Generator`` not passed as ``generators``), or a layer whose ``inverse`` does
        not invert its forward. One device reduction and one read per backward; skipped when
        the check before the sweep warned of a badly conditioned layer already. (A float32
        stack of a few dozen dense layers rebuilds its input to about 1e-3: below the line.)
        """
        found = self.input[0]() if self.input is not None else None
        if self.warned or found is None or found._version != self.input[1] or found.shape != x.shape or not x.numel():
            return
        device, dtype, enabled = autocast
        precision = dtype if enabled and dtype in _HALF else found.dtype
        if not precision.is_floating_point:
            return
        tolerance = max(TOLERANCE, math.sqrt(torch.finfo(precision).eps))
        scale, error = (torch.linalg.vector_norm(t) for t in (found, x.to(found.dtype) - found))
        error, scale = torch.stack([error, scale]).tolist()
        if not error <= tolerance * scale:  # NaN counts as a difference
            warnings.warn(
                f"InvertibleSequential: the input rebuilt by the reverse sweep differs from the input of the "
                f"forward pass by {error / scale if scale else error:.3e} (relative, in the 2-norm) > "
                f"{tolerance:.1e}, so the gradients carry errors of that order. Causes: rounding compounded over "
                "badly conditioned layers (use anchor_every, or float64; invlib.diagnose(net, x) shows where), "
                "random numbers the reverse step cannot replay (numpy, Python's random, a torch.Generator not "
                "passed as InvertibleSequential(..., generators=[g])), or a layer whose inverse does not "
                "invert its forward.", ReconstructionWarning, stacklevel=3)


class ReverseStep(torch.autograd.Function):
    """One node: a layer with parameters or buffers and the parameter-free layers (activations)
    fused after it; forward without a tape, backward by inverting them (``layer.reverse``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, relay: Relay, group: list[State], index: int,
                context: Tensor | None, *tensors: Tensor) -> Tensor:
        # Autograd is off inside Function.forward, so nothing is taped. Detaching also keeps
        # module hooks (e.g. FlopCounterMode's tracker) from treating x as a graph input.
        device = x.device.type
        autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        y = x.detach()
        for state in group:
            x, layer = y, state.layer
            extra = (context.detach(),) if context is not None and layer.takes_context else ()
            # a layer that is an FSDP unit itself: FSDP's hooks ran around this node already
            aside = hooks_set_aside(layer) if relay.units.get(state.index) is layer else nullcontext()
            if state.layout.random or state.layout.hooked_forward():
                tape = state.tape = Tape(generators_for(x.device, relay.generators))
                with recording(tape), aside:
                    y = layer(x, *extra)
                if not tape:
                    state.tape = None
            else:
                with aside:
                    y = layer(x, *extra)
            state.x_dtype = x.dtype
            if layer.observes:
                state.observed = layer.observe(x)
            state.shape = x.shape
            state.autocast = autocast
            state.after_forward()
        ctx.group, ctx.relay, ctx.context, ctx.index = group, relay, context, index  # inputs: no cycle
        ctx.context_version = None if context is None else context._version
        if index == relay.last:
            # The only activation kept from forward to backward, outside save_for_backward so the
            # sweep can drop it after the first step. A detached alias creates no reference cycle
            # and shares the output's version counter (checked in backward).
            relay.hand_over(index, y.detach(), None, False)
            relay.version = y._version
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, y_bar: Tensor) -> tuple[Tensor | None, ...]:
        group, relay, index = ctx.group, ctx.relay, ctx.index
        y, y_bar, owned = relay.take(index, y_bar, group[-1].layer)
        for state in group:
            state.check_versions()
        if not relay.judged:  # before any gradient leaves: can every layer be inverted?
            relay.judge(y)
        context = ctx.context
        if context is not None and context._version != ctx.context_version:
            raise RuntimeError("InvertibleSequential: the context was modified by an inplace operation "
                               "between forward and backward; clone it before modifying it.")
        grads: list[Tensor | None] = []
        context_bar = None
        for state in reversed(group):
            x, x_bar, owned, state_grads, state_context_bar = _step(
                state, relay, y, y_bar, owned, context, ctx.needs_input_grad[0] or state is not group[0])
            grads[:0] = state_grads
            if state_context_bar is not None:
                context_bar = state_context_bar
            # Under autocast, a half-precision input is rebuilt in float32 and kept so (autocast
            # casts it where needed): rounding it back would add up to one half-precision unit of
            # error to every later reconstruction. Without autocast, layers need their dtype.
            if x.dtype != state.x_dtype and not (state.autocast[2] and state.x_dtype in _HALF):
                x = x.to(state.x_dtype)
            del y
            y, y_bar = x, x_bar
        x, x_bar = y, y_bar
        # ---- hand x to the step below (if autograd will run one), the gradients to autograd.
        if index > 0 and ctx.needs_input_grad[0]:
            relay.hand_over(index - 1, x, x_bar, owned)
        elif index == 0:
            relay.compare_input(x, group[0].autocast)
        return (x_bar if ctx.needs_input_grad[0] else None), None, None, None, context_bar, *grads


def _step(state: State, relay: Relay, y: Tensor, y_bar: Tensor, owned: bool, context: Tensor | None,
          input_grad: bool) -> tuple[Tensor, Tensor, bool, list, Tensor | None]:
    """One layer's reverse step inside a node: its backward hooks around ``layer.reverse``, run
    on detached leaf aliases of what the layer read in forward (its parameter gradients land
    there and are returned, rather than in the real ``.grad``), in the forward's modes, random
    states and autocast state. Returns ``x``, ``x_bar``, whether both are ours, the gradients of
    the layer's tensors and of the context."""
    layer, index = state.layer, state.index
    hooked = index in relay.closes or index in relay.opens
    if hooked:  # the hooks see y_bar and x_bar, which must then stay intact
        owned = False
        for module in relay.closes.get(index, ()):  # backward-pre hooks of containers ending here, and the layer's
            grad_output = run_pre_hooks(module, y_bar)
            y_bar = grad_output[0]
            relay.grad_outputs[id(module)] = grad_output
    leaves = state.leaves() if state.tensors else []
    extra: dict[str, Any] = {}
    if context is not None and layer.takes_context:
        extra["context"] = context.detach().requires_grad_(context.requires_grad)
    if state.prepared is not None:
        extra["prepared"] = state.prepared
        state.prepared = None  # held factors go as soon as the step has used them
    try:
        x, x_bar = _reverse(state, leaves, y, y_bar, owned, extra)
    except Exception as error:
        if state is not relay.states[-1]:
            error.add_note(
                f"InvertibleSequential: this error came from the reverse step of layer {state.label} "
                f"({type(layer).__name__}); layers {relay.labels[index + 1]} to {relay.labels[-1]} "
                "had already handed their parameter gradients to autograd, so .grad holds part of this "
                "backward: call zero_grad() before the next step.")
        raise
    owned = owned or _unshared(x, x_bar, y, y_bar)
    context_bar = extra["context"].grad if "context" in extra else None
    if hooked:
        for module in relay.opens.get(index, ()):  # backward hooks of the layer and of containers starting here
            grad_input = (x_bar if input_grad else None,)
            if "context" in extra and module is layer:
                grad_input += (context_bar,)
            grad_input = run_hooks(module, grad_input, relay.grad_outputs.pop(id(module), (y_bar,)))
            x_bar = grad_input[0] if grad_input[0] is not None else x_bar
            if "context" in extra and module is layer:
                context_bar = grad_input[1]
    grads = []
    for leaf in leaves:
        grads.append(leaf.grad)
        leaf.grad = None
    return x, x_bar, owned, grads, context_bar


def _reverse(state: State, leaves: list[Tensor], y: Tensor, y_bar: Tensor, owned: bool,
             extra: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``layer.reverse`` in the forward's conditions, entering only the contexts that matter."""
    layer = state.layer
    device, dtype, enabled = state.autocast
    switch = enabled != torch.is_autocast_enabled(device) or (enabled and dtype != torch.get_autocast_dtype(device))
    if not leaves and state.tape is None and not switch and not state.modes_changed():
        return layer.reverse(y, y_bar, overwrite=owned, **extra)
    with state.substituted(leaves), \
            (replaying(state.tape) if state.tape is not None else nullcontext()), \
            (torch.autocast(device, dtype=dtype, enabled=enabled) if switch else nullcontext()):
        return layer.reverse(y, y_bar, overwrite=owned, **extra)
