"""Measured counterparts of the cost model: what autograd saves, and the FLOPs it runs.

:func:`autograd_saved` records every tensor autograd packs for backward with
``torch.autograd.graph.saved_tensors_hooks``; :func:`counted_flops` reads
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and convolutions only (not the
LU factorisations or triangular solves of an inversion: :class:`invlib.costs.Cost` gives those).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class SavedTensors:
    """Distinct storages autograd keeps for backward, split into activations and parameters.

    ``*_elements`` and ``*_bytes`` count each storage once, whole, however many saved tensors view it
    (``W.t()`` saved by ``mm`` is the weight itself; ``tanh`` saves the tensor the next layer saves).
    """

    activation_tensors: int
    activation_elements: int
    activation_bytes: int
    parameter_tensors: int
    parameter_elements: int
    parameter_bytes: int


def autograd_saved(module: nn.Module, x: Tensor) -> SavedTensors:
    """Run ``module(x)`` and count what autograd saves for its backward, by storage.

    A saved tensor whose storage is that of one of ``module.parameters()`` is a parameter (saved by
    reference, no extra memory); every other one is an activation, the input ``x`` included (the
    first layer saves it to form ``W_bar = y_bar x^T``). The count is that of the graph of this one
    call; ``x`` may or may not require grad (without it, ``nn.Linear`` does not save its weight).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}; wrap a function in one")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    param_ptrs = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, tuple[Tensor, int]] = {}  # holding the tensor keeps its storage (and address) alive

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.nbytes() > 0:
            seen[storage.data_ptr()] = (t, storage.nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    counts = {True: [0, 0, 0], False: [0, 0, 0]}
    for ptr, (t, nbytes) in seen.items():
        row = counts[ptr in param_ptrs]
        row[0] += 1
        row[1] += nbytes // t.element_size()
        row[2] += nbytes
    del y
    return SavedTensors(*counts[False], *counts[True])


@dataclass(frozen=True)
class CountedFlops:
    """FLOPs that ``FlopCounterMode`` counts in a forward pass and in the backward pass after it."""

    forward: int
    backward: int


def counted_flops(module: nn.Module, x: Tensor) -> CountedFlops:
    """Count the matmul/convolution FLOPs of ``module(x)`` and of its backward.

    The backward forms gradients for every parameter that requires grad, and for ``x`` if it
    requires grad, via ``torch.autograd.grad`` (no ``.grad`` is written). With a cotangent of ones,
    the backward of the final sum adds no FLOPs. If ``x`` does not require grad, the first layer's
    ``x_bar`` is skipped and the backward is one layer-forward short of ``2 * forward``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}; wrap a function in one")
    inputs = [p for p in module.parameters() if p.requires_grad] + ([x] if x.requires_grad else [])
    if not inputs:
        raise ValueError("nothing to differentiate: module has no parameter that requires grad and x does not "
                         "require grad; call x.requires_grad_() or unfreeze a parameter")
    with torch.enable_grad(), FlopCounterMode(display=False) as fwd:
        y = module(x)
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(y, inputs, grad_outputs=torch.ones_like(y))
    return CountedFlops(fwd.get_total_flops(), bwd.get_total_flops())
