"""Whether a weight can be inverted in its precision: the conditioning verdict of a layer.

A layer's inverse solves with the factors ``W = P L U`` of its weight (a dense layer), of one
``C x C`` block per frequency (a convolution) or with factors it keeps (``LULinear``). The
verdict rests on the 1-norm condition number

    cond_1(W) = ||W||_1 ||W^{-1}||_1,

with ``||W^{-1}||_1`` estimated from the factors by the Hager-Higham estimator of
``invlib._condition`` (LAPACK ``xGECON``'s: a few extra solves, O(n^2) each, no SVD), or read
off an explicit inverse when one was formed anyway. The ratio of the pivots ``max|U_ii| /
min|U_ii|`` is no substitute: a unit triangular matrix with large off-diagonal entries has every
pivot 1 and a condition number up to 1e16 at n = 8. For a block-diagonal operator (a convolution:
one block per frequency) the condition number is ``max_k ||W_k||_1 * max_k ||W_k^{-1}||_1``.
Thresholds, ``eps = finfo(dtype).eps`` of the dtype the inverse computes in:

* non-finite factors: the weight holds NaN or inf -> ``ValueError``;
* a zero pivot, a NaN or inf estimate, or ``cond > 1/eps``: singular to working precision ->
  ``ValueError``;
* ``cond > 1/sqrt(eps)``: badly conditioned, ``log10(cond)`` digits may be lost -> ``UserWarning``;
* (packed LU only) pivot growth ``max|U_ij| / max|W_ij| > 1/sqrt(eps)``: the factors themselves are
  inaccurate even if ``W`` is well conditioned -> ``UserWarning``.

The estimate is a lower bound, usually within a factor 3 of ``cond_1``, which is itself within a
factor ``n`` of the 2-norm condition number: a matrix within a factor ~3n of a threshold may fall
on either side of it. (``LULinear`` never forms ``W``, so it estimates ``||W||_1`` the same way,
from products with its factors; that product of two estimates can be off by up to ~9.)

Reading a value back to the host is a synchronisation on a GPU, so verdicts are *codes*: small
integers computed on the device (:func:`code_of`), the sum of ``WARN``, ``GROWTH``,
``SINGULAR`` and ``SOLVE``. :class:`Verdicts` gathers the codes of every layer of a
backward into one ``int8`` tensor per device and reads them in one transfer; only a layer whose
code raises an alarm is examined again, on the host, to raise or warn with its numbers. One byte
per layer is all a verdict keeps until then, so the check's memory does not grow with depth.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_finite
from ._condition import lu_solver, norm1

WARN, GROWTH, SINGULAR = 1, 2, 4
#: Blocks up to this size are judged from their explicit inverses (exact ``||W_k^{-1}||_1``):
#: at that size a batched solve against the identity costs fewer calls than the estimator.
EXACT_BLOCK = 32
#: Not an alarm: the weight is too ill-conditioned to multiply by its explicit inverse
#: (``invlib.linear``'s rule), so its reverse step solves with LU factors instead.
SOLVE = 8
ALARM = WARN | GROWTH | SINGULAR


def code_of(cond: Tensor, eps: float, growth: Tensor | None = None, solve_above: float | None = None) -> Tensor:
    """``int8`` codes from condition estimates and pivot growth (``(m,)`` tensors on one device);
    nothing is read back. ``cond`` must be inf or NaN for a zero pivot or non-finite factors (a
    solve divides by the zero pivot; NaN propagates), and is then singular, like ``cond > 1/eps``.

    Each number is compared with its thresholds at once and the bits are summed (a singular
    weight is also flagged badly conditioned; :meth:`Verdicts.deliver` explains it as singular).
    """
    limits, bits = _thresholds(eps, solve_above, cond.device, growth is not None)
    stats = (cond if growth is None else torch.stack([cond, growth], -1)).nan_to_num(math.inf, math.inf)
    if growth is None:
        stats = stats.unsqueeze(-1)
    return ((stats.unsqueeze(-1) > limits) * bits).sum((-2, -1), dtype=torch.int8)


def _thresholds(eps: float, solve_above: float | None, device: torch.device, growth: bool) -> tuple[Tensor, Tensor]:
    """The thresholds each statistic is compared with, and the bit each comparison sets:
    ``cond`` against ``1/sqrt(eps)`` (WARN), ``1/eps`` (SINGULAR), ``solve_above`` (SOLVE);
    ``growth`` against ``1/sqrt(eps)`` (GROWTH). Made per call (two small tensors): a cache would
    hold memory that a measurement of the first step would count and later steps would not."""
    warn, solve = 1.0 / math.sqrt(eps), math.inf if solve_above is None else solve_above
    limits = [[warn, 1.0 / eps, solve]] + ([[warn, math.inf, math.inf]] if growth else [])
    bits = [[WARN, SINGULAR, SOLVE]] + ([[GROWTH, 0, 0]] if growth else [])
    return (torch.tensor(limits, dtype=torch.float64, device=device),
            torch.tensor(bits, dtype=torch.int8, device=device))


class Verdicts:
    """The codes of the layers judged in one backward, read back in one transfer per device.

    ``put(order, code, explain, settle)`` files one layer's code (a 0-d or one-element device
    tensor, copied into this object's ``int8`` buffer); ``explain()`` is called, on the host,
    only if the code raises an alarm: it recomputes the layer's numbers and raises
    ``ValueError`` or warns; ``settle(code)`` is told every code (a layer choosing its method).
    :meth:`deliver` reads the codes, settles, and explains in ``order``. The buffer holds
    ``CAPACITY`` codes (256 bytes), whatever the depth; a deeper stack fills it more than once
    and costs one more read per ``CAPACITY`` layers.
    """

    CAPACITY = 256

    def __init__(self) -> None:
        self.codes: dict[torch.device, Tensor] = {}
        self.filed: dict[torch.device, list] = {}
        self.alarms: list[tuple[int, Callable[[], object]]] = []
        self.every = 0

    def put(self, order: int, code: Tensor, explain: Callable[[], object],
            settle: Callable[[int], None] | None = None) -> None:
        """File one layer's code (a 0-d or one-element tensor)."""
        self.put_many([order], code.reshape(1), [explain], [settle])

    def put_many(self, orders: list[int], codes: Tensor, explains: list[Callable[[], object]],
                 settles: list[Callable[[int], None] | None]) -> None:
        """File the codes of several layers at once (``codes``: ``(m,)``)."""
        device = codes.device
        if device not in self.codes:
            self.codes[device] = torch.zeros(self.CAPACITY, dtype=torch.int8, device=device)
            self.filed[device] = []
        for start in range(0, len(orders), self.CAPACITY):
            stop = min(start + self.CAPACITY, len(orders))
            if len(self.filed[device]) + stop - start > self.CAPACITY:
                self._read(device)
            position = len(self.filed[device])
            self.codes[device][position:position + stop - start].copy_(codes[start:stop])
            self.filed[device].extend(zip(orders[start:stop], explains[start:stop], settles[start:stop]))

    def _read(self, device: torch.device) -> None:
        filed = self.filed[device]
        for (order, explain, settle), code in zip(filed, self.codes[device][:len(filed)].tolist()):
            self.every |= code
            if settle is not None:
                settle(code)
            if code & ALARM:
                self.alarms.append((order, explain))
        self.filed[device] = []

    def deliver(self, note: Callable[[int], str | None] = lambda order: None) -> int:
        """Read what is left, settle, explain alarms in ``order`` (the first refusal raises, with
        ``note(order)`` added to its message); return the bitwise or of all codes."""
        for device in self.codes:
            if self.filed[device]:
                self._read(device)
        for order, explain in sorted(self.alarms, key=lambda item: item[0]):
            try:
                explain()
            except ValueError as error:
                extra = note(order)
                if extra:
                    error.add_note(extra)
                raise
        return self.every


