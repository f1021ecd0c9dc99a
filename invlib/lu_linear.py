"""A dense invertible layer stored in factored form ``W = P L (U + diag(s))`` (Glow's LU layer).

Keeping the factors as the parameters makes the inverse two triangular solves, with no
factorisation at all, and makes ``log|det W| = sum(log|s|)`` free. Kingma & Dhariwal, "Glow:
Generative Flow with Invertible 1x1 Convolutions", 2018 (arXiv 1807.03039), section 3.2.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._lu import lu_factor
from ._checks import check_finite, check_positive_int, check_tensor
from ._condition import Operator, norm1
from ._prepare import Budget, read
from ._state import State, in_forward
from ._verdict import Verdicts, check_lu, code_of, judge
from .base import Invertible, accumulate_grad, full_precision, work_dtype
from .linear import exact_norms, random_orthogonal, solve_lu_right


def _rows(v: Tensor, index: Tensor) -> Tensor:
    """``v[..., index, :]``, with one ``index`` per matrix when ``index`` is ``(m, n)``."""
    if index.ndim == 1:
        return v[..., index, :]
    return torch.gather(v, -2, index[..., None].expand(v.shape))


def factor_operators(perm: Tensor, lower: Tensor, upper: Tensor) -> tuple[Operator, Operator]:
    """``W`` and ``W^{-1}`` as operators (``invlib._condition``) for ``W = P L U``, ``P[i, perm[i]] = 1``.

    ``W v = (L (U v))[perm]`` and ``W^H v = U^H L^H P^T v``; ``W^{-1} v = U^{-1} L^{-1} P^T v`` and
    ``W^{-H} v = P L^{-H} U^{-H} v``, with ``(P^T v)[perm[i]] = v[i]``. O(n^2) per column.
    Batched: ``perm`` ``(m, n)`` with ``lower``, ``upper`` ``(m, n, n)`` is ``m`` matrices.
    """
    back = torch.argsort(perm)  # (P^T v) = v[back]

    def multiply(v: Tensor, adjoint: bool) -> Tensor:
        if adjoint:
            return upper.mH @ (lower.mH @ _rows(v, back))
        return _rows(lower @ (upper @ v), perm)

    def solve(v: Tensor, adjoint: bool) -> Tensor:
        if adjoint:
            v = torch.linalg.solve_triangular(upper.mH, v, upper=False)
            return _rows(torch.linalg.solve_triangular(lower.mH, v, upper=True, unitriangular=True), perm)
        v = torch.linalg.solve_triangular(lower, _rows(v, back), upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, v, upper=True)

    return multiply, solve


def factor_norms(perm: Tensor, lower: Tensor, upper: Tensor, exact: bool) -> tuple[Tensor, Tensor]:
    """``||W||_1`` and ``||W^{-1}||_1`` of ``W = P L U`` (one matrix, or a batch with ``perm``
    ``(m, n)``), on the device: exact if ``exact`` (``W`` and ``W^{-1} = U^{-1} L^{-1} P^T``
    formed, fewer calls; :func:`invlib.linear.exact_norms` says when), estimated otherwise (:func:`invlib._condition.norm1` with products
    and triangular solves, O(n^2) each). NaN or inf in a factor, or a zero pivot, give NaN or inf."""
    n = upper.shape[-1]
    batch = upper.shape[:-2]
    if exact:
        weight = _rows(lower @ upper, perm)
        eye = _rows(torch.eye(n, dtype=upper.dtype, device=upper.device).expand(*batch, n, n), torch.argsort(perm))
        inverse = torch.linalg.solve_triangular(
            upper, torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True), upper=True)
        return weight.abs().sum(-2).amax(-1), inverse.abs().sum(-2).amax(-1)
    multiply, solve = factor_operators(perm, lower, upper)
    return norm1(multiply, tuple(batch), n, upper.dtype, upper.device), norm1(solve, tuple(batch), n, upper.dtype,
                                                                           upper.device)


class LULinear(Invertible):
    """Dense layer ``y = x W^T + b`` with ``W = P L (U + diag(s))``, ``s = sign * exp(log_s)``.

    Parameters: ``lower`` (only its strictly lower part is used; ``L`` has a unit diagonal),
    ``upper`` (only its strictly upper part is used), ``log_s`` and ``bias``. Buffers: ``perm``
    (``P[i, perm[i]] = 1``, fixed) and ``sign`` (fixed, so ``s`` never crosses zero during training).
    Shapes: ``x``, ``y``: ``(batch, features)``; ``weight`` (assembled on access): ``(features, features)``.

    Inverse: with ``r = y - b``, solve ``z L^T = r P`` (unit upper triangular) and then
    ``x (U + diag s)^T = z`` (lower triangular), both by ``torch.linalg.solve_triangular``.

    Conditioning: ``L`` is not bounded here as it is under partial pivoting, so ``W`` can be
    nearly singular with every ``|s_i|`` equal to 1 (``L`` with large entries). ``inverse`` and
    ``reverse`` therefore estimate ``cond_1(W)`` from the factors (Hager-Higham, a few O(features^2)
    triangular solves and products, see ``invlib._verdict``): ``ValueError`` if singular to working
    precision (``cond_1 > 1/eps``) or if a factor holds NaN/inf, a warning above ``1/sqrt(eps)``.
    ``forward`` checks ``log_s`` only, O(features): NaN/inf there raises, and ``log_s_i = -inf``
    (``s_i = 0``, ``W`` singular) raises before anything is computed from it (not under
    ``torch.compile``, where the check would break the graph).
    """

    draws_random = False
    constant_buffers = ("perm", "sign")

    def __init__(self, features: int, bias: bool = True) -> None:
        super().__init__()
        self.features = check_positive_int(features, name="features", owner="LULinear")
        p, lower, upper = torch.linalg.lu(random_orthogonal(features))
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.argmax(dim=1))
        self.register_buffer("sign", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1).contiguous())  # LAPACK output is column-major
        self.upper = nn.Parameter(torch.triu(upper, 1).contiguous())
        self.log_s = nn.Parameter(torch.log(s.abs()))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None) -> LULinear:
        """The layer whose assembled ``weight`` equals ``weight`` (``(n, n)``), via ``P L U``
        with partial pivoting (``torch.linalg.lu``). ``ValueError`` if ``weight`` is not square
        or has a zero pivot (it is singular and has no such factorisation with ``s != 0``)."""
        owner = "LULinear.from_weight"
        check_tensor(weight, name="weight", owner=owner, layout="(n, n)", ndim=2)
        if weight.shape[0] != weight.shape[1]:
            raise ValueError(f"{owner}: weight must be square (n, n), got {tuple(weight.shape)}")
        if bias is not None:
            check_tensor(bias, name="bias", owner=owner, layout=f"(n,) = ({weight.shape[0]},)", ndim=1,
                         sizes={0: weight.shape[0]}, dtype=weight.dtype)
        weight = weight.detach()
        layer = cls(weight.shape[0], bias=bias is not None).to(dtype=weight.dtype, device=weight.device)
        lu, pivots = lu_factor(weight)
        check_lu(lu, pivots, weight, owner=owner)
        p, lower, upper = torch.lu_unpack(lu, pivots)
        s = torch.diagonal(upper)
        with torch.no_grad():
            layer.perm.copy_(p.argmax(dim=1))
            layer.sign.copy_(torch.sign(s))
            layer.lower.copy_(torch.tril(lower, -1))
            layer.upper.copy_(torch.triu(upper, 1))
            layer.log_s.copy_(torch.log(s.abs()))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def _factors(self) -> tuple[Tensor, Tensor]:
        """Return ``L`` (unit lower) and ``U + diag(s)`` (upper) as dense matrices."""
        eye = torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    @property
    def weight(self) -> Tensor:
        """The assembled ``W = P L (U + diag(s))``, differentiable w.r.t. the factors."""
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]  # (P M)[i] = M[perm[i]]

    def _check(self, t: Tensor, name: str) -> Tensor:
        return check_tensor(
            t, name=name, owner="LULinear", layout=f"(batch, features={self.features})",
            ndim=2, sizes={1: self.features}, dtype=self.log_s.dtype,
        )

    def _check_log_s(self) -> None:
        """O(features): NaN/inf in ``log_s`` is reported by the layer it is in, not downstream.

        Skipped while ``torch.compile`` traces, where reading a tensor's value would break the graph.
        """
        log_s = self.log_s.detach()
        if torch.compiler.is_compiling() or bool(torch.isfinite(log_s).all()):
            return
        bad = torch.nonzero(~torch.isfinite(log_s)).flatten().tolist()
        if bool((log_s[bad] == -math.inf).all()):
            raise ValueError(
                f"LULinear: the weight is singular: log_s = -inf at {bad[:8]} makes the pivots s_i = 0; "
                "re-initialise the layer or keep log_s bounded (e.g. clamp it after each optimiser step)")
        raise ValueError(
            f"LULinear: log_s contains NaN or inf at {bad[:8]} ({len(bad)} of {log_s.numel()} entries), so "
            "W = P L (U + diag(s)) is not finite; re-initialise the layer or lower the learning rate")

    def forward(self, x: Tensor) -> Tensor:
        x = self._check(x, "x")
        if not in_forward():  # inside InvertibleSequential the check before the sweep does it
            self._check_log_s()
        return F.linear(x, self.weight, self.bias)

    def _solve(self, y: Tensor, lower: Tensor, upper: Tensor, bias: Tensor | None, judged: bool) -> Tensor:
        """``x`` from ``y`` in :func:`invlib.base.work_dtype` (float32 for half precision);
        ``judged``: the check before the sweep judged the factors already."""
        dtype = work_dtype(y, upper)
        lower, upper = lower.to(dtype), upper.to(dtype)
        if not judged:
            self._judge_now(lower, upper, exact=False)
        return solve_lu_right(y.to(dtype), None if bias is None else bias.to(dtype),
                              torch.argsort(self.perm), lower, upper)  # P[i, perm[i]] = 1

    def _judge_now(self, lower: Tensor, upper: Tensor, exact: bool) -> float:
        """Raise or warn now for NaN/inf in ``log_s`` or the factors, or a singular or badly
        conditioned ``W``; return ``cond_1(W)``."""
        self._check_log_s()
        fix = "re-initialise the layer or lower the learning rate"
        check_finite(lower, name="the factor L (parameter lower)", owner="LULinear", fix=fix)
        check_finite(upper, name="the factor U (parameter upper)", owner="LULinear", fix=fix)
        return self.condition(lower, upper, exact)

    def condition(self, lower: Tensor, upper: Tensor, exact: bool = False) -> float:
        """Judge the factors now (raise if singular, warn if badly conditioned), from
        :func:`factor_norms`; return ``cond_1(W)``."""
        norm, inverse_norm = factor_norms(self.perm, lower.detach(), upper.detach(), exact)
        smallest = torch.diagonal(upper.detach()).abs().amin()
        cond, smallest = torch.stack([norm * inverse_norm, smallest]).tolist()
        return judge(cond, smallest, torch.finfo(upper.dtype).eps, owner="LULinear", location="")

    def check_inverse(self) -> None:
        with torch.no_grad():
            self._solve(torch.empty(0, self.features, dtype=self.log_s.dtype, device=self.log_s.device),
                        *self._factors(), None, False)

    def inverse(self, y: Tensor) -> Tensor:
        y = self._check(y, "y")
        with full_precision(y):
            return self._solve(y, *self._factors(), self.bias, False).to(y.dtype)

    def reverse(self, y: Tensor, y_bar: Tensor, *, overwrite: bool = False,
                prepared: object = None) -> tuple[Tensor, Tensor]:
        """As :meth:`Invertible.reverse`. With ``M = L U'`` (``U' = U + diag(s)``) and ``W = P M``:
        ``x_bar = y_bar P L U'``, ``W_bar = y_bar^T x``, ``M_bar = P^T W_bar``, ``L_bar = M_bar U'^T``
        (strictly lower part), ``U'_bar = L^T M_bar`` (strictly upper part for ``upper``, its
        diagonal times ``s`` for ``log_s``), computed directly rather than by a second autograd pass."""
        y = self._check(y, "y")  # before autocast is switched off: it may hand over half precision
        return self._reverse_rows(y, y_bar, prepared)

    def _reverse_rows(self, y: Tensor, y_bar: Tensor, prepared: object) -> tuple[Tensor, Tensor]:
        """:meth:`reverse` on a checked ``(rows, features)`` output (for ``InvertibleConv1x1``,
        every pixel of every image is a row)."""
        with torch.enable_grad():  # parametrised factors are computed once, with their graph
            lower_p, upper_p, log_s_p, bias = self.lower, self.upper, self.log_s, self.bias
        with torch.no_grad(), full_precision(y):
            dtype = work_dtype(y, upper_p)
            eye = torch.eye(self.features, dtype=dtype, device=upper_p.device)
            s = (self.sign * torch.exp(log_s_p.detach())).to(dtype)
            lower = torch.tril(lower_p.detach().to(dtype), -1) + eye
            upper = torch.triu(upper_p.detach().to(dtype), 1) + torch.diag(s)
            x = self._solve(y, lower, upper, None if bias is None else bias.detach(), prepared is not None)
            back = torch.argsort(self.perm)
            y_bar = y_bar.to(x.dtype)
            # x_bar = y_bar P L U', in the cheaper order
            if y.shape[0] <= self.features:  # two products with B rows
                x_bar = (y_bar[:, back] @ lower) @ upper
            else:  # y_bar P M = y_bar M[perm]: the rows of the n x n product gathered, not the batch
                x_bar = y_bar @ (lower @ upper)[self.perm]
            m_bar = (y_bar.mT @ x)[back]
            upper_bar = lower.mT @ m_bar
            lower_bar = torch.tril(m_bar @ upper.mT, -1)
            log_s_bar = torch.diagonal(upper_bar) * s
            upper_bar = torch.triu(upper_bar, 1)
            bias_bar = None if bias is None else y_bar.sum(0)
        for param, grad in ((lower_p, lower_bar), (upper_p, upper_bar), (log_s_p, log_s_bar), (bias, bias_bar)):
            accumulate_grad(param, grad)
        return x, x_bar

    @classmethod
    def judge(cls, states: list[State], budget: Budget, verdicts: Verdicts) -> None:
        """Judge a stack's LU layers at once: ``cond_1(W) = ||W||_1 ||W^{-1}||_1`` from the factors,
        batched over same-shaped layers within ``budget``: exact where ``exact_norms`` allows (``W`` and
        ``W^{-1}`` formed: fewer calls), estimated above (products and triangular solves);
        NaN or inf in any factor makes it singular. Nothing is kept."""
        groups: dict[tuple, list[State]] = {}
        for state in states:
            log_s = read(state, "log_s")
            n = state.layer.features
            key = (n, work_dtype(log_s), log_s.device, exact_norms(state.shape[0], n))
            groups.setdefault(key, []).append(state)
        for (n, dtype, device, exact), members in groups.items():
            start = 0
            for step, _ in budget.chunks(len(members), 0, 4 * n * n * torch.empty((), dtype=dtype).element_size()):
                chunk = members[start:start + step]
                start += step
                factors = [[read(s, name).detach().to(dtype) for name in ("lower", "upper", "log_s")] for s in chunk]
                lower = torch.tril(torch.stack([f[0] for f in factors]), -1) + torch.eye(n, dtype=dtype, device=device)
                log_s = torch.stack([f[2] for f in factors])
                signs = torch.stack([s.layer.sign for s in chunk]).to(dtype)
                upper = torch.triu(torch.stack([f[1] for f in factors]), 1) + torch.diag_embed(signs * log_s.exp())
                del factors
                norm, inverse_norm = factor_norms(torch.stack([s.layer.perm for s in chunk]), lower, upper, exact)
                # NaN or inf in a factor, or s_i = 0, make the norms NaN or inf: singular
                code = code_of(norm * inverse_norm, torch.finfo(dtype).eps)
                for j, state in enumerate(chunk):
                    state.prepared = True
                    verdicts.put(state.index, code[j], partial(_explain, state, exact))
                del lower, upper, log_s, signs, norm, inverse_norm, code  # before the next batch's

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}"


def _explain(state: State, exact: bool) -> None:
    """The host side of a LULinear verdict: the same norms for this one layer, read and judged,
    on the factors its forward read."""
    with torch.no_grad(), state.substituted(state.tensors):
        layer = state.layer
        lower, upper = (t.to(work_dtype(t)) for t in layer._factors())
        layer._judge_now(lower, upper, exact)
