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
one thing passed from node to node outside the tape (``invlib._reverse_step``).

Anchoring (``anchor_every=k``) trades memory back for accuracy: the forward also keeps every
k-th activation ``x_k, x_2k, ...``, and the node whose output is an anchor starts its reverse step
from the stored anchor instead of the relayed rebuilt one, so reconstruction error accumulates
over at most ``k`` inversions instead of ``D``, for ``ceil(D/k) - 1`` stored activations.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ._fsdp import distributed, is_unit, refuse_grouped, refuse_inner_units, run_in_unit
from ._hooks import hooked
from ._reverse_step import Relay, ReverseStep, _unshared
from . import _state
from ._state import State, forward_of_container, user_hooks
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
    and cast back (``invlib.base.work_dtype``); under autocast, ``InvertibleLinear`` and the
    convolutions invert the rounded weight their forward applied (``invlib.base.as_applied``);
    ``LULinear`` solves with its float32 factors. The gradient
    error against float32 stays within 2x the plain loop's for every layer type, bfloat16 and
    float16, at a batch of 1024 (:mod:`invlib.precision`, ``tests/test_precision.py``); at a few
    dozen samples ELU's inverse, which amplifies the rounding of a rebuilt input, reaches 2-3x.

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

    Anchoring: ``anchor_every=k`` (a positive int; ``None``, the default, keeps no activation)
    stores the activations ``x_k, x_2k, ...`` (``x_j`` the output of layer ``j``, 1-based) during
    forward, ``ceil(D/k) - 1`` of them, and rebuilds activations only within each segment of
    ``k`` layers: the reverse step of layer ``jk`` starts from the stored ``x_jk``, not from the
    one rebuilt through the layers above. Rounding error then compounds over at most ``k``
    inversions, roughly ``prod`` of ``k`` condition numbers instead of ``D``
    (Behrmann et al., AISTATS 2021), and activation memory grows as ``D/k``. Everything else
    (hooks, DDP, version checks, random-state replay, context) is unchanged: an anchor is only
    a better starting point for the same reverse step. Use it when a deep or badly
    conditioned stack drifts from plain backprop; ``k = 1`` stores every activation (plain
    backprop's memory, still no tape) and ``k >= D`` is the constant-memory default.
    ``reverse`` (this container nested in another) stores nothing and ignores ``anchor_every``.
    """

    def __init__(self, *layers: Invertible, anchor_every: int | None = None,
                 generators: Sequence[torch.Generator] = (), scratch_bytes: int | None = None) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Invertible):
                raise TypeError(
                    f"InvertibleSequential: layer {index} must be an invlib.Invertible, got {type(layer).__name__}; "
                    "wrap non-invertible sub-networks in invlib.AdditiveCoupling"
                )
        if anchor_every is not None and (isinstance(anchor_every, bool) or not isinstance(anchor_every, int)
                                         or anchor_every < 1):
            raise ValueError(
                "InvertibleSequential: anchor_every must be None (store no activation) or a positive int k "
                f"(store every k-th activation), got {anchor_every!r}; pass e.g. anchor_every=8"
            )
        generators = tuple(generators)
        for g in generators:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"InvertibleSequential: generators must be torch.Generator objects, got "
                                f"{type(g).__name__}; pass the generators your sub-networks draw from")
        if scratch_bytes is not None and (isinstance(scratch_bytes, bool) or not isinstance(scratch_bytes, int)
                                          or scratch_bytes < 0):
            raise ValueError(f"InvertibleSequential: scratch_bytes must be None or an int >= 0, got {scratch_bytes!r}")
        self.layers = nn.ModuleList(layers)
        #: Store every ``anchor_every``-th activation in forward (``None``: none); see the class doc.
        self.anchor_every = anchor_every
        #: Generators besides torch's default ones that the layers draw from; replayed like them.
        self.generators = generators
        #: Bytes of factors the check before the sweep may keep for the reverse steps (``None``:
        #: none, so that memory is exactly flat in depth; see ``invlib._prepare``).
        self.scratch_bytes = scratch_bytes

    @property
    def takes_context(self) -> bool:  # type: ignore[override]
        """True if some layer (nested containers included) takes a context."""
        return any(layer.takes_context for layer in self.layers)

    def check_inverse(self) -> None:
        """Every layer's ``check_inverse``, in order."""
        for layer in self.layers:
            layer.check_inverse()

    def __iter__(self) -> Iterator[Invertible]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int | slice) -> Invertible:
        if isinstance(index, slice):
            return InvertibleSequential(*self.layers[index], anchor_every=self.anchor_every)
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
        if not torch.is_grad_enabled():
            return self._run(x, context)
        structure = self._structure()
        states = [State(layer, index, label) for index, (layer, label) in enumerate(structure.leaves)]  # refuses lazy ones now
        if not (x.requires_grad or (context is not None and context.requires_grad)
                or any(t.requires_grad for state in states for t in state.tensors)):
            return self._run(x, context)  # autograd has nothing to record
        relay = Relay(self.generators + structure.generators, self.scratch_bytes)
        relay.opens, relay.closes = structure.hooks()
        relay.input = (weakref.ref(x), x._version)
        relay.labels = structure.labels
        spans = structure.units()
        breaks = {i for first, last, _, _ in spans for i in (first, last + 1)}
        groups = _nodes(states, structure.anchors, breaks)
        relay.last = len(groups) - 1
        relay.units = {i: unit for first, last, _, unit in sorted(spans, key=lambda s: s[2])
                       for i in range(first, last + 1)}  # the innermost unit holding each layer

        def node(index: int, x: Tensor, context: Tensor | None) -> Tensor:
            group = groups[index]
            if relay.units and group[0].index in relay.units:  # read the parameters FSDP gathered now
                group[:] = [State(state.layer, state.index, state.label) for state in group]
            layer_context = context if context is not None and group[0].layer.takes_context else None
            tensors = group[0].tensors if len(group) == 1 else tuple(t for state in group for t in state.tensors)
            x = ReverseStep.apply(x, relay, group, index, layer_context, *tensors)
            if x.grad_fn is not None:  # autograd will run this node's reverse steps
                relay.states.extend(group)
                if group[-1].index in structure.anchors:
                    relay.anchor(index, x)
            return x

        def run(plan: list, x: Tensor, context: Tensor | None) -> Tensor:
            for item in plan:
                if isinstance(item, int):
                    x = node(item, x, context)
                else:  # an FSDP unit: its nodes run as a forward of the unit (invlib._fsdp)
                    unit, inner = item
                    x = run_in_unit(unit, lambda x, inner=inner: run(inner, x, context), x)
            return x

        with forward_of_container():
            if not spans:
                for index in range(len(groups)):
                    x = node(index, x, context)
                return x
            return run(_plan(groups, spans), x, context)

    def _run(self, x: Tensor, context: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, context) if _conditional(layer, context) else layer(x)
        return x

    def _structure(self) -> _Structure:
        key = (_state.epoch(), self.anchor_every)
        found = self.__dict__.get("_invlib_structure")
        if found is None or found.key != key:
            found = _Structure(self, key)
            self.__dict__["_invlib_structure"] = found
        return found

    def extra_repr(self) -> str:
        return "" if self.anchor_every is None else f"anchor_every={self.anchor_every}"

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