class LUTally:
    """Conditioning of a block-diagonal operator factorised a chunk of blocks at a time.

    ``add`` each chunk's packed factors in order (blocks are numbered across chunks for
    ``where``); :meth:`code` then gives the whole operator's code, ``cond_1 = max_k ||W_k||_1 *
    max_k ||W_k^{-1}||_1`` plus the worst pivot growth; :meth:`finish` judges at once (raise or
    warn) and returns the estimate. Only running maxima are kept, as device tensors, so a
    chunked inverse never holds the factors of all blocks at once and nothing is read back
    before the verdict. ``detail=False`` keeps only what the code needs (three maxima, fewer
    calls per chunk); the numbers a message quotes (smallest pivot, which block) need ``True``.
    """

    def __init__(self, *, owner: str, weight: Tensor | None = None,
                 where: Callable[[int], str] | None = None, detail: bool = True) -> None:
        self.owner, self.weight, self.where, self.detail = owner, weight, where, detail
        self.blocks = 0
        self.eps = 0.0
        self.stats: list[Tensor] | None = None  # ||W||, ||W^-1||, growth (+ pivot, its block, its block, broken)

    def add(self, lu: Tensor, pivots: Tensor, matrices: Tensor) -> None:
        lu, matrices = lu.detach(), matrices.detach()
        if lu.ndim == 2:
            lu, pivots, matrices = lu[None], pivots[None], matrices[None]
        m, n = lu.shape[0], lu.shape[-1]
        self.eps = torch.finfo(lu.real.dtype).eps
        norm = torch.linalg.matrix_norm(matrices, 1)
        if n <= EXACT_BLOCK:  # small blocks: the inverses themselves, fewer calls than the estimator
            eye = torch.eye(n, dtype=lu.dtype, device=lu.device)
            inverse_norm = torch.linalg.matrix_norm(torch.linalg.lu_solve(lu, pivots, eye), 1)
        else:
            inverse_norm = norm1(lu_solver(lu, pivots), (m,), n, lu.dtype, lu.device)
        if not self.detail:  # the code only: NaN/inf (zero pivot, non-finite factors) stay NaN/inf
            growth = lu.abs().amax((-2, -1)) / matrices.abs().amax((-2, -1))
            chunk = [norm.amax(), inverse_norm.nan_to_num(math.inf, math.inf).amax(), growth.amax()]
            self.stats = chunk if self.stats is None else [torch.maximum(a, b) for a, b in zip(self.stats, chunk)]
            self.blocks += m
            return
        largest = matrices.abs().amax((-2, -1))
        broken = ~torch.isfinite(lu.sum((-2, -1)))
        smallest = torch.diagonal(lu, dim1=-2, dim2=-1).abs().amin(-1)
        # A zero pivot makes the solve divide by zero: singular, whatever the estimate says.
        inverse_norm = torch.where((smallest > 0) & ~broken, inverse_norm.nan_to_num(math.inf, math.inf), math.inf)
        worst, k = inverse_norm.max(0)  # tensors, not Python numbers: indexing with k would read it back
        growth, j = (lu.abs().triu_().amax((-2, -1)) / largest).nan_to_num(math.inf, math.inf).max(0)
        chunk = [norm.amax(), worst, growth, smallest.gather(0, k.view(1)).view(()), k + self.blocks,
                 j + self.blocks, broken.any()]
        if self.stats is None:
            self.stats = chunk
        else:
            old = self.stats
            worse, grows = chunk[1] > old[1], chunk[2] > old[2]
            self.stats = [torch.maximum(old[0], chunk[0]), torch.maximum(old[1], chunk[1]),
                          torch.maximum(old[2], chunk[2]), torch.where(worse, chunk[3], old[3]),
                          torch.where(worse, chunk[4], old[4]), torch.where(grows, chunk[5], old[5]),
                          old[6] | chunk[6]]
        self.blocks += m

    def code(self) -> Tensor:
        """The operator's code, on the device."""
        norm, inverse, growth = self.stats[:3]
        return code_of(norm * inverse, self.eps, growth)

    def finish(self) -> float:
        """Judge now: raise if singular, warn if badly conditioned; return the condition estimate."""
        norm, inverse, growth, smallest, worst, grows, broken = self.stats
        values = torch.stack([(norm * inverse).double(), smallest.double(), worst.double(), growth.double(),
                              grows.double(), broken.double()]).tolist()
        cond, smallest, worst, growth, grows, broken = values
        return explain_lu(self.owner, self.where, self.eps, cond, smallest, int(worst), growth, int(grows),
                          bool(broken), self.weight)


