"""Reverse mode through a chain of fixed-width layers: by caching, by inversion, or any order."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ._layers import Layer, Ledger

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
