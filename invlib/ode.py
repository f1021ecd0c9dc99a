"""Fixed-step integration of ``dx/dt = f(x; theta)`` and its gradient, three ways.

The state ``x`` has shape ``(batch, n)`` and the vector field ``f`` is an ``nn.Module`` whose
parameters are ``theta``. With ``h = t1 / steps``, the solvers map ``x(0)`` to ``x(t1)``:

* :func:`euler`, :func:`rk4`: plain torch code, so autograd differentiates the discrete
  computation exactly (*discretize, then optimize*); it stores every stage: memory grows
  linearly with ``steps``.
* :func:`adjoint_grad`: the continuous adjoint method (*optimize, then discretize*; Chen et al.,
  "Neural Ordinary Differential Equations", NeurIPS 2018). It stores only ``x(t1)`` and
  integrates an augmented system backwards, rebuilding ``x(t)`` as it goes: memory is constant
  in ``steps``, but the result is the gradient of the ODE, approximated to ``O(h^p)``, not the
  gradient of the forward that ran (Gholami et al., "ANODE", 2019).
* :func:`reversible_euler`: a discretization whose steps are exactly invertible (RevNet
  coupling blocks, Gomez et al. 2017; Chang et al., AAAI 2018), so backprop by inversion gives
  the discrete gradient to rounding, in constant memory.
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
    """``z + h k1``, ``k1 = field(z)``: first order."""
    return tuple(zi + h * ki for zi, ki in zip(z, field(z)))


def _rk4_step(field: Field, z: State, h: float) -> State:
    """Classical Runge-Kutta: ``z + h (k1 + 2 k2 + 2 k3 + k4) / 6``: fourth order."""
    k1 = field(z)
    k2 = field(tuple(zi + h / 2 * ki for zi, ki in zip(z, k1)))
    k3 = field(tuple(zi + h / 2 * ki for zi, ki in zip(z, k2)))
    k4 = field(tuple(zi + h * ki for zi, ki in zip(z, k3)))
    return tuple(zi + h / 6 * (a + 2 * b + 2 * c + d)
                 for zi, a, b, c, d in zip(z, k1, k2, k3, k4))


_STEPS = {"euler": _euler_step, "rk4": _rk4_step}


def _check_time(t1: object, steps: object, owner: str) -> tuple[float, int]:
    if isinstance(t1, bool) or not isinstance(t1, (int, float)):
        raise TypeError(f"{owner}: t1 must be a real number (a Python float), got {type(t1).__name__}")
    if not math.isfinite(t1):
        raise ValueError(f"{owner}: t1 must be finite, got {t1}; pass the end time of the integration")
    return float(t1), check_positive_int(steps, name="steps", owner=owner)


def _checked(f: object, x0: object, t1: object, steps: object, owner: str) -> tuple[Tensor, float, int]:
    if not isinstance(f, nn.Module):
        raise TypeError(f"{owner}: f must be a torch.nn.Module (its parameters are theta), "
                        f"got {type(f).__name__}")
    x0 = check_tensor(x0, name="x0", owner=owner, layout="(batch, n)", ndim=2)
    return (x0, *_check_time(t1, steps, owner))


def _vector_field(f: nn.Module, owner: str) -> Field:
    def field(z: State) -> State:
        dx = f(z[0])
        if dx.shape != z[0].shape:
            raise ValueError(f"{owner}: f must map x of shape {tuple(z[0].shape)} to dx/dt of "
                             f"the same shape, got {tuple(dx.shape)}")
        return (dx,)
    return field


def _integrate(step: Callable[[Field, State, float], State], field: Field, z: State,
               h: float, steps: int) -> State:
    for _ in range(steps):
        z = step(field, z, h)
    return z


def euler(f: nn.Module, x0: Tensor, t1: float, steps: int) -> Tensor:
    """``x(t1)`` by ``steps`` explicit Euler steps ``x_{k+1} = x_k + h f(x_k)``, ``h = t1/steps``.

    One step is a residual block. Global error ``O(h)``. ``t1 < 0`` integrates backwards in
    time (``x_{k+1} = x_k - |h| f(x_k)``), which is how the adjoint rebuilds ``x(t)``.
    Differentiable by autograd: that is the exact gradient of this computation, at a memory cost
    linear in ``steps``. Shapes: ``x0``, result ``(batch, n)``.
    """
    x0, t1, steps = _checked(f, x0, t1, steps, "euler")
    return _integrate(_euler_step, _vector_field(f, "euler"), (x0,), t1 / steps, steps)[0]


def rk4(f: nn.Module, x0: Tensor, t1: float, steps: int) -> Tensor:
    """``x(t1)`` by ``steps`` classical Runge-Kutta steps, ``h = t1/steps``; global error ``O(h^4)``.

    .. math:: x_{k+1} = x_k + \\tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4),\\quad
              k_1 = f(x_k),\\ k_2 = f(x_k + \\tfrac h2 k_1),\\ k_3 = f(x_k + \\tfrac h2 k_2),
              \\ k_4 = f(x_k + h k_3).

    Same conventions as :func:`euler` (``t1 < 0`` runs backwards; autograd memory ~ ``4 steps``
    evaluations of ``f``).
    """
    x0, t1, steps = _checked(f, x0, t1, steps, "rk4")
    return _integrate(_rk4_step, _vector_field(f, "rk4"), (x0,), t1 / steps, steps)[0]


def adjoint_grad(f: nn.Module, x0: Tensor, t1: float, steps: int,
                 loss_grad: Callable[[Tensor], Tensor],
                 method: str = "rk4") -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(x0_bar, theta_bar)``: the gradient of ``L(x(t1))`` by the continuous adjoint method.

    With the adjoint ``a(t) = dL/dx(t)`` and ``g(t)`` the gradient collected from ``t`` to ``t1``,

    .. math:: \\dot x = f(x), \\quad \\dot a = -a^\\top \\partial_x f(x), \\quad
              \\dot g = -a^\\top \\partial_\\theta f(x),

    integrated from ``t1`` back to ``0`` with ``a(t1) = loss_grad(x(t1))``, ``g(t1) = 0``; then
    ``x0_bar = a(0)`` and ``theta_bar = g(0)`` (one tensor per ``f.parameters()``, in order).
    ``x(t1)`` comes from a forward solve without a tape, and the backward solve rebuilds
    ``x(t)`` by integrating ``f`` backwards, exactly as ``method(f, x(t1), -t1, steps)`` does.
    Each stage evaluates ``f`` once and forms both products with one ``autograd.grad`` call.

    Memory: a few state-sized tensors and one copy of the parameters, whatever ``steps`` is.
    Accuracy: this is *not* the gradient of ``method(f, x0, t1, steps)``; the two differ by
    ``O(h^p)`` (``p = 1`` Euler, ``4`` RK4). When the forward flow contracts strongly
    (dissipative or stiff ``f``), the backward rebuild of ``x(t)`` amplifies errors like
    ``exp(k t1)`` and the gradient can be wrong in every digit: prefer backprop through the
    solver or a reversible scheme then. ``loss_grad(y)`` must return ``dL/dy``, shape ``(batch, n)``.
    """
    x0, t1, steps = _checked(f, x0, t1, steps, "adjoint_grad")
    if method not in _STEPS:
        raise ValueError(f"adjoint_grad: method must be one of {sorted(_STEPS)}, got {method!r}")
    step, h = _STEPS[method], t1 / steps
    params = [p for p in f.parameters() if p.requires_grad]
    with torch.no_grad():
        # ---- forward solve: keep x(t1) only
        y = _integrate(step, _vector_field(f, "adjoint_grad"), (x0,), h, steps)[0]
    y_bar = loss_grad(y)
    if not isinstance(y_bar, Tensor) or y_bar.shape != y.shape:
        got = tuple(y_bar.shape) if isinstance(y_bar, Tensor) else type(y_bar).__name__
        raise ValueError(f"adjoint_grad: loss_grad(y) must return dL/dy with the shape of y, "
                         f"{tuple(y.shape)}, got {got}")

    def augmented(z: State) -> State:
        x, a = z[0].detach().requires_grad_(), z[1]
        with torch.enable_grad():
            dx = f(x)
            vjps = torch.autograd.grad(dx, [x, *params], a, allow_unused=True)
        grads = [torch.zeros_like(p) if v is None else v for v, p in zip(vjps[1:], params)]
        return (dx.detach(), -vjps[0], *(-v for v in grads))

    # ---- backward solve of [x, a, g] from t1 to 0: the x component rebuilds the trajectory
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
    """``steps`` coupling steps for ``dx1/dt = F(x2)``, ``dx2/dt = G(x1)``, as one invertible net.

    One step (an :class:`~invlib.AdditiveCoupling` with ``h F``, ``h G``, ``h = t1/steps``):

    .. math:: x_1 \\leftarrow x_1 + h F(x_2), \\qquad x_2 \\leftarrow x_2 + h G(x_1),

    the semi-implicit (symplectic) Euler method: first order, second order (leapfrog) if ``x2``
    is read at half steps. Every step is inverted exactly by subtracting in the opposite order,
    so the returned :class:`~invlib.InvertibleSequential` back-propagates by inversion, in
    constant memory, with the gradient of this discrete forward to rounding. ``F`` and ``G``
    are shared by all steps (``theta`` constant in time, as in an ODE). State ``x = (x1, x2)``:
    ``(batch, 2m)``. Limits: the field must split this way, and each step has Jacobian
    determinant 1, so the scheme preserves volume and cannot contract every direction
    (no dissipative dynamics). Chang et al., "Reversible Architectures for Arbitrarily Deep
    Residual Neural Networks", AAAI 2018; Gomez et al. 2017 (arXiv 1707.04585).
    """
    for name, net in (("F", F), ("G", G)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"reversible_euler: {name} must be a torch.nn.Module, got {type(net).__name__}")
    t1, steps = _check_time(t1, steps, "reversible_euler")
    h = t1 / steps
    return InvertibleSequential(*(AdditiveCoupling(_Scaled(F, h), _Scaled(G, h))
                                  for _ in range(steps)))