class _Structure:
    """``net``'s layers with nested containers expanded, so that each layer is one autograd node;
    kept on the container until some module anywhere registers a parameter, buffer or module
    (or ``anchor_every`` changes).

    ``leaves``: the layers with labels (``"2"``, or ``"2.0"`` for the first layer of a container
    at index 2); ``anchors``: the indices after which ``net.anchor_every`` keeps an activation
    (counted in ``net``'s own layers, so an anchor never falls inside a nested container);
    ``spans``: each nested container with its depth and first and last index; ``generators``:
    those nested containers were given.
    """

    def __init__(self, net: InvertibleSequential, key: tuple) -> None:
        self.key = key
        self.leaves: list[tuple[Invertible, str]] = []
        self.spans: list[tuple[int, int, int, InvertibleSequential]] = []
        self.depths: list[int] = []  # the nesting depth of each leaf's container
        generators: list[torch.Generator] = []
        self.anchors: set[int] = set()

        def walk(container: InvertibleSequential, prefix: str, depth: int) -> None:
            first = len(self.leaves)
            for i, layer in enumerate(container.layers):
                label = f"{prefix}{i}"
                if isinstance(layer, InvertibleSequential):
                    generators.extend(layer.generators)
                    walk(layer, label + ".", depth + 1)
                else:
                    self.leaves.append((layer, label))
                    self.depths.append(depth)
                k = net.anchor_every
                if depth == 0 and k is not None and (i + 1) % k == 0 and i + 1 < len(container.layers) and self.leaves:
                    self.anchors.add(len(self.leaves) - 1)
            if depth and len(self.leaves) > first:
                self.spans.append((depth, first, len(self.leaves) - 1, container))

        walk(net, "", 0)
        self.generators = tuple(generators)
        self.labels = [label for _, label in self.leaves]

    def units(self) -> list[tuple[int, int, int, nn.Module]]:
        """``(first, last, depth, unit)`` for each layer and nested container given to FSDP2's
        ``fully_shard`` (found at every forward: ``fully_shard`` registers nothing that would
        renew this structure); ``fully_shard`` inside a layer is refused."""
        if not distributed():
            return []
        found = [(first, last, depth, container) for depth, first, last, container in self.spans
                 if is_unit(container)]
        for first, _, _, container in found:
            refuse_grouped(container, f"the nested container of layer {self.labels[first]}")
        for index, (layer, label) in enumerate(self.leaves):
            if is_unit(layer):
                refuse_grouped(layer, f"layer {label}")
                found.append((index, index, self.depths[index] + 1, layer))
            refuse_inner_units(layer, label)
        return found

    def hooks(self) -> tuple[dict[int, list], dict[int, list]]:
        """For each index, the modules with backward hooks whose pre-hooks run there (containers
        ending there, outer first, then the layer) and whose full hooks run there (the layer,
        then containers starting there, inner first), as torch calls them in the plain loop.
        Nested containers with forward hooks are refused (their layers run one by one)."""
        opens: dict[int, list] = {}
        closes: dict[int, list] = {}
        spans = []
        for depth, first, last, container in self.spans:
            if user_hooks(container._forward_hooks) or user_hooks(container._forward_pre_hooks):
                raise ValueError(
                    f"InvertibleSequential: the nested container holding layers {self.labels[first]} to "
                    f"{self.labels[last]} has forward hooks; inside another InvertibleSequential its layers run "
                    "one by one, so register the hooks on its layers or on the outer container")
            if hooked(container):
                spans.append((depth, first, last, container))
        for depth, first, last, container in sorted(spans, key=lambda span: span[0]):  # outer first
            closes.setdefault(last, []).append(container)
        for index, (layer, _) in enumerate(self.leaves):
            if hooked(layer):
                closes.setdefault(index, []).append(layer)
                opens.setdefault(index, []).append(layer)
        for depth, first, last, container in sorted(spans, key=lambda span: -span[0]):  # inner first
            opens.setdefault(first, []).append(container)
        return opens, closes


