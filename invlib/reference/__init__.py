"""NumPy reference for the seed post's algorithm: reverse mode by inversion instead of caching.

The seed post ("An Analogy to the Adjoint Method for Invertible Discrete NNs", 2024)
composes fixed-width maps ``f_k: R^n -> R^n`` into ``F_D = f_D o ... o f_1`` and proposes
to rebuild each intermediate ``F_{k-1}(x) = f_k^{-1}(F_k(x))`` during the backward sweep
instead of caching it. This module keeps that story small and explicit, for one input
vector ``x`` of shape ``(n,)``:

* layers with ``__call__``, ``inverse``, ``vjp`` (``J^T v``), ``jmp`` (``J M``) and
  parameter VJPs, each reporting the FLOPs it spends to a :class:`Ledger`;
* :func:`grad_by_caching` (ordinary backprop) and :func:`grad_by_inversion` (the post's
  idea), which run the *same* vector-Jacobian products;
* :func:`post_pseudocode`, the post's pseudo-code transcribed literally, and
  :func:`post_pseudocode_corrected`, the two-line fix;
* :func:`accumulate`, the input gradient by forward, reverse or mixed Jacobian accumulation.

The ``torch`` layers in :mod:`invlib` are the batched, production version of the same idea.
"""

from ._backprop import accumulate, finite_difference_grad, forward, grad_by_caching, grad_by_inversion, inverse
from ._layers import Dense, Layer, LeakyReLU, Ledger, random_layers
from ._post import post_inputs, post_pseudocode, post_pseudocode_corrected

__all__ = ["Ledger", "Dense", "LeakyReLU", "Layer", "random_layers", "forward", "inverse",
           "grad_by_caching", "grad_by_inversion", "accumulate", "finite_difference_grad",
           "post_inputs", "post_pseudocode", "post_pseudocode_corrected"]
