"""Module backward hooks of the layers inside an :class:`invlib.InvertibleSequential`.

In the plain loop, ``layer.register_full_backward_pre_hook(hook)`` sees (and may replace) the
cotangent of the layer's output, ``grad_output = (y_bar,)``, before the layer's backward runs,
and ``layer.register_full_backward_hook(hook)`` sees ``grad_input = (x_bar,)`` and
``grad_output`` after it and may replace ``grad_input``. Torch wires both through the autograd
graph of the layer's call; inside the container the layer runs in a forward that tapes nothing,
so the reverse step calls the hooks itself, at the same two moments and with the same
arguments (global hooks of ``torch.nn.modules.module`` included, in torch's order):

    y_bar = pre_hooks(layer, (y_bar,))          # before layer.reverse
    x, x_bar = layer.reverse(y, y_bar)          # parameter gradients from the hooked y_bar
    x_bar = hooks(layer, (x_bar,), (y_bar,))    # after it

A conditional layer's ``grad_input`` is ``(x_bar, context_bar)``. The deprecated non-full hooks
(``register_backward_hook``) are refused: their arguments depend on the last op of the module's
forward, which the reverse step does not run.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules import module as _torch_module


def hooked(module: nn.Module) -> bool:
    """Whether ``module`` has backward or backward-pre hooks (its own or global ones)."""
    if not (module._backward_hooks or module._backward_pre_hooks or _torch_module._global_backward_hooks
            or _torch_module._global_backward_pre_hooks):
        return False
    full, other = module._get_backward_hooks()
    if other:
        raise ValueError(
            f"InvertibleSequential: {type(module).__name__} has a non-full backward hook "
            "(register_backward_hook), whose arguments depend on the last operation of the module's "
            "forward; inside InvertibleSequential use register_full_backward_hook instead")
    return bool(full) or bool(module._get_backward_pre_hooks())


def _replace(old: tuple, new: object, what: str, module: nn.Module) -> tuple:
    if new is None:
        return old
    new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
    if len(new) != len(old):
        raise RuntimeError(f"a backward hook of {type(module).__name__} returned {len(new)} values for "
                           f"{what}, expected {len(old)}")
    return new


def run_pre_hooks(module: nn.Module, y_bar: Tensor) -> tuple[Tensor, ...]:
    """``grad_output`` after the module's backward-pre hooks (each may replace it)."""
    grad_output: tuple = (y_bar,)
    for hook in module._get_backward_pre_hooks():
        grad_output = _replace(grad_output, hook(module, grad_output), "grad_output", module)
    return grad_output


def run_hooks(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
    """``grad_input`` after the module's full backward hooks (each may replace it)."""
    full, _ = module._get_backward_hooks()
    for hook in full:
        grad_input = _replace(grad_input, hook(module, grad_input, grad_output), "grad_input", module)
    return grad_input