def _nodes(states: list[State], anchors: set[int], breaks: set[int] = frozenset()) -> list[list[State]]:
    """The layers grouped into autograd nodes: each layer that reads parameters or buffers (or
    takes the context, or may draw random numbers, or has an anchor before it, or begins or
    follows an FSDP unit: ``breaks``) starts a node; parameter-free layers after it
    (activations) join its node, which saves them the fixed cost of a node of their own. Their
    hooks and checks still run one layer at a time."""
    groups: list[list[State]] = []
    for state in states:
        layout = state.layout
        if groups and not state.tensors and not state.layer.takes_context and not layout.random \
                and not layout.hooked_forward() and groups[-1][-1].index not in anchors \
                and state.index not in breaks:
            groups[-1].append(state)
        else:
            groups.append([state])
    return groups


def _plan(groups: list[list[State]], spans: list[tuple[int, int, int, nn.Module]]) -> list:
    """The order in which ``forward`` runs the nodes: a node's index, or ``(unit, plan)`` for the
    nodes of an FSDP unit (nested units inside), from ``spans`` of layer indices."""
    group_of = {state.index: g for g, group in enumerate(groups) for state in group}
    ranges = sorted(((group_of[first], group_of[last], depth, unit) for first, last, depth, unit in spans),
                    key=lambda r: (r[0], -r[1], r[2]))  # outer units first

    def build(lo: int, hi: int, ranges: list) -> list:
        plan, i = [], lo
        while i <= hi:
            if ranges and ranges[0][0] == i:
                first, last, _, unit = ranges[0]
                inside = [r for r in ranges[1:] if r[1] <= last]
                plan.append((unit, build(first, last, inside)))
                ranges = [r for r in ranges[1:] if r[0] > last]
                i = last + 1
            else:
                plan.append(i)
                i += 1
        return plan

    return build(0, len(groups) - 1, ranges)
