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

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class Ledger:
    """Counts FLOPs by category and the floats an algorithm keeps alive (current and peak)."""

    flops: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    peak: int = 0

    def spend(self, category: str, n: int) -> None:
        self.flops[category] = self.flops.get(category, 0) + int(n)

    def hold(self, n: int) -> None:
        self.stored += int(n)
        self.peak = max(self.peak, self.stored)

    def drop(self, n: int) -> None:
        self.stored -= int(n)


def _spend(ledger: Ledger | None, category: str, n: int) -> None:
    if ledger is not None:
        ledger.spend(category, n)


class Dense:
    """Affine map ``y = W x + b`` with a square, invertible ``W`` (shape ``(n, n)``).

    Inverse: solve ``W x = y - b`` by LU (``numpy.linalg.solve``), never forming ``W^{-1}``.
    Jacobian ``J = W``; parameter VJPs ``W_bar = y_bar x^T``, ``b_bar = y_bar``.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray | None = None):
        W = np.asarray(W, dtype=float)
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise ValueError(f"W must be square (n, n) to keep the width fixed, got shape {W.shape}")
        cond = np.linalg.cond(W)
        if not np.isfinite(cond) or cond > 1 / np.finfo(float).eps:
            raise ValueError(f"W is singular to working precision (condition number {cond:.3g}); "
                             "an invertible layer needs a well-conditioned square weight")
        self.W, self.b = W, np.zeros(len(W)) if b is None else np.asarray(b, dtype=float)

    def __call__(self, x: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "forward", 2 * self.W.size)
        return self.W @ x + self.b

    def inverse(self, y: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        n = len(self.W)
        _spend(ledger, "inverse", 2 * n**3 // 3 + 2 * n**2)  # LU factorization + two triangular solves
        return np.linalg.solve(self.W, y - self.b)

    def vjp(self, x: np.ndarray, v: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "vjp", 2 * self.W.size)
        return self.W.T @ v

    def jmp(self, x: np.ndarray, M: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "jmp", 2 * self.W.size * M.shape[1])
        return self.W @ M

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        return self.W

    def param_vjp(self, x: np.ndarray, v: np.ndarray, ledger: Ledger | None = None) -> dict:
        _spend(ledger, "param_vjp", self.W.size)
        return {"W": np.outer(v, x), "b": v.copy()}


class LeakyReLU:
    """Elementwise ``y = x`` for ``x >= 0`` and ``y = a x`` otherwise; invertible iff ``a > 0``.

    Jacobian ``J = diag(1 or a)``, so ``J^T v`` costs ``n`` FLOPs and ``J M`` costs ``n^2``.
    """

    def __init__(self, negative_slope: float = 0.1):
        if not negative_slope > 0:
            raise ValueError("negative_slope must be > 0 for LeakyReLU to be invertible, "
                             f"got {negative_slope!r}")
        self.a = float(negative_slope)

    def _slope(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, 1.0, self.a)

    def __call__(self, x: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "forward", x.size)
        return x * self._slope(x)

    def inverse(self, y: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "inverse", y.size)
        return y / self._slope(y)  # sign(y) == sign(x) because a > 0

    def vjp(self, x: np.ndarray, v: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "vjp", x.size)
        return self._slope(x) * v

    def jmp(self, x: np.ndarray, M: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
        _spend(ledger, "jmp", M.size)
        return self._slope(x)[:, None] * M

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        return np.diag(self._slope(x))

    def param_vjp(self, x: np.ndarray, v: np.ndarray, ledger: Ledger | None = None) -> dict:
        return {}


Layer = Dense | LeakyReLU


def forward(layers: Sequence[Layer], x: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
    """``F_D(x) = f_D(...f_1(x))``, keeping nothing but the running activation."""
    for f in layers:
        x = f(x, ledger)
    return x


def inverse(layers: Sequence[Layer], y: np.ndarray, ledger: Ledger | None = None) -> np.ndarray:
    """``F_D^{-1}(y) = f_1^{-1}(...f_D^{-1}(y))``. Rounding errors grow by up to the condition
    number of each inverted map, so deep stacks of contracting layers lose digits."""
    for f in reversed(layers):
        y = f.inverse(y, ledger)
    return y


def grad_by_caching(layers: Sequence[Layer], dL: Callable, x: np.ndarray,
                    ledger: Ledger | None = None) -> tuple[np.ndarray, list[dict]]:
    """Backprop: cache every layer input ``F_{k-1}(x)``, then ``x_bar <- J_k^T x_bar`` for k = D..1.

    Returns ``(x_bar, param_bars)`` with ``param_bars[k]`` the gradients of layer ``k``.
    Stored floats peak at ``(D + 2) n``: the cache, the running activation and the cotangent.
    """
    ledger = ledger if ledger is not None else Ledger()
    ledger.hold(x.size)  # the running activation
    cache = []
    for f in layers:
        cache.append(x)
        ledger.hold(x.size)
        x = f(x, ledger)
    y_bar = dL(x)
    ledger.hold(y_bar.size)
    param_bars: list[dict] = [{} for _ in layers]
    for k in reversed(range(len(layers))):
        x_k = cache.pop()
        param_bars[k] = layers[k].param_vjp(x_k, y_bar, ledger)
        y_bar = layers[k].vjp(x_k, y_bar, ledger)
        ledger.drop(x_k.size)
    return y_bar, param_bars


def grad_by_inversion(layers: Sequence[Layer], dL: Callable, x: np.ndarray,
                      ledger: Ledger | None = None) -> tuple[np.ndarray, list[dict]]:
    """The post's idea: rebuild ``F_{k-1}(x) = f_k^{-1}(F_k(x))`` instead of caching it.

    Same VJPs as :func:`grad_by_caching`, in the same order; stored floats stay at ``2 n``
    (one activation and one cotangent) whatever the depth, for one inverse per layer.
    """
    ledger = ledger if ledger is not None else Ledger()
    ledger.hold(x.size)
    y = forward(layers, x, ledger)
    y_bar = dL(y)
    ledger.hold(y_bar.size)
    param_bars: list[dict] = [{} for _ in layers]
    for k in reversed(range(len(layers))):
        y = layers[k].inverse(y, ledger)  # now y holds F_{k-1}(x), the input of layer k
        param_bars[k] = layers[k].param_vjp(y, y_bar, ledger)
        y_bar = layers[k].vjp(y, y_bar, ledger)
    return y_bar, param_bars


def post_inputs(layers: Sequence[Layer]) -> tuple[list, list, Callable]:
    """The pseudo-code's inputs for ``layers``: maps ``fs``, Jacobian functions ``dfs`` (dense
    ``n x n`` matrices) and ``inv``, which takes one of ``fs`` and returns its inverse."""
    fs = [f.__call__ for f in layers]
    dfs = [f.jacobian for f in layers]
    return fs, dfs, lambda f: f.__self__.inverse


def post_pseudocode(fs, dfs, inv, dL, x):
    """The post's pseudo-code, transcribed line for line (kept wrong on purpose)."""
    k = len(fs)
    aFi = x
    for i in range(k):
        aFi = fs[i](aFi)

    dFi = dL(aFi)
    for i in range(k - 1, -1, -1):
        aFi = inv(fs[i])(x)
        dFi = dfs[i](aFi) * dFi

    return dFi


