"""Additive coupling (RevNet block): invertible for *any* sub-networks F and G.

Gomez, Ren, Urtasun & Grosse, "The Reversible Residual Network: Backpropagation Without
Storing Activations", NeurIPS 2017 (arXiv 1707.04585), section 3.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import Tensor, nn

from ._checks import check_tensor
from ._replay import rng_point
from ._storage import sole_reference
from .base import Invertible, run_backward


class AdditiveCoupling(Invertible):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, with ``x = (x1, x2)`` split in halves along ``dim``.

    Inverse: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``: only F and G are *evaluated*, never inverted,
    so they can be any modules mapping the half shape ``(batch, C/2, ...)`` to itself. Dropout
    and batch norm in training mode are fine inside :class:`InvertibleSequential`, which replays
    the random state recorded before each of F and G (``invlib._replay``) and the buffers as they
    were before the forward; a reverse step called on its own replays nothing.
    Conditioning: the inverse subtracts what the forward added, so rounding errors are not
    amplified by a slope, but they scale with the size of the activations: when the residual
    streams grow to ``|y| >> |x|``, ``y2 - G(y1)`` cancels and the rebuilt ``x`` loses about
    ``log10(|y| / |x|)`` digits.
    Shapes: ``x``, ``y``: ``(batch, C, ...)`` with ``C`` even, split along the channels
    (``dim=1``, the default: images, MLPs); ``dim=-1`` splits the last dimension instead, the
    features of a ``(batch, tokens, features)`` sequence, as a reversible transformer does
    (two residual streams of ``features / 2`` each; splitting dim 1 would split the tokens).
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
    #: The block's own code draws no random numbers; F and G are examined (``invlib._replay``).
    draws_random = False
    #: F and G may take a second argument, a conditioning context (see InvertibleSequential).
    takes_context = True

    def __init__(self, F: nn.Module, G: nn.Module, dim: int = 1) -> None:
        super().__init__()
        for name, module in (("F", F), ("G", G)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"AdditiveCoupling: {name} must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise ValueError(f"AdditiveCoupling: dim must be a non-zero int (1 for channels, -1 for the last "
                             f"dimension; 0 would split the batch), got {dim!r}")
        self.F = F
        self.G = G
        self.dim = dim

    def _halves(self, t: Tensor, name: str) -> tuple[Tensor, Tensor]:
        layout = "(batch, C, ...) with C even" if self.dim == 1 else f"(batch, ...) with an even size along dim {self.dim}"
        t = check_tensor(t, name=name, owner="AdditiveCoupling", layout=layout, min_ndim=2)
        if not -t.ndim < self.dim < t.ndim:
            raise ValueError(f"AdditiveCoupling: {name} has shape {tuple(t.shape)}, with no dimension {self.dim} "
                             "to split other than the batch")
        if t.shape[self.dim] % 2:
            raise ValueError(
                f"AdditiveCoupling: {name} must have an even size along dim {self.dim} to split in halves, got shape "
                f"{tuple(t.shape)}; pad or project the input to an even number of features/channels"
            )
        return t.chunk(2, self.dim)

    def _call(self, module: nn.Module, name: str, t: Tensor, context: Tensor | None) -> Tensor:
        if torch.compiler.is_compiling():  # traced as one graph: no replay point, no version check
            return module(t) if context is None else module(t, context)
        rng_point(self, name)  # forward records, reverse restores: dropout draws the same masks
        version = t._version
        out = module(t) if context is None else module(t, context)
        if t._version != version:
            raise ValueError(
                f"AdditiveCoupling: {name} modified its input in place (e.g. torch.relu_, or a module with "
                "inplace=True at its start); the block is then no longer invertible, and its reverse step "
                f"evaluates {name} on a rebuilt input that must stay intact. Use out-of-place operations "
                f"in {name} (nn.ReLU() rather than nn.ReLU(inplace=True)), or clone the input first")
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
            return torch.cat([y1, y2], dim=self.dim)
        # Without a tape (e.g. inside InvertibleSequential) the sums go straight into the halves
        # of y: autograd cannot record out= writes, but here it need not, and the cat copy is saved.
        y = torch.empty_like(x)
        y1, y2 = y.chunk(2, self.dim)
        torch.add(x1, self._call(self.F, "F", x2, context), out=y1)
        torch.add(x2, self._call(self.G, "G", y1, context), out=y2)
        return y

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        y1, y2 = self._halves(y, "y")
        x2 = y2 - self._call(self.G, "G", y1, context)
        x1 = y1 - self._call(self.F, "F", x2, context)
        return torch.cat([x1, x2], dim=self.dim)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Invertible.reverse`; with a ``context`` that requires grad, its gradient
        ``(dF/dc)^T y1_total + (dG/dc)^T y2_bar`` is accumulated into ``context``'s leaves too."""
        with torch.no_grad():
            return self._reverse(y, y_bar, overwrite, context)

    def extra_repr(self) -> str:
        return "" if self.dim == 1 else f"dim={self.dim}"

    def _reverse(self, y: Tensor, y_bar: Tensor, overwrite: bool, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y1, y2 = self._halves(y, "y")  # (InvertibleSequential hands over outputs of this block's forward)
        y1_bar, y2_bar = y_bar.chunk(2, self.dim)
        # x and x_bar are written half by half: into y and y_bar themselves when the caller hands
        # them over, else into fresh buffers. Either way no torch.cat copies.
        if overwrite:
            x, x_bar, (x1, x2), (x1_bar, x2_bar) = y, y_bar, (y1, y2), (y1_bar, y2_bar)
        else:
            x, x_bar = torch.empty_like(y), torch.empty_like(y_bar)
            (x1, x2), (x1_bar, x2_bar) = x.chunk(2, self.dim), x_bar.chunk(2, self.dim)
            x1_bar.copy_(y1_bar)
        # ---- G stage: x2 = y2 - G(y1);  y1_total = y1_bar + G'(y1)^T y2_bar  (accumulated in x1_bar)
        self._undo(self.G, "G", y1, y2, x2, y2_bar, x1_bar, context)
        # ---- F stage: x1 = y1 - F(x2);  x2_bar = y2_bar + F'(x2)^T y1_total
        if x2_bar.data_ptr() != y2_bar.data_ptr():
            x2_bar.copy_(y2_bar)
        self._undo(self.F, "F", x2, y1, x1, x1_bar, x2_bar, context)
        return x, x_bar

    def _undo(self, module: nn.Module, name: str, u: Tensor, v: Tensor, out: Tensor,
              v_bar: Tensor, u_bar: Tensor, context: Tensor | None) -> None:
        """One half of the reverse step, for a half ``v = w + M(u)`` of the forward pass:
        ``out = v - M(u)`` (the rebuilt ``w``) and ``u_bar += M'(u)^T v_bar`` in place,
        accumulating ``M``'s parameter gradients on the way; ``out`` may alias ``v``. The leaf
        aliases ``u``'s storage but owns its version counter (_alias), so ``out`` may be written,
        in the same buffer, before the backward."""
        leaf = _alias(u).requires_grad_()
        with torch.enable_grad():
            m = self._call(module, name, leaf, context)
        torch.sub(v, m, out=out)
        # m's values are used; its memory may go before the backward below, which reads only its
        # shape, if nothing but this frame can reach it: no other Python reference holds the
        # tensor (a hook or a module that kept its output), no weak reference can revive it, and
        # no other tensor shares the storage (the graph saved no output, no view).
        if m.grad_fn is not None and sys.getrefcount(m) == 2 and not weakref.getweakrefcount(m) \
                and sole_reference(m):
            m.untyped_storage().resize_(0)
        if m.requires_grad:  # under autocast m may be half precision while v_bar is not
            run_backward(m, v_bar if v_bar.dtype == m.dtype else v_bar.to(m.dtype))
            if leaf.grad is not None:
                u_bar.add_(leaf.grad)


def _alias(t: Tensor) -> Tensor:
    """A tensor viewing ``t``'s memory with a version counter of its own (not a view of ``t``)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
