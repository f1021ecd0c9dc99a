"""What one layer read and how it was set when its forward ran, for its reverse step.

The reverse step of a layer must evaluate the same function the forward evaluated: the same
parameters and buffers (as they were, even if the forward updated them), the same training or
evaluation mode of every sub-module, the same random numbers. :class:`State` records these at
forward, cheaply enough to do for every layer of every step:

* the **layout** of a layer (its sub-modules and the ``(module, "_parameters" | "_buffers",
  name)`` slots of what they hold) is found once and cached until some module anywhere registers
  a parameter, buffer or sub-module (torch's global registration hooks bump ``_EPOCH``);
* the **tensors** in those slots are read at every forward, so ``parametrize`` and
  ``torch.func.functional_call`` (which put other tensors into the same slots) are followed;
* **buffers** of modules in training mode are copied before the forward (a forward may update
  them: batch-norm statistics, spectral norm's vectors; batch norm's kernel does so without
  moving the version counter, so a copy is the only way to know the old values); layers name
  buffers they never change (``constant_buffers``, e.g. ``LULinear``'s permutation), and those
  are neither copied nor stored;
* the **modes** (``module.training``) of all sub-modules;
* the **random states**, only for layers that may draw random numbers (``invlib._replay``:
  some module not known to be deterministic, or a forward hook).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from ._replay import Tape, may_draw

_EPOCH = [0]
_FORWARD: ContextVar[bool] = ContextVar("invlib_forward", default=False)


def in_forward() -> bool:
    """Whether the caller runs inside the taping-free forward of an ``InvertibleSequential``,
    whose check before the reverse sweep judges every layer (layers may skip their own checks).
    False while ``torch.compile`` traces (a context variable would break the graph; the container
    itself is not traced)."""
    if torch.compiler.is_compiling():
        return False
    return _FORWARD.get()


@contextmanager
def forward_of_container() -> Iterator[None]:
    token = _FORWARD.set(True)
    try:
        yield
    finally:
        _FORWARD.reset(token)


def epoch() -> int:
    """A number that changes whenever some module registers a parameter, buffer or module."""
    return _EPOCH[0]


def _bump(*_: object) -> None:
    _EPOCH[0] += 1


for _register in (_module.register_module_parameter_registration_hook,
                  _module.register_module_buffer_registration_hook,
                  _module.register_module_module_registration_hook):
    _register(_bump)


class Layout:
    """A layer's sub-modules and the slots of its parameters and buffers (see the module doc).

    A slot is ``(module, "_parameters" | "_buffers", name)``; ``stores`` holds the dicts
    themselves (``module._parameters``, which a module keeps for its lifetime) so that reading
    and substituting a slot is one dict access.
    """

    __slots__ = ("owner", "epoch", "modules", "slots", "stores", "copied", "random", "hook_dicts")

    def __init__(self, layer: nn.Module) -> None:
        self.owner = weakref.ref(layer)
        self.epoch = _EPOCH[0]
        self.modules = tuple(layer.modules())
        self.slots = tuple((m, kind, name) for m in self.modules for kind in ("_parameters", "_buffers")
                           for name in getattr(m, kind))
        self.stores = tuple((getattr(m, kind), name) for m, kind, name in self.slots)
        #: slot indices of buffers that may need a copy before forward (not declared constant)
        self.copied = frozenset(i for i, (m, kind, name) in enumerate(self.slots)
                                if kind == "_buffers" and name not in getattr(m, "constant_buffers", ()))
        self.random = may_draw(self.modules)
        self.hook_dicts = tuple(d for m in self.modules for d in (m._forward_hooks, m._forward_pre_hooks))
        for m in self.modules:
            for name, p in m._parameters.items():
                if isinstance(p, nn.parameter.UninitializedParameter):
                    raise ValueError(
                        f"InvertibleSequential: {type(layer).__name__} holds an uninitialized lazy parameter "
                        f"({type(m).__name__}.{name}); the reverse step needs every parameter to exist before "
                        "the forward it reverses. Materialise it first: run the network once under "
                        "torch.no_grad() (net(x)), or use modules with fixed sizes (nn.Linear).")

    def __reduce__(self) -> tuple:
        # A copied or pickled layer (deepcopy, torch.save) gets no layout; it finds its own.
        return (_nothing, ())

    def hooked_forward(self) -> bool:
        """Whether a forward hook (of a module of the layer, or global) is registered now; FSDP2's
        own hooks on a unit do not count (``invlib._fsdp`` runs them around the unit's nodes)."""
        if any(self.hook_dicts) and any(user_hooks(d) for d in self.hook_dicts if d):
            return True
        return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _nothing() -> None:
    return None


def user_hook(hook: object) -> bool:
    """Whether a module hook is not FSDP2's own (a method of its ``FSDPState``, registered by
    ``fully_shard``, or FSDP's wrapper of one for ``fully_shard([a, b])``)."""
    return not fsdp_hook(hook)


def fsdp_hook(hook: object, *, wrapped: bool = True) -> bool:
    """Whether ``hook`` is a method of FSDP2's ``FSDPState`` (``wrapped``: or a wrapper of one,
    as FSDP registers for ``fully_shard([a, b])``)."""
    if type(getattr(hook, "__self__", None)).__name__ == "FSDPState":
        return True
    if wrapped and hasattr(hook, "__wrapped__"):
        return getattr(inspect.unwrap(hook), "__qualname__", "").startswith("FSDPState.")
    return False


def user_hooks(hooks: dict) -> bool:
    """Whether the hook dict ``hooks`` holds a hook other than FSDP2's."""
    return any(user_hook(hook) for hook in hooks.values())


def layout(layer: nn.Module) -> Layout:
    """The :class:`Layout` of ``layer``, kept on the layer and found again after any module
    registration (or if the layer was copied, which copies the attribute too)."""
    found = layer.__dict__.get("_invlib_layout")
    if found is None or found.epoch != _EPOCH[0] or found.owner() is not layer:
        found = Layout(layer)
        layer.__dict__["_invlib_layout"] = found
    return found


class State:
    """One layer's forward, as its reverse step needs it (see the module doc).

    ``tensors``: what the layer read (parameters and buffers, as the slots held them), the
    inputs of its autograd node. ``before``: slot index -> copy of a buffer (of a module in
    training mode) as it was before the forward. ``modes``: ``training`` of every sub-module. ``tape``: random states.
    ``prepared``: what the check before the sweep left for this layer (held factors).
    ``observed``: what the layer's forward reported for that check (``Invertible.observe``).
    """

    __slots__ = ("layer", "index", "label", "layout", "slots", "names", "tensors", "versions", "before", "modes",
                 "tape", "prepared", "observed", "shape", "autocast", "x_dtype")

    def __init__(self, layer: nn.Module, index: int, label: str) -> None:
        self.layer, self.index, self.label = layer, index, label
        self.layout = found = layout(layer)
        tensors = [store[name] for store, name in found.stores]
        if any(t is None for t in tensors):  # a slot holding None (e.g. bias=None): not an input
            keep = [i for i, t in enumerate(tensors) if t is not None]
            self.slots = [found.stores[i] for i in keep]
            self.names = [found.slots[i] for i in keep]
            tensors = [tensors[i] for i in keep]
            copied = {keep.index(i) for i in found.copied if i in keep}
        else:
            self.slots, self.names, copied = found.stores, found.slots, found.copied
        self.tensors = tuple(tensors)
        self.versions: list[int] = []
        self.before: dict[int, Tensor] = {}
        for i in copied:
            if self.names[i][0].training:
                self.before[i] = self.tensors[i].clone()
        self.modes = tuple(m.training for m in found.modules)
        self.tape: Tape | None = None
        self.prepared: object = None
        self.observed: object = None
        self.shape: torch.Size | None = None
        self.autocast: tuple = ("cpu", torch.bfloat16, False)
        self.x_dtype: torch.dtype = torch.float32

    def after_forward(self) -> None:
        """Remember every version counter."""
        self.versions = [t._version for t in self.tensors]

    def modes_changed(self) -> bool:
        """Whether some sub-module's ``training`` differs from what it was at forward."""
        return any(m.training != mode for m, mode in zip(self.layout.modules, self.modes))

    def check_versions(self) -> None:
        """Raise if a tensor the reverse step will read changed since the forward (copied
        buffers are read from their copies, so later changes to them, e.g. by a second forward
        before this backward, are fine)."""
        for i, ((module, kind, name), t, version) in enumerate(zip(self.names, self.tensors, self.versions)):
            if t._version != version and i not in self.before:
                what = "parameter" if kind == "_parameters" else "buffer"
                raise RuntimeError(
                    f"InvertibleSequential: layer {self.label} ({type(self.layer).__name__}) {what} "
                    f"{type(module).__name__}.{name} was modified by an inplace operation between "
                    f"forward and backward (version {version} -> {t._version}); one of the variables "
                    "needed for gradient computation has been modified by an inplace operation. "
                    "Call backward before changing parameters (e.g. before optimizer.step())."
                )

    def leaves(self) -> list[Tensor]:
        """What the reverse step reads: detached leaf aliases of the parameters (their gradients
        are collected there) and the pre-forward copies of buffers."""
        return [self.before[i] if i in self.before
                else t.detach().requires_grad_(t.requires_grad and t.is_floating_point())
                for i, t in enumerate(self.tensors)]

    @contextmanager
    def substituted(self, tensors: Sequence[Tensor]) -> Iterator[None]:
        """Let the layer read ``tensors`` instead of what its slots hold now, in the modes its
        sub-modules had at forward, for the duration."""
        held = [store[name] for store, name in self.slots]
        switched = [m for m, mode in zip(self.layout.modules, self.modes) if m.training != mode]
        try:
            for (store, name), t in zip(self.slots, tensors):
                store[name] = t
            for m in switched:
                m.training = not m.training
            yield
        finally:
            for (store, name), t in zip(self.slots, held):
                store[name] = t
            for m in switched:
                m.training = not m.training