def post_pseudocode_corrected(fs, dfs, inv, dL, x):
    """The pseudo-code with its two bugs fixed: invert the running ``aFi`` (not ``x``) and
    multiply by the transposed Jacobian, ``dFi <- Df_i(aFi)^T dFi`` (a vector-Jacobian product)."""
    k = len(fs)
    aFi = x
    for i in range(k):
        aFi = fs[i](aFi)

    dFi = dL(aFi)
    for i in range(k - 1, -1, -1):
        aFi = inv(fs[i])(aFi)
        dFi = dfs[i](aFi).T @ dFi

    return dFi


def accumulate(layers: Sequence[Layer], dL: Callable, x: np.ndarray, split: int,
               ledger: Ledger | None = None) -> np.ndarray:
    """Input gradient by Jacobian accumulation in a chosen order, with no inversion.

    Layers ``1..split`` are accumulated *forward* alongside the forward pass into
    ``M = J_split ... J_1`` (an ``n x n`` matrix, nothing cached); layers ``split+1..D``
    are cached and swept in *reverse* with vector-Jacobian products. ``split = 0`` is pure
    reverse mode (backprop), ``split = D`` pure forward mode; then ``x_bar = M^T v``.
    """
    if not 0 <= split <= len(layers):
        raise ValueError(f"split must be in [0, {len(layers)}], got {split}")
    ledger = ledger if ledger is not None else Ledger()
    n = x.size
    ledger.hold(n)  # the running activation
    M = None
    if split > 0:
        M = np.eye(n)
        ledger.hold(M.size)
    for f in layers[:split]:
        M = f.jmp(x, M, ledger)
        x = f(x, ledger)
    cache = []
    for f in layers[split:]:
        cache.append(x)
        ledger.hold(n)
        x = f(x, ledger)
    v = dL(x)
    ledger.hold(n)
    for f, x_k in zip(reversed(layers[split:]), reversed(cache)):
        v = f.vjp(x_k, v, ledger)
        ledger.drop(n)
    if M is None:
        return v
    ledger.spend("jmp", 2 * M.size)
    return M.T @ v


def finite_difference_grad(fun: Callable[[np.ndarray], float], x: np.ndarray,
                           eps: float = 1e-6) -> np.ndarray:
    """Central differences ``(fun(x + eps e_i) - fun(x - eps e_i)) / (2 eps)``; error O(eps^2)."""
    g = np.empty_like(x, dtype=float)
    for i in range(x.size):
        e = np.zeros_like(x, dtype=float)
        e.flat[i] = eps
        g.flat[i] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return g


def random_layers(width: int, depth: int, seed: int = 0, negative_slope: float = 0.1) -> list[Layer]:
    """``depth`` blocks ``Dense -> LeakyReLU`` of the given width (``2 depth`` maps in all).

    Each ``W`` is a random orthogonal matrix plus a small Gaussian perturbation, so it is
    invertible and well conditioned (condition number near 1) at any width.
    """
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for _ in range(depth):
        Q, R = np.linalg.qr(rng.standard_normal((width, width)))
        W = Q * np.sign(np.diag(R)) + 0.1 / np.sqrt(width) * rng.standard_normal((width, width))
        layers += [Dense(W, 0.1 * rng.standard_normal(width)), LeakyReLU(negative_slope)]
    return layers