def explain_lu(owner: str, where: Callable[[int], str] | None, eps: float, cond: float, smallest: float,
               worst: int, growth: float, grows: int, broken: bool, weight: Tensor | None) -> float:
    """The host side of an LU verdict: raise for non-finite factors or a singular weight, warn
    for a badly conditioned one or large pivot growth; return the condition estimate."""
    if broken:
        fix = ("the values entered the weight before this inverse ran (a diverged optimiser step?): "
               "re-initialise the layer or lower the learning rate")
        if weight is not None:
            check_finite(weight.detach(), name="the weight", owner=owner, fix=fix)
        raise ValueError(f"{owner}: the LU factors of the weight are not finite (its entries are finite "
                         "but too large for the dtype); rescale the weight")
    value = judge(cond, smallest, eps, owner=owner, location=_location(where, worst))
    if growth > 1.0 / math.sqrt(eps):
        warnings.warn(
            f"{owner}: LU pivot growth{_location(where, grows)}: max|U_ij| / max|W_ij| = "
            f"{growth:.3e} > 1/sqrt(eps) = {1 / math.sqrt(eps):.3e} although the condition number is "
            f"{value:.3e}; the LU solve may lose about {math.log10(growth):.0f} of {-math.log10(eps):.0f} "
            "significant digits; a small perturbation of the weight usually removes it",
            UserWarning, stacklevel=5)
    return value


