"""FLOPs of one training step (forward + backward) by plain autograd or by inversion, by kind.

A step is ``loss = f(net(x)); loss.backward()`` with ``x`` requiring grad, over ``depth`` equal
layers on a batch of ``batch``. One multiply-add is 2 FLOPs; a complex multiply-add is 8. Biases,
activations and the loss are left out (they are O(batch * width) per layer). The split by kind
matters because ``torch.utils.flop_counter.FlopCounterMode`` counts matrix products and
convolutions only: :attr:`StepFlops.matmul` is exactly what it counts for these layers, while
LU factorisations, triangular solves and FFTs run unseen, and it counts a complex product as a
real one. The condition estimates ``invlib`` runs before each inverse (a few ``O(w^2)`` solves
and products per layer) are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from invlib._checks import check_positive_int

STEP_METHODS = ("plain", "invertible")


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, by kind (all for the whole stack and batch).

    * ``matmul``: real matrix products and convolutions (what ``FlopCounterMode`` counts);
    * ``factor``: LU factorisations, ``(2/3) n^3`` real or ``(8/3) n^3`` complex per matrix;
    * ``solve``: forward and back substitution, ``2 n^2`` (real) or ``8 n^2`` (complex) per
      right-hand side;
    * ``fft``: real FFTs, ``2.5 N log2 N`` each way per signal of ``N`` points (half of the usual
      ``5 N log2 N`` of a complex FFT);
    * ``response``: forming a circular convolution's frequency responses ``H[f]``, complex
      (``FlopCounterMode`` sees a quarter of it, as ``bmm``).
    """

    matmul: float
    factor: float = 0.0
    solve: float = 0.0
    fft: float = 0.0
    response: float = 0.0

    @property
    def total(self) -> float:
        return self.matmul + self.factor + self.solve + self.fft + self.response

    @property
    def unseen(self) -> float:
        """FLOPs a ``FlopCounterMode`` does not see: everything but ``matmul`` (and 3/4 of ``response``)."""
        return self.total - self.matmul


def _method(method: str, owner: str) -> str:
    if method not in STEP_METHODS:
        raise ValueError(f"{owner}: method must be one of {STEP_METHODS}, got {method!r}")
    return method


def dense_step(width: int, depth: int = 1, batch: int = 1, method: str = "plain",
               weight: str = "dense", inverse: bool = False, refactorised: int = 0) -> StepFlops:
    """One step of ``depth`` dense layers ``y = sigma(x W^T + b)`` of ``width`` on ``batch`` samples.

    ``weight="dense"`` (:class:`invlib.InvertibleLinear`), with ``w = width``, ``B = batch``:

    * plain: forward ``2 B w^2``, backward ``x_bar = y_bar W`` and ``W_bar = y_bar^T x``,
      ``4 B w^2``: ``6 B w^2`` per layer;
    * invertible: the same ``6 B w^2`` of products, plus ``W = P L U`` factorised once per step
      (``(2/3) w^3``) and two triangular solves per sample (``2 B w^2``). Ratio to plain:
      ``4/3 + w / (9 B)``.
    * invertible with ``inverse=True`` (what ``invlib`` does for a large batch,
      :func:`invlib.linear.prefer_inverse`): the factors are turned into ``W^{-1}`` once per
      step (``2 w^3`` of triangular solves against the identity) and the rebuild is one more
      matrix product (``2 B w^2``, counted as ``matmul``) instead of the per-sample solves.
    * ``refactorised``: layers whose factors the check before the sweep could not keep (its
      scratch budget), factorised (and inverted) a second time in their reverse step.

    ``weight="lu"`` (:class:`invlib.LULinear`, ``W = P L U`` assembled by a dense ``L @ U``):
    each forward assembles ``W`` (``2 w^3``) and each backward pushes ``W_bar`` through the
    product (``4 w^3``): plain ``6 B w^2 + 6 w^3``. Invertible solves instead of factorising
    (``2 B w^2``) and forms ``x_bar = y_bar P L U`` in the cheaper order, two products with ``B``
    rows (``4 B w^2``, for ``B <= w``) or ``L U`` first (``2 w^3 + 2 B w^2``): ``10 B w^2 + 6 w^3``
    for ``B <= w`` (ratio below ``4/3``), ``8 B w^2 + 8 w^3`` above (ratio exactly ``4/3``).
    """
    owner = "costs.dense_step"
    w = check_positive_int(width, name="width", owner=owner)
    d = check_positive_int(depth, name="depth", owner=owner)
    b = check_positive_int(batch, name="batch", owner=owner)
    inverting = _method(method, owner) == "invertible"
    product = 2 * b * w * w
    if weight == "dense":
        if not inverting:
            return StepFlops(matmul=3 * product * d)
        factorisations = d + check_count(refactorised, d, owner)
        if inverse:
            return StepFlops(matmul=4 * product * d, factor=2 * w**3 * factorisations / 3,
                             solve=2 * w**3 * factorisations)
        return StepFlops(matmul=3 * product * d, factor=2 * w**3 * factorisations / 3, solve=product * d)
    if weight == "lu":
        assemble = 2 * w**3
        if not inverting:
            return StepFlops(matmul=(3 * product + 3 * assemble) * d)
        x_bar = 2 * product if b <= w else assemble + product
        return StepFlops(matmul=(2 * product + 3 * assemble + x_bar) * d, solve=product * d)
    raise ValueError(f"{owner}: weight must be 'dense' (InvertibleLinear) or 'lu' (LULinear), got {weight!r}")


