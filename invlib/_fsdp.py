"""``InvertibleSequential`` under FSDP2: FSDP's own gathers and reductions around the reverse steps.

FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps each unit's parameters sharded across the
ranks and gathers them around the unit's computation, with hooks that only the autograd graph of
an ordinary forward triggers:

* pre-forward: all-gather the unit's parameters (``unshard``), and wrap the unit's inputs in a
  node whose backward runs FSDP's *post-backward* (reduce-scatter the unit's gradients, free the
  gathered parameters);
* post-forward: free the gathered parameters (``reshard_after_forward``), and hook the unit's
  outputs so that their gradient triggers FSDP's *pre-backward* (gather again).

Inside an ``InvertibleSequential`` a layer runs in a taping-free node (``invlib._reverse_step``)
with gradients disabled, so FSDP would gather and free around it but register none of the
backward hooks, and the node would record the sharded parameters. Here a unit's nodes run inside
a method that FSDP2 treats as a forward of the unit (``register_fsdp_forward_method``, torch's
public API for this), with gradients enabled:

    x' = post_backward_hook(x)         # FSDP pre-forward: gather, hook x
    y  = node_k( ... node_j(x') ...)   # the unit's layers, recording the *gathered* parameters
    y' = pre_backward_hook(y)          # FSDP post-forward: free, hook y

so in backward FSDP gathers the unit's parameters before its top node runs, the nodes return
the gradients of the gathered parameters to autograd (which accumulates them before anything
downstream runs), and FSDP reduce-scatters them when the gradient reaches ``x'``: each unit is
gathered once in forward and once in backward, and freed after each, as FSDP does for the plain
loop. The check before the sweep gathers a freed unit once more to judge its weights
(:func:`gathered`).

A unit is a layer given to ``fully_shard``, or a nested ``InvertibleSequential`` given to it (a
group of layers); ``fully_shard`` on a module *inside* a layer is refused (:func:`units`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch.distributed as dist
from torch import Tensor, nn

from ._state import fsdp_hook, layout, user_hook

try:
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
except ImportError:  # a torch build without distributed support
    FSDPModule = None  # type: ignore[assignment,misc]
    register_fsdp_forward_method = None  # type: ignore[assignment]

#: The method FSDP2 is told to treat as a forward of a unit (``invlib.base.Invertible``).
METHOD = "_invlib_nodes"


def is_unit(module: nn.Module) -> bool:
    """Whether ``module`` was given to ``fully_shard``."""
    return FSDPModule is not None and isinstance(module, FSDPModule)


def distributed() -> bool:
    """Whether a default process group exists (FSDP2 needs one)."""
    return dist.is_available() and dist.is_initialized()


def refuse_inner_units(layer: nn.Module, label: str) -> None:
    """Raise if ``fully_shard`` was applied to a module inside ``layer`` (not to the layer)."""
    if FSDPModule is None:
        return
    for module in layout(layer).modules:
        if module is not layer and isinstance(module, FSDPModule):
            name = next(n for n, m in layer.named_modules() if m is module)
            raise ValueError(
                f"InvertibleSequential: layer {label} ({type(layer).__name__}) holds a module given to "
                f"fully_shard ({name}); its parameters would be gathered only around that module's own "
                "forward, not around the layer's reverse step. Call fully_shard on the layer itself, or on an "
                "InvertibleSequential of several layers (and on the root), as torchtitan does per block.")


def refuse_grouped(unit: nn.Module, label: str) -> None:
    """Raise if ``unit`` was sharded together with other modules (``fully_shard([a, b])``): FSDP
    then gathers the group around the modules' forwards in its own order, which the reverse
    steps cannot follow. FSDP marks the group by wrapping its hooks."""
    if any(fsdp_hook(hook) and not fsdp_hook(hook, wrapped=False) for hook in unit._forward_pre_hooks.values()):
        raise ValueError(
            f"InvertibleSequential: {label} ({type(unit).__name__}) was given to fully_shard together with "
            "other modules (fully_shard([a, b])), which is not supported; call fully_shard on each layer, or "
            "put the layers in a nested InvertibleSequential and call fully_shard on that.")


def run_in_unit(unit: nn.Module, run: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``run(x)`` as a forward of the FSDP unit ``unit`` (module doc). A context reaches ``run``
    by closure, not as an argument, so that a mixed-precision policy does not make one cast copy
    of it per unit, each kept until backward."""
    if "_invlib_fsdp" not in unit.__dict__:
        register_fsdp_forward_method(unit, METHOD)
        unit.__dict__["_invlib_fsdp"] = True
    return getattr(unit, METHOD)(x, run)


@contextmanager
def hooks_set_aside(unit: nn.Module) -> Iterator[None]:
    """For the duration, ``unit``'s forward hooks without FSDP2's own: a layer that is a unit
    runs its forward inside the unit's nodes, around which FSDP's hooks ran already (running
    them again would record the unit twice in FSDP's forward order and free its parameters
    even with ``reshard_after_forward=False``). The hook dicts are restored in their order."""
    saved = []
    for hooks in (unit._forward_pre_hooks, unit._forward_hooks):
        if hooks and not all(user_hook(h) for h in hooks.values()):
            saved.append((hooks, list(hooks.items())))
            for key in [k for k, h in hooks.items() if not user_hook(h)]:
                del hooks[key]
    try:
        yield
    finally:
        for hooks, items in saved:
            hooks.clear()
            hooks.update(items)


@contextmanager
def gathered(unit: nn.Module, tensors: Sequence[Tensor]) -> Iterator[None]:
    """For the duration, gather ``unit`` (``FSDPModule.unshard``) if the parameters recorded from
    it, ``tensors``, are freed now, and free it again after (``FSDPModule.reshard``)."""
    opened = any(t.numel() and not t.untyped_storage().nbytes() for t in tensors)
    if opened:
        unit.unshard()
    try:
        yield
    finally:
        if opened:
            unit.reshard()
