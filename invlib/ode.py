"""Fixed-step integration of ``dx/dt = f(x; theta)``, and its gradient three ways.

The state ``x`` has shape ``(batch, n)``; the vector field ``f`` is an ``nn.Module`` whose
parameters are ``theta``; ``h = t1 / steps``.

* :func:`euler`, :func:`rk4`: plain torch code, so autograd differentiates the computation
  that ran, exactly (*discretize, then optimize*), keeping every stage: memory ~ ``steps``.
* :func:`adjoint_grad`: the continuous adjoint (*optimize, then discretize*; Chen et al.,
  "Neural Ordinary Differential Equations", NeurIPS 2018). Keeps only ``x(t1)`` and rebuilds
  ``x(t)`` by integrating backwards: constant memory, but the gradient of the ODE to
  ``O(h^p)``, not of the forward that ran (Gholami et al., "ANODE", 2019).
* :func:`reversible_euler`: exactly invertible steps (RevNet coupling, Gomez et al. 2017;
  Chang et al., AAAI 2018): backprop by inversion, constant memory, exact to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._checks import check_positive_int, check_tensor
from .coupling import AdditiveCoupling
from .sequential import InvertibleSequential

__all__ = ["euler", "rk4", "adjoint_grad", "reversible_euler"]

State = tuple[Tensor, ...]
Field = Callable[[State], State]


# ---- one step of each scheme, on a tuple of tensors (the adjoint integrates [x, a, g] jointly)

def _euler_step(field: Field, z: State, h: float) -> State:
    return tuple(zi + h * ki for zi, ki in zip(z, field(z)))


def _rk4_step(field: Field, z: State, h: float) -> State:
    k1 = field(z)
    k2 = field(tuple(zi + h / 2 * ki for zi, ki in zip(z, k1)))
    k3 = field(tuple(zi + h / 2 * ki for zi, ki in zip(z, k2)))
    k4 = field(tuple(zi + h * ki for zi, ki in zip(z, k3)))
    return tuple(zi + h / 6 * (a + 2 * b + 2 * c + d) for zi, a, b, c, d in zip(z, k1, k2, k3, k4))


_STEPS = {"euler": _euler_step, "rk4": _rk4_step}


def _integrate(step: Callable[[Field, State, float], State], field: Field, z: State,
               h: float, steps: int) -> State:
    for _ in range(steps):
        z = step(field, z, h)
    return z


def _check_time(t1: object, steps: object, owner: str) -> tuple[float, int]:
    if isinstance(t1, bool) or not isinstance(t1, (int, float)):
        raise TypeError(f"{owner}: t1 must be a real number (a Python float), got {type(t1).__name__}")
    if not math.isfinite(t1):
        raise ValueError(f"{owner}: t1 must be finite, got {t1}; pass the end time")
    return float(t1), check_positive_int(steps, name="steps", owner=owner)


def _check_field(f: object, x0: object, owner: str) -> tuple[Field, Tensor]:
    """``f`` as a map on 1-tuples that checks it keeps the state's shape; and the checked ``x0``."""
    if not isinstance(f, nn.Module):
        raise TypeError(f"{owner}: f must be a torch.nn.Module (its parameters are theta), "
                        f"got {type(f).__name__}")
    x0 = check_tensor(x0, name="x0", owner=owner, layout="(batch, n)", ndim=2)

    def field(z: State) -> State:
        dx = f(z[0])
        if dx.shape != z[0].shape:
            raise ValueError(f"{owner}: f must map x of shape {tuple(z[0].shape)} to dx/dt of "
                             f"the same shape, got {tuple(dx.shape)}")
        return (dx,)
    return field, x0


def _solve(method: str, f: nn.Module, x0: Tensor, t1: float, steps: int) -> Tensor:
    field, x0 = _check_field(f, x0, method)
    t1, steps = _check_time(t1, steps, method)
    return _integrate(_STEPS[method], field, (x0,), t1 / steps, steps)[0]


def euler(f: nn.Module, x0: Tensor, t1: float, steps: int) -> Tensor:
    r"""``x(t1)`` by ``steps`` explicit Euler steps, ``h = t1 / steps``; global error ``O(h)``.

    .. math:: x_{k+1} = x_k + h\, f(x_k)

    One step is a residual block. ``t1 < 0`` integrates backwards in time, which is how the
    adjoint rebuilds ``x(t)``. Autograd through it gives the exact gradient of this
    computation, keeping one input of ``f`` per step. Shapes: ``x0`` and result ``(batch, n)``.
    """
    return _solve("euler", f, x0, t1, steps)


def rk4(f: nn.Module, x0: Tensor, t1: float, steps: int) -> Tensor:
    r"""``x(t1)`` by ``steps`` classical Runge-Kutta steps, ``h = t1 / steps``; error ``O(h^4)``.

    .. math:: x_{k+1} = x_k + \tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4),\quad
              k_1 = f(x_k),\ k_2 = f(x_k + \tfrac h2 k_1),\ k_3 = f(x_k + \tfrac h2 k_2),\
              k_4 = f(x_k + h k_3).

    Same conventions as :func:`euler`; autograd keeps the inputs of ``4 steps`` calls of ``f``.
    """
    return _solve("rk4", f, x0, t1, steps)


