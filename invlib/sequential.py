"""A stack of invertible layers whose backward pass needs no stored activations.

Plain backprop keeps every layer's saved inputs alive from forward to backward: memory grows
linearly with depth. Here the forward keeps only the final output ``y_D``; backward walks the
layers in reverse, rebuilding each input from its output with :meth:`Invertible.reverse`:

    (x_{k-1}, x_bar_{k-1}) = layer_k.reverse(x_k, x_bar_k),   k = D, ..., 1,   x_D = y, x_bar_D = dL/dy,

so activation memory is O(1) in depth (one activation and one cotangent at a time).
Gomez et al., "The Reversible Residual Network", 2017 (arXiv 1707.04585), section 4.

How it sits in autograd: one node per layer, chained like the plain loop's layers, whose inputs
are the layer's input and every tensor the layer reads (parameters and buffers, as they are when
forward runs). Each node's backward returns the parameter gradients to autograd, which
accumulates them (hooks, DDP's reducer, ``parametrize``, ``autograd.grad`` and
``backward(inputs=...)`` all see them) before the next node runs. The rebuilt activation is the
one thing passed from node to node outside the tape, by a :class:`_Relay`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._replay import recording, replaying
from ._storage import shares_memory, sole_reference
from .base import Invertible


class InvertibleSequential(Invertible):
    """Composition ``y = f_D(... f_1(x))`` with constant-memory backward; ``inverse`` runs it backwards.

    Iterable and indexable like ``nn.ModuleList``, so ``for layer in net: x = layer(x)`` is the
    plain-backprop baseline over the same layers. ``x``: one tensor, the first layer's input shape.

    ``forward(x)`` runs the layers as is when autograd has nothing to record (grad disabled, or
    neither ``x`` nor any parameter requires grad). Otherwise each layer runs inside its own
    ``autograd.Function`` that tapes nothing and saves nothing; backward calls ``layer.reverse``
    from the last layer to the first, on the activation the previous node rebuilt.

    Behaves like any module in a training loop: parameter gradients reach autograd through the
    graph, so ``loss.backward()``, ``torch.autograd.grad(loss, params)``, ``backward(inputs=...)``,
    tensor and post-accumulate hooks, ``DistributedDataParallel`` (all modes), ``parametrize``
    and ``torch.func.functional_call`` work, and a parameter changed in place between forward
    and backward raises, as in plain autograd.

    Randomness and state are replayed, as ``torch.utils.checkpoint`` does: each layer's reverse
    step restores the random-number state its forward started from (and a coupling block the
    state before each of F and G), so dropout, module or functional, draws the same masks; and
    it runs on copies of the training-mode buffers as they were before the forward, so batch
    norm normalises with the same batch statistics and its running statistics (like spectral
    norm's power-iteration vectors) are updated once, by the forward.

    Mixed precision: each reverse step runs under the autocast state of its forward, so
    sub-networks recompute what they computed; closed-form inverses (LU solves, FFTs, the
    activations' inverses) of half-precision outputs and of half-precision layers run in float32
    and cast back (``invlib.base.work_dtype``). Under CPU bfloat16 autocast the gradient error
    against float32 is within 2x the plain loop's for every layer type but ELU, whose inverse
    amplifies the rounding of a rebuilt input (about 2.7x; ``tests/test_precision.py``).

    Limitations (each raises rather than giving a wrong gradient):

    * One backward per forward: the activations are rebuilt, and the output's memory reused,
      during the first backward (``retain_graph=True`` followed by a second backward raises).
    * No double backward (``create_graph=True`` then differentiating again raises).
    * Modifying the output in place before backward raises, as it would for a saved tensor.
    * The input is one tensor, plus an optional ``context`` for conditional layers
      (``forward(x, context)``; its gradient reaches its producer). Sub-networks may read only
      their own parameters and buffers and that context: a tensor captured from outside the
      module is not an input of the graph.
    * Gradients are as accurate as the reconstruction: each inversion adds rounding error scaled
      by the layer's condition number, so badly conditioned or very deep stacks drift from
      plain backprop (tests check agreement to 1e-9 relative in float64 up to depth 33).
    """

    def __init__(self, *layers: Invertible) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Invertible):
                raise TypeError(
                    f"InvertibleSequential: layer {index} must be an invlib.Invertible, got {type(layer).__name__}; "
                    "wrap non-invertible sub-networks in invlib.AdditiveCoupling"
                )
        self.layers = nn.ModuleList(layers)

    def __iter__(self) -> Iterator[Invertible]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int | slice) -> Invertible:
        if isinstance(index, slice):
            return InvertibleSequential(*self.layers[index])
        return self.layers[index]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``y = f_D(... f_1(x))``; ``context`` (optional) goes to every layer that ``takes_context``
        (conditional coupling blocks), as an input of the graph: its producer gets its gradient."""
        if not isinstance(x, Tensor):
            raise TypeError(f"InvertibleSequential: x must be a single torch.Tensor, got {type(x).__name__}")
        _check_context(self, context)
        transformed = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)()
        if transformed and torch.is_grad_enabled():
            raise RuntimeError(
                "InvertibleSequential: torch.func transforms (grad, vjp, jacrev, vmap) are not supported: "
                "the reverse steps pass rebuilt activations from node to node outside autograd, which "
                "functorch cannot trace. Use loss.backward() or torch.autograd.grad (with "
                "torch.func.functional_call for substituted parameters), or the plain loop over the layers."
            )
        records = torch.is_grad_enabled() and (
            x.requires_grad or (context is not None and context.requires_grad)
            or any(p.requires_grad for p in self.parameters()))
        if not records:
            for layer in self.layers:
                x = layer(x, context) if _conditional(layer, context) else layer(x)
            return x
        relay = _Relay()
        last = relay.last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            state = _State(layer, index)
            layer_context = context if _conditional(layer, context) else None
            x = _ReverseStep.apply(x, relay, index, index == last, state, layer_context, *state.tensors)
            if x.grad_fn is not None:  # autograd will run this layer's reverse step
                relay.states.append(state)
        return x

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        _check_context(self, context)
        for layer in reversed(self.layers):
            y = layer.inverse(y, context) if _conditional(layer, context) else layer.inverse(y)
        return y

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        owned = overwrite
        for layer in reversed(self.layers):
            extra = {"context": context} if _conditional(layer, context) else {}
            x, x_bar = layer.reverse(y, y_bar, overwrite=owned, **extra)
            owned = owned or _unshared(x, x_bar, y, y_bar)
            y, y_bar = x, x_bar
        return y, y_bar


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
    to overwrite (never the caller's output, nor memory another tensor shares).
    """

    def __init__(self) -> None:
        self.last = 0
        self.states: list[_State] = []  # the layers autograd will reverse, for the checks up front
        self.index: int | None = None
        self.y: Tensor | None = None
        self.y_bar: Tensor | None = None
        self.version = 0
        self.owned = False

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
        return y, y_bar, self.owned and y_bar is handed


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
        # ---- reverse step, on detached leaf aliases of what the layer read in forward, so that
        # its parameter gradients land here (and are returned) rather than in the real `.grad`;
        # with the forward's random state, so dropout draws the forward's masks.
        leaves = state.leaves()
        context = ctx.context
        extra = {}
        if context is not None:
            if context._version != ctx.context_version:
                raise RuntimeError(f"InvertibleSequential: the context was modified by an inplace operation "
                                   "between forward and backward; clone it before modifying it.")
            extra["context"] = context.detach().requires_grad_(context.requires_grad)
        try:
            device, dtype, enabled = ctx.autocast
            with state.substituted(leaves), replaying(state.rng, y.device), \
                    torch.autocast(device, dtype=dtype, enabled=enabled):
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


def _conditional(layer: Invertible, context: Tensor | None) -> bool:
    return context is not None and layer.takes_context


def _check_context(net: InvertibleSequential, context: object) -> None:
    if context is None:
        return
    if not isinstance(context, Tensor):
        raise TypeError(f"InvertibleSequential: context must be a torch.Tensor or None, got {type(context).__name__}")
    if not any(layer.takes_context for layer in net.layers):
        raise ValueError("InvertibleSequential: a context was given, but no layer takes one "
                         "(only conditional layers such as AdditiveCoupling do); drop the context argument")
