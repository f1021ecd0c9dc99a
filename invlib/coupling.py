"""Additive coupling (RevNet block): invertible for *any* sub-networks F and G.

Gomez, Ren, Urtasun & Grosse, "The Reversible Residual Network: Backpropagation Without
Storing Activations", NeurIPS 2017 (arXiv 1707.04585), section 3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_tensor
from ._replay import rng_point
from ._storage import sole_reference
from .base import Invertible


class AdditiveCoupling(Invertible):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, with ``x = (x1, x2)`` split in halves along dim 1.

    Inverse: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``: only F and G are *evaluated*, never inverted,
    so they can be any modules mapping the half shape ``(batch, C/2, ...)`` to itself. Dropout
    and batch norm in training mode are fine inside :class:`InvertibleSequential`, which replays
    the random state recorded before each of F and G (``invlib._replay``) and the buffers as they
    were before the forward; a reverse step called on its own replays nothing.
    Conditioning: the inverse subtracts what the forward added, so rounding errors are not
    amplified by a slope, but they scale with the size of the activations: when the residual
    streams grow to ``|y| >> |x|``, ``y2 - G(y1)`` cancels and the rebuilt ``x`` loses about
    ``log10(|y| / |x|)`` digits.
    Shapes: ``x``, ``y``: ``(batch, C, ...)`` with ``C`` even.
    Conditional coupling: ``forward(x, context)`` calls ``F(x2, context)`` and ``G(y1, context)``
    (a conditional flow's side input, e.g. an encoder's output); the block stays invertible in
    ``x`` for a fixed context, and gradients reach the context's producer.

    Reverse step, read off the inversion instead of re-running the forward: with ``y1`` a leaf,
    ``g = G(y1)`` is evaluated once with autograd, giving both ``x2 = y2 - g`` and the VJP
    ``y1_bar += G'(y1)^T y2_bar``; likewise ``f = F(x2)`` gives ``x1 = y1 - f`` and
    ``x2_bar = y2_bar + F'(x2)^T y1_total``::

        y1_total = y1_bar + (dG/dy1)^T y2_bar      x1_bar = y1_total
        x2_bar   = y2_bar + (dF/dx2)^T y1_total

    Cost: one forward and one backward of F and of G, i.e. about 4/3 of plain backprop's
    forward + backward; re-running the forward after inverting (MemCNN, RevLib) costs 5/3.

    """

    reverse_in_place = True
    #: F and G may take a second argument, a conditioning context (see InvertibleSequential).
    takes_context = True

    def __init__(self, F: nn.Module, G: nn.Module) -> None:
        super().__init__()
        for name, module in (("F", F), ("G", G)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"AdditiveCoupling: {name} must be a torch.nn.Module, got {type(module).__name__}")
        self.F = F
        self.G = G

    def _halves(self, t: Tensor, name: str) -> tuple[Tensor, Tensor]:
        t = check_tensor(t, name=name, owner="AdditiveCoupling", layout="(batch, C, ...) with C even", min_ndim=2)
        if t.shape[1] % 2:
            raise ValueError(
                f"AdditiveCoupling: {name} must have an even size along dim 1 to split in halves, got shape "
                f"{tuple(t.shape)}; pad or project the input to an even number of features/channels"
            )
        half = t.shape[1] // 2
        return t.narrow(1, 0, half), t.narrow(1, half, half)

    def _call(self, module: nn.Module, name: str, t: Tensor, context: Tensor | None) -> Tensor:
        rng_point(self, name)  # forward records, reverse restores: dropout draws the same masks
        out = module(t) if context is None else module(t, context)
        if out.shape != t.shape:
            raise ValueError(
                f"AdditiveCoupling: {name} must map the half shape {tuple(t.shape)} to itself, got {tuple(out.shape)}"
            )
        return out

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x1, x2 = self._halves(x, "x")
        if torch.is_grad_enabled():
            y1 = x1 + self._call(self.F, "F", x2, context)
            y2 = x2 + self._call(self.G, "G", y1, context)
            return torch.cat([y1, y2], dim=1)
        # Without a tape (e.g. inside InvertibleSequential) the sums go straight into the halves
        # of y: autograd cannot record out= writes, but here it need not, and the cat copy is saved.
        y = torch.empty_like(x)
        y1, y2 = y.narrow(1, 0, x1.shape[1]), y.narrow(1, x1.shape[1], x1.shape[1])
        torch.add(x1, self._call(self.F, "F", x2, context), out=y1)
        torch.add(x2, self._call(self.G, "G", y1, context), out=y2)
        return y

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        y1, y2 = self._halves(y, "y")
        x2 = y2 - self._call(self.G, "G", y1, context)
        x1 = y1 - self._call(self.F, "F", x2, context)
        return torch.cat([x1, x2], dim=1)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Invertible.reverse`; with a ``context`` that requires grad, its gradient
        ``(dF/dc)^T y1_total + (dG/dc)^T y2_bar`` is accumulated into ``context``'s leaves too."""
        with torch.no_grad():
            return self._reverse(y, y_bar, overwrite, context)

    def _reverse(self, y: Tensor, y_bar: Tensor, overwrite: bool, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y1, y2 = self._halves(y, "y")
        half = y1.shape[1]
        y1_bar, y2_bar = y_bar.narrow(1, 0, half), y_bar.narrow(1, half, half)
        # x and x_bar are written half by half: into y and y_bar themselves when the caller hands
        # them over, else into fresh buffers. Either way no torch.cat copies.
        x, x_bar = (y, y_bar) if overwrite else (torch.empty_like(y), torch.empty_like(y_bar))
        x1, x2 = x.narrow(1, 0, half), x.narrow(1, half, half)
        x1_bar, x2_bar = x_bar.narrow(1, 0, half), x_bar.narrow(1, half, half)

        # ---- G stage: x2 = y2 - G(y1);  y1_total = y1_bar + G'(y1)^T y2_bar  (stored in x1_bar)
        self._undo(self.G, "G", y1, y2, x2, y2_bar, y1_bar, x1_bar, context)
        # ---- F stage: x1 = y1 - F(x2);  x2_bar = y2_bar + F'(x2)^T y1_total
        self._undo(self.F, "F", x2, y1, x1, x1_bar, y2_bar, x2_bar, context)
        return x, x_bar

    def _undo(self, module: nn.Module, name: str, u: Tensor, v: Tensor, out: Tensor,
              v_bar: Tensor, u_bar: Tensor, u_bar_out: Tensor, context: Tensor | None) -> None:
        """One half of the reverse step, for a half ``v = w + M(u)`` of the forward pass:
        ``out = v - M(u)`` (the rebuilt ``w``) and ``u_bar_out = u_bar + M'(u)^T v_bar``,
        accumulating ``M``'s parameter gradients on the way. ``out`` and ``u_bar_out`` may
        alias ``v`` and ``u_bar``. The leaf aliases ``u``'s storage but owns its version counter
        (_alias), so ``out`` may be written, in the same buffer, before the backward."""
        leaf = _alias(u).requires_grad_()
        with torch.enable_grad():
            m = self._call(module, name, leaf, context)
        torch.sub(v, m, out=out)
        _release_if_unshared(m)
        _backward(m, v_bar)
        del m
        _add_grad(u_bar, leaf, out=u_bar_out)


def _alias(t: Tensor) -> Tensor:
    """A tensor viewing ``t``'s memory with a version counter of its own (not a view of ``t``)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _release_if_unshared(out: Tensor) -> None:
    """Free ``out``'s memory now if nothing else holds it (its values are already used).

    ``backward(out, out_bar)`` reads only ``out``'s shape. If the sub-network's graph saved
    ``out`` (Tanh, Sigmoid save their output), or ``out`` is a leaf, a view, or the output of a
    nested invlib container, its storage has other holders and is left alone; otherwise (Linear,
    LeakyReLU save their input) this drops one half-activation from the reverse step's peak.
    """
    if out.grad_fn is not None and sole_reference(out):
        out.untyped_storage().resize_(0)


def _backward(out: Tensor, out_bar: Tensor) -> None:
    """Back-propagate ``out_bar`` from ``out``, accumulating into leaves' ``.grad`` (skip if constant)."""
    if out.requires_grad:  # under autocast out may be half precision while out_bar is not
        torch.autograd.backward(out, out_bar.to(out.dtype))


def _add_grad(bar: Tensor, leaf: Tensor, *, out: Tensor) -> None:
    """``out = bar + leaf.grad``, where a missing ``.grad`` (output independent of the leaf) is zero."""
    if leaf.grad is None:
        out.copy_(bar)
    else:
        torch.add(bar, leaf.grad, out=out)