def check_lu(lu: Tensor, pivots: Tensor, matrices: Tensor, *, owner: str, weight: Tensor | None = None,
             where: Callable[[int], str] | None = None) -> float:
    """Judge a packed ``torch.linalg.lu_factor`` of ``matrices`` (``(n, n)`` or ``(m, n, n)``, one
    operator) now: raise or warn (module doc); return the condition estimate. ``weight``: the
    parameter the matrices come from, named when it holds NaN or inf (default: ``matrices``)."""
    tally = LUTally(owner=owner, weight=matrices if weight is None else weight, where=where)
    tally.add(lu, pivots, matrices)
    return tally.finish()


def _location(where: Callable[[int], str] | None, k: int) -> str:
    return f" {where(k)}" if where is not None else ""


def _real_name(eps: float) -> str:
    return {torch.finfo(t).eps: str(t) for t in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}.get(
        eps, "this dtype")


def judge(cond: float, smallest: float, eps: float, *, owner: str, location: str) -> float:
    """Raise above ``1/eps`` (or for a NaN or inf estimate, or a zero pivot), warn above
    ``1/sqrt(eps)``; return ``cond``."""
    if cond <= 1.0 / math.sqrt(eps) and smallest > 0:
        return cond
    if not cond <= 1.0 / eps or not smallest > 0:
        raise ValueError(
            f"{owner}: the weight is singular to working precision{location}: smallest LU pivot "
            f"|U_ii| = {smallest:.3e}, condition number {cond:.3e} (1-norm estimate) > 1/eps = "
            f"{1 / eps:.3e}; the layer has no inverse in {_real_name(eps)}: re-initialise it or keep its "
            "weight away from singular matrices"
        )
    warnings.warn(
        f"{owner}: the inverse is badly conditioned{location}: condition number {cond:.3e} (1-norm "
        f"estimate) > 1/sqrt(eps) = {1 / math.sqrt(eps):.3e}; expect to lose about {math.log10(cond):.0f} "
        f"of {-math.log10(eps):.0f} significant digits in the reconstructed input and the gradients; keep the "
        "weight better conditioned or compute in float64",
        UserWarning,
        stacklevel=5,
    )
    return cond