def check_count(value: int, depth: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= depth:
        raise ValueError(f"{owner}: refactorised must be an int between 0 and depth = {depth}, got {value!r}")
    return value


def coupling_step(width: int, depth: int = 1, batch: int = 1, method: str = "plain") -> StepFlops:
    """One step of ``depth`` additive-coupling blocks, ``F, G = sigma(Linear(w/2, w/2))``.

    A forward is two half-width products, ``B w^2`` per block; plain: ``3 B w^2``; invertible
    adds the inverse, one more forward: ``4 B w^2``, ratio ``4/3`` (Gomez et al. 2017).
    """
    owner = "costs.coupling_step"
    w = check_positive_int(width, name="width", owner=owner)
    d = check_positive_int(depth, name="depth", owner=owner)
    b = check_positive_int(batch, name="batch", owner=owner)
    if w % 2:
        raise ValueError(f"{owner}: width must be even to split into halves, got {w}")
    forward = b * w * w * d
    return StepFlops(matmul=(4 if _method(method, owner) == "invertible" else 3) * forward)


def conv_step(channels: int, spatial: tuple[int, ...], kernel_size: int, depth: int = 1, batch: int = 1,
              method: str = "plain", refactorised: int = 0) -> StepFlops:
    """One step of ``depth`` circular convolutions (:class:`invlib.CircularConv1d` / ``2d``).

    With ``C`` channels, ``N`` points per channel (the product of ``spatial``), ``k^s`` taps and
    ``F`` frequencies of ``rfftn`` (``N_0 ... (N_last // 2 + 1)``):

    * plain: a forward convolution ``2 B C^2 N k^s`` and two for the backward: ``3x`` that;
    * invertible: the same three convolutions (``x_bar`` and ``W_bar`` by adjoint correlations,
      no recomputed forward), plus the inverse: an ``rfftn`` and an ``irfftn`` of ``B C``
      signals, the ``F`` responses ``H[f]`` (``8 F k^s C^2``), their complex LU
      (``(8/3) F C^3``) and the solves (``8 F B C^2``).

    Relative to the forward, the factorisations cost about ``(2/3) C / (B k^s)``: small for wide
    kernels in 2-d, large for narrow channels-heavy 1-d layers at batch 1. ``refactorised``:
    layers whose factors the check before the sweep could not keep, whose responses are formed
    and factorised a second time in the reverse step.
    """
    owner = "costs.conv_step"
    c = check_positive_int(channels, name="channels", owner=owner)
    k = check_positive_int(kernel_size, name="kernel_size", owner=owner)
    d = check_positive_int(depth, name="depth", owner=owner)
    b = check_positive_int(batch, name="batch", owner=owner)
    if not 1 <= len(spatial) <= 2:
        raise ValueError(f"{owner}: spatial must hold 1 or 2 sizes, got {spatial!r}")
    sizes = [check_positive_int(s, name="spatial", owner=owner) for s in spatial]
    n, taps = math.prod(sizes), k ** len(sizes)
    convolution = 2 * b * c * c * n * taps
    if _method(method, owner) == "plain":
        return StepFlops(matmul=3 * convolution * d)
    freqs = math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1)
    fft = 2 * b * c * 2.5 * n * math.log2(n) if n > 1 else 0.0
    formed = d + check_count(refactorised, d, owner)
    return StepFlops(matmul=3 * convolution * d, factor=8 * freqs * c**3 * formed / 3, solve=8 * freqs * b * c * c * d,
                     fft=fft * d, response=8 * freqs * taps * c * c * formed)


def step_ratio(invertible: StepFlops, plain: StepFlops) -> float:
    """FLOPs of the inverting step over those of the plain step (``total / total``)."""
    return invertible.total / plain.total
