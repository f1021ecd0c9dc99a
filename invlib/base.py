"""The invertible-layer contract: ``y = forward(x)``, ``x = inverse(y)``, and the reverse step.

Every layer in invlib is a :class:`Invertible`. The reverse step is what makes backpropagation
possible without storing activations: it rebuilds a layer's input from its output and, in the
same pass, turns the output cotangent ``y_bar = dL/dy`` into ``x_bar = dL/dx`` and the parameter
gradients. Idea: Gomez et al., "The Reversible Residual Network", 2017 (arXiv 1707.04585).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.autograd.variable import Variable


class Invertible(nn.Module):
    """A module computing a bijection ``y = f(x)`` together with its inverse ``x = f^{-1}(y)``.

    Contract (stated once for every layer in invlib):

    * ``forward(x)`` is an ordinary differentiable torch computation, so a plain loop
      ``for layer in net: x = layer(x)`` followed by ``loss.backward()`` is standard backprop.
    * ``inverse(forward(x)) == x`` and ``forward(inverse(y)) == y`` up to rounding, for every
      ``x`` in the layer's domain and ``y`` in its range. Rounding error is amplified by the
      layer's condition number; layers with a weight matrix check it (see ``invlib._verdict``).
    * ``reverse(y, y_bar) -> (x, x_bar)`` rebuilds ``x = inverse(y)`` and returns the cotangent

          x_bar = (dy/dx)^T y_bar,

      while *accumulating* ``(dy/dtheta)^T y_bar`` into each parameter's ``.grad`` right away
      (created when ``None``, added in place otherwise; see ``invlib.base.accumulate_grad``).
      :class:`InvertibleSequential` runs it on leaf aliases of the parameters and returns what
      they received to autograd, so hooks, DDP and ``autograd.grad`` see every gradient.
      With ``overwrite=True`` the caller hands ``y`` and ``y_bar`` over: the layer may reuse
      their storage for ``x`` and ``x_bar`` (in place), which keeps a deep backward at a fixed,
      small number of activation-sized buffers. Layers are free to ignore it. With
      ``overwrite=False`` the layer must leave ``y`` and ``y_bar`` unchanged; its results may
      still share their memory (an identity may return ``y`` itself), which
      :class:`InvertibleSequential` checks before handing results over for reuse.

    Shapes: ``y`` and ``y_bar`` have the shape of the layer's output, ``x`` and ``x_bar`` that of
    its input. ``reverse`` runs with gradient recording off for its results: they are plain
    tensors without history (no double backward).
    """

    #: True if ``reverse(overwrite=True)`` rebuilds ``x`` and ``x_bar`` inside ``y`` and ``y_bar``
    #: themselves, so that handing both over saves two buffers (see InvertibleSequential).
    reverse_in_place: bool = False

    #: True if ``forward``, ``inverse`` and ``reverse`` take a ``context`` tensor (a conditional
    #: layer); :class:`InvertibleSequential` hands its ``context`` to these layers only.
    takes_context: bool = False

    #: False if ``forward`` never draws random numbers, so :class:`InvertibleSequential` need not
    #: watch the generators around it (``invlib._replay``); unknown layers are assumed to draw.
    draws_random: bool = True

    #: Names of buffers that ``forward`` never changes: not copied before each forward in
    #: training mode (``invlib._state``).
    constant_buffers: tuple[str, ...] = ()

    #: Whether :meth:`observe` reports something for the check before the reverse sweep.
    observes: bool = False

    def observe(self, x: Tensor) -> object:
        """What the check before the reverse sweep needs to know of this forward's input ``x``
        (for ``ELU``: its smallest entry, a device scalar); called by :class:`InvertibleSequential`
        in forward for layers whose :attr:`observes` is True. Must not read values back to the host."""
        return None

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    def _invlib_nodes(self, x: Tensor, run) -> Tensor:
        """``run(x)``: the autograd nodes of this module's layers inside an
        :class:`~invlib.InvertibleSequential`; FSDP2 treats it as a forward of the module when
        the module was given to ``fully_shard`` (``invlib._fsdp``)."""
        return run(x)

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement inverse(y)")

    def check_inverse(self) -> None:
        """Raise ``ValueError`` now if ``inverse`` would refuse the current weights (warn if it
        would warn); the default checks nothing.

        Inside :class:`InvertibleSequential` the layers with a weight to judge are judged before
        the first reverse step, together and on the device (``judge``, below), so that a singular
        weight is reported before any gradient has been handed to autograd; a layer of your own
        that overrides only ``check_inverse`` is checked there by calling it.
        """

    #: ``judge(states, budget) -> list[Verdict]``, a classmethod of layers whose inverses have a
    #: conditioning to judge (dense, LU, convolution, ELU): called once per backward for all
    #: the layers of a class in a stack (``invlib._prepare``); it may leave factors for the
    #: reverse steps in ``state.prepared``, within ``budget``. ``None``: nothing to judge.
    judge = None

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False) -> tuple[Tensor, Tensor]:
        """Rebuild ``x`` from ``y`` and back-propagate ``y_bar`` through the layer.

        Generic version: invert, then re-run the forward from ``x`` under autograd and call
        ``torch.autograd.backward``. That costs one extra forward; layers override it with a
        closed form that reuses the work of the inversion.
        """
        with torch.no_grad():
            x = self.inverse(y)
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_()
            y_again = self.forward(x_leaf)
            if y_again.requires_grad:
                torch.autograd.backward(y_again, y_bar)
        x_bar = x_leaf.grad if x_leaf.grad is not None else torch.zeros_like(x)
        return x, x_bar


def accumulate_grad(param: Tensor | None, grad: Tensor | None) -> None:
    """Hand ``grad = dL/dparam`` to autograd's bookkeeping for ``param``.

    A leaf (a parameter, or the leaf alias :class:`InvertibleSequential` substitutes for it) gets
    it added into ``.grad`` the way autograd does: created when absent, added in place otherwise.
    A tensor computed from leaves (a ``torch.nn.utils.parametrize`` weight, read under
    ``torch.enable_grad``) passes it on through its graph with ``torch.autograd.backward``.
    Frozen (``requires_grad=False``) and absent (``None``, e.g. no bias) parameters are skipped.
    ``grad`` must be a fresh tensor owned by the caller, because it may become ``param.grad``.
    """
    if param is None or grad is None or not param.requires_grad:
        return
    if grad.dtype != param.dtype:  # reverse steps of half-precision layers work in float32
        grad = grad.to(param.dtype)
    if param.grad_fn is not None:
        run_backward(param, grad)
    elif param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def run_backward(out: Tensor, out_bar: Tensor) -> None:
    """``torch.autograd.backward(out, out_bar)``, straight into autograd's engine.

    Reverse steps call it once or twice per layer, on small graphs, where the Python around
    ``torch.autograd.backward`` (argument normalisation, checks that hold here by construction)
    costs about as much as the engine's own work: ~11 us of ~25 us on a 2-core CPU.
    """
    Variable._execution_engine.run_backward((out,), (out_bar,), False, False, (), True, True)


_HALF = (torch.float16, torch.bfloat16)


def work_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype an inverse computes in: the widest of ``tensors``, and float32 for half precision.

    CPU LAPACK (LU, triangular solves) and FFTs have no float16/bfloat16 kernels, and a solve in
    half precision would lose most of its digits anyway, so half-precision layers and autocast
    outputs are inverted in float32 and the results cast back by the caller.
    """
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype is not dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _HALF else dtype