def adjoint_grad(f: nn.Module, x0: Tensor, t1: float, steps: int,
                 loss_grad: Callable[[Tensor], Tensor],
                 method: str = "rk4") -> tuple[Tensor, tuple[Tensor, ...]]:
    r"""``(x0_bar, theta_bar)``: the gradient of ``L(x(t1))`` by the continuous adjoint method.

    With the adjoint ``a(t) = grad_{x(t)} L``, a column vector shaped like ``x(t)``, and ``g(t)``
    the parameter gradient gathered on ``[t, t1]``, the augmented system

    .. math:: \dot x = f(x), \qquad \dot a = -(\partial_x f(x))^\top a, \qquad
              \dot g = -(\partial_\theta f(x))^\top a

    is integrated from ``t1`` back to ``0`` by ``method``, from ``a(t1) = loss_grad(x(t1))``
    and ``g(t1) = 0``; ``x0_bar = a(0)``, ``theta_bar = g(0)`` (one tensor per parameter of
    ``f``, in order). ``x(t1)`` comes from a forward solve without a tape; the backward solve
    rebuilds ``x(t)`` as ``method(f, x(t1), -t1, steps)`` does. One ``f`` call and one
    vector-Jacobian product ``(d f)^T a`` per stage (for a batch, ``a`` has the shape of ``x``).

    Memory: a few state-sized tensors and one copy of the parameters, whatever ``steps`` is.
    When *not* to use it: the result is not the gradient of ``method(f, x0, t1, steps)``; the
    two differ by ``O(h^p)`` (``p = 1`` Euler, ``4`` RK4). When the flow contracts strongly
    (dissipative or stiff ``f``), the backward rebuild amplifies errors about like
    ``exp(k t1)`` and the gradient can lose every digit. ``loss_grad(y)`` returns ``dL/dy``.
    """
    field, x0 = _check_field(f, x0, "adjoint_grad")
    t1, steps = _check_time(t1, steps, "adjoint_grad")
    if method not in _STEPS:
        raise ValueError(f"adjoint_grad: method must be one of {sorted(_STEPS)}, got {method!r}")
    step, h = _STEPS[method], t1 / steps
    params = [p for p in f.parameters() if p.requires_grad]

    # ---- forward solve: keep x(t1) only
    with torch.no_grad():
        y = _integrate(step, field, (x0,), h, steps)[0]
    y_bar = loss_grad(y)
    if not isinstance(y_bar, Tensor) or y_bar.shape != y.shape:
        got = tuple(y_bar.shape) if isinstance(y_bar, Tensor) else type(y_bar).__name__
        raise ValueError(f"adjoint_grad: loss_grad(y) must return dL/dy with the shape of y, "
                         f"{tuple(y.shape)}, got {got}")

    def augmented(z: State) -> State:
        x, a = z[0].detach().requires_grad_(), z[1]
        with torch.enable_grad():
            # f gets a view, not the leaf: module backward hooks (FlopCounterMode) fail on leaves
            dx = f(x.view_as(x))
            vjps = torch.autograd.grad(dx, [x, *params], a, allow_unused=True)
        g_dot = (torch.zeros_like(p) if v is None else -v for v, p in zip(vjps[1:], params))
        return (dx.detach(), -vjps[0], *g_dot)

    # ---- backward solve of [x, a, g] from t1 to 0; its x component rebuilds the trajectory
    z = (y, y_bar.detach(), *(torch.zeros_like(p) for p in params))
    with torch.no_grad():
        z = _integrate(step, augmented, z, -h, steps)
    return z[1], tuple(z[2:])


class _Scaled(nn.Module):
    """``h * net(x)``: a sub-network turned into one time step's increment."""

    def __init__(self, net: nn.Module, h: float) -> None:
        super().__init__()
        self.net, self.h = net, h

    def forward(self, x: Tensor) -> Tensor:
        return self.h * self.net(x)


def reversible_euler(F: nn.Module, G: nn.Module, t1: float, steps: int) -> InvertibleSequential:
    r"""``steps`` coupling steps for ``dx1/dt = F(x2)``, ``dx2/dt = G(x1)``, as one invertible net.

    Each step is an :class:`~invlib.AdditiveCoupling` with sub-networks ``h F``, ``h G``:

    .. math:: x_1 \leftarrow x_1 + h F(x_2), \qquad x_2 \leftarrow x_2 + h G(x_1),

    the semi-implicit (symplectic) Euler method: first order (second order, leapfrog, if ``x2``
    is read at half steps). Each step is undone exactly by subtracting in the opposite order,
    so the returned :class:`~invlib.InvertibleSequential` back-propagates by inversion in
    constant memory and returns the gradient of this discrete forward to rounding. ``F`` and
    ``G`` are shared by all steps (``theta`` constant in time). State ``(batch, 2m)``, halves
    ``x1``, ``x2``. Limits: the field must split this way, and every step has Jacobian
    determinant 1: the scheme preserves volume, so it cannot contract every direction
    (no dissipative dynamics). Chang et al., "Reversible Architectures for Arbitrarily Deep
    Residual Neural Networks", AAAI 2018; Gomez et al. 2017 (arXiv 1707.04585).
    """
    for name, net in (("F", F), ("G", G)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"reversible_euler: {name} must be a torch.nn.Module, got {type(net).__name__}")
    t1, steps = _check_time(t1, steps, "reversible_euler")
    h = t1 / steps
    return InvertibleSequential(*(AdditiveCoupling(_Scaled(F, h), _Scaled(G, h)) for _ in range(steps)))
