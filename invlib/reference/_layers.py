"""Fixed-width layers ``f: R^n -> R^n`` with inverses, Jacobian products and a FLOP ledger."""

from __future__ import annotations

from dataclasses import dataclass, field

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