def full_precision(t: Tensor) -> AbstractContextManager:
    """Autocast off for ``t``'s device: closed-form inverses compute in :func:`work_dtype`
    (nothing to enter when autocast is off already)."""
    device = t.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()


def as_applied(weight: Tensor) -> Tensor:
    """``weight`` as the forward's matmul or convolution applied it: under ``torch.autocast`` for
    its device, rounded to the autocast dtype (autocast casts float32 and half weights, never float64).

    A layer's inverse and reverse then invert and differentiate the map the forward computed,
    ``x -> round(W) x``, not ``x -> W x``: the two differ by a rounding of ``W`` per entry, which the
    inverse would otherwise add to every rebuilt input. Call it before :func:`full_precision`
    switches autocast off. Outside autocast it returns ``weight`` itself.
    """
    device = weight.device.type
    if weight.dtype == torch.float64 or not torch.is_autocast_enabled(device):
        return weight
    return weight.to(torch.get_autocast_dtype(device))


def half_precision(t: Tensor) -> torch.dtype | None:
    """The half-precision dtype a tensor rebuilt in a reverse step was rounded to in forward, or None.

    Under ``torch.autocast`` with a half dtype (the reverse step restores the forward's state), the
    layer above ``t`` rounded it to that dtype when it applied its matmul or convolution, whatever
    ``t``'s own dtype; without autocast, ``t``'s dtype when that is half precision. A rebuilt ``t``
    then carries an error of about one unit of that precision, which an inverse with a bounded range
    (``ELU``) has to expect.
    """
    device = t.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) in _HALF:
        return torch.get_autocast_dtype(device)
    return t.dtype if t.dtype in _HALF else None
