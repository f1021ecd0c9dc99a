"""The seed post's pseudo-code, transcribed literally, and its two-line correction."""

from __future__ import annotations

from typing import Callable, Sequence

from ._layers import Layer

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
