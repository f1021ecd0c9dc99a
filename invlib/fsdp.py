"""Sharded training: the same blocks under FSDP2, plain, checkpointed per block, or inverted.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each unit's parameters across the ranks and
gathers a unit only while it computes. Per-block activation checkpointing is what large-model
training (torchtitan) pairs with it to cut activation memory; ``InvertibleSequential`` under the
same sharding rebuilds activations by inversion instead (``invlib._fsdp`` explains how the two
compose). This module runs all three side by side on CPU ranks (gloo), with the book's blocks:

* :func:`blocks` builds ``depth`` blocks of one kind, identically on every rank;
* :func:`assemble` makes the network of a method and names the units ``fully_shard`` gets (one
  per block: each parametrised layer, or each block as a nested container);
* :func:`run_cases` spawns ``world_size`` ranks, runs every :class:`Case` there (the batch split
  evenly over the ranks) and returns each case's gathered gradients (or its error) and the
  per-rank step memory;
* :func:`single_process` computes the reference: the plain loop on the whole batch in one
  process. With the mean-squared loss and equal shards, FSDP's averaged reduce-scatter gives the
  same gradient: ``grad L(batch) = (1/R) sum_r grad L(shard_r)``.

Memory per rank is the step's peak above what the rank holds anyway (its shards of the
parameters and of the gradients, allocated by a step before the measured one), counted by
:class:`invlib.memory.MemoryTracker`; the storages FSDP gathers parameters into persist between
steps and are grown and freed in place, so the tracker is told to watch them.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .activations import LeakyReLU
from .conv import CircularConv1d, CircularConv2d
from .coupling import AdditiveCoupling
from .distributed import end_rank, spawn_local
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .sequential import InvertibleSequential

__all__ = ["CONTEXT", "KINDS", "METHODS", "Case", "Checkpointed", "Conditioned", "assemble", "blocks",
           "context_batch", "gradient_error", "input_batch", "run_cases", "single_process"]

KINDS = ("coupling", "dense", "lu", "conv1d", "conv2d", "mixed")
#: Width of the context of ``"conditional"`` blocks (:func:`blocks`).
CONTEXT = 3
METHODS = ("plain", "checkpoint", "invlib")


def _mlp(half: int, dropout: float, batchnorm: bool) -> nn.Sequential:
    parts: list[nn.Module] = [nn.Linear(half, half)]
    if batchnorm:
        parts.append(nn.BatchNorm1d(half))
    parts.append(nn.Tanh())
    if dropout:
        parts.append(nn.Dropout(dropout))
    parts.append(nn.Linear(half, half))
    return nn.Sequential(*parts)


class Conditioned(nn.Module):
    """A residual function that reads a context: ``tanh(Linear(w/2 + c, w/2)([h, context]))``."""

    def __init__(self, half: int, context: int = CONTEXT) -> None:
        super().__init__()
        self.linear = nn.Linear(half + context, half)

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        return torch.tanh(self.linear(torch.cat([h, context], dim=1)))


def blocks(kind: str, depth: int, width: int, *, seed: int = 0, dtype: torch.dtype = torch.float64,
           dropout: float = 0.0, batchnorm: bool = False) -> list[list[nn.Module]]:
    """``depth`` blocks of ``kind``, each a list of invlib layers, from ``torch.manual_seed(seed)``:

    * ``"coupling"``: ``AdditiveCoupling(F, G)``, ``F, G = Linear(w/2, w/2) + Tanh + Linear``
      (``batchnorm``: a BatchNorm1d after the first Linear; ``dropout``: Dropout before the last);
    * ``"dense"`` / ``"lu"``: ``InvertibleLinear(w)`` / ``LULinear(w)`` + ``LeakyReLU(0.5)``;
    * ``"conv1d"`` / ``"conv2d"``: a circular convolution of ``w`` channels (3 taps) + LeakyReLU;
    * ``"mixed"``: a coupling block followed by ``InvertibleLinear(w)`` (the issue's second net);
    * ``"conditional"``: a coupling block whose F and G read a context (:class:`Conditioned`),
      for ``net(x, context)``.
    """
    if kind == "conditional":
        torch.manual_seed(seed)
        return [[AdditiveCoupling(Conditioned(width // 2), Conditioned(width // 2)).to(dtype)] for _ in range(depth)]
    if kind not in KINDS:
        raise ValueError(f"blocks: kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    made = []
    for _ in range(depth):
        if kind in ("coupling", "mixed"):
            block: list[nn.Module] = [AdditiveCoupling(_mlp(width // 2, dropout, batchnorm),
                                                       _mlp(width // 2, dropout, batchnorm))]
            if kind == "mixed":
                block.append(InvertibleLinear(width))
        elif kind == "dense":
            block = [InvertibleLinear(width), LeakyReLU(0.5)]
        elif kind == "lu":
            block = [LULinear(width), LeakyReLU(0.5)]
        else:
            conv = CircularConv1d if kind == "conv1d" else CircularConv2d
            block = [conv(width, 3), LeakyReLU(0.5)]
        made.append([layer.to(dtype) for layer in block])
    return made


def context_batch(kind: str, batch: int, *, dtype: torch.dtype = torch.float64) -> Tensor | None:
    """The context for the whole batch of ``"conditional"`` blocks (``None`` for other kinds)."""
    if kind != "conditional":
        return None
    return torch.randn(batch, CONTEXT, generator=torch.Generator().manual_seed(2), dtype=dtype)


def input_batch(kind: str, batch: int, width: int, *, seed: int = 1, size: int = 8,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """The whole batch for :func:`blocks` of ``kind`` (convolutions: ``size`` points per side)."""
    shape = {"conv1d": (batch, width, size), "conv2d": (batch, width, size, size)}.get(kind, (batch, width))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Checkpointed(nn.Module):
    """A block run under non-reentrant ``torch.utils.checkpoint``: keeps its input only, and runs
    the block again in backward (torchtitan's per-block activation checkpointing)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.block, x, use_reentrant=False)


def assemble(made: list[list[nn.Module]], method: str, per: str = "block") -> tuple[nn.Module, list[nn.Module]]:
    """The network of ``method`` over ``made`` (:func:`blocks`) and the units to shard.

    ``per="block"``: each block is one unit (``nn.Sequential`` for plain, :class:`Checkpointed`
    for checkpoint, a nested ``InvertibleSequential`` for invlib); ``per="layer"`` (invlib only):
    each layer with parameters is its own unit, in one flat ``InvertibleSequential``.
    """
    if method not in METHODS:
        raise ValueError(f"assemble: method must be one of {METHODS}, got {method!r}")
    if per not in ("block", "layer") or (per == "layer" and method != "invlib"):
        raise ValueError(f"assemble: per must be 'block', or 'layer' for invlib, got {per!r} for {method!r}")
    if method == "invlib":
        if per == "layer":
            layers = [layer for block in made for layer in block]
            return InvertibleSequential(*layers), [layer for layer in layers if any(True for _ in layer.parameters())]
        units = [InvertibleSequential(*block) for block in made]
        return InvertibleSequential(*units), units
    units = [nn.Sequential(*block) for block in made]
    if method == "checkpoint":
        units = [Checkpointed(unit) for unit in units]
    return nn.Sequential(*units), units


@dataclass(frozen=True)
class Case:
    """One configuration run on every rank by :func:`run_cases`."""

    name: str
    kind: str
    method: str = "invlib"
    per: str = "block"
    reshard_after_forward: bool = True
    bf16: bool = False  # MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    depth: int = 3
    width: int = 8
    batch: int = 8  # the whole batch, split evenly over the ranks
    steps: int = 2  # training steps (SGD, lr 0.01 after each but the last); the last is returned
    seed: int = 0
    dropout: float = 0.0
    batchnorm: bool = False
    singular: bool = False  # zero the first InvertibleLinear's weight (a singular layer)
    inner_unit: bool = False  # fully_shard a sub-network inside a layer instead
    grouped: bool = False  # fully_shard the first two units in one call
    memory: bool = False  # track the last step's memory per rank
    extra: dict = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gathered_storages(units: Sequence[nn.Module]) -> list[torch.UntypedStorage]:
    """The storages each unit's parameters are gathered into (grown and freed in place by FSDP)."""
    found = []
    for unit in units:
        unit.unshard()
        found.extend(p.untyped_storage() for p in unit.parameters(recurse=True) if not hasattr(p, "device_mesh"))
        unit.reshard()
    return found


def _forward(net: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    if context is None:
        return net(x)
    if isinstance(net, InvertibleSequential):
        return net(x, context)
    for block in net:  # the plain loop over blocks of conditional layers
        for layer in block:
            x = layer(x, context)
    return x


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _sharded(case: Case, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, list[nn.Module]]:
    """``case``'s network with ``fully_shard`` applied to its units and its root; the units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    made = blocks(case.kind, case.depth, case.width, seed=case.seed, dtype=dtype, dropout=case.dropout,
                  batchnorm=case.batchnorm)
    if case.singular:
        first = next(layer for block in made for layer in block if isinstance(layer, InvertibleLinear))
        with torch.no_grad():
            first.weight.zero_()
    net, units = assemble(made, case.method, case.per)
    options = {"reshard_after_forward": case.reshard_after_forward}
    if case.bf16:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    if case.inner_unit:
        units = [made[0][0].F]
    sharded = units
    if case.grouped:
        fully_shard(units[:2], **options)
        sharded = units[2:]
    for unit in sharded:
        fully_shard(unit, **options)
    fully_shard(net, **options)
    return net, units


def _run_case(case: Case, rank: int, world_size: int) -> dict:
    from .memory import MemoryTracker

    net, units = _sharded(case)
    x = input_batch(case.kind, case.batch, case.width)
    part = x.chunk(world_size)[rank]
    whole = context_batch(case.kind, case.batch)
    context = None if whole is None else whole.chunk(world_size)[rank].clone().requires_grad_()
    result: dict = {"error": None, "grads": None, "peak": None}
    try:
        for step in range(case.steps):
            last = step == case.steps - 1
            # the measured step keeps the gradient shards of the step before, zeroed: the peak is
            # then what the step needs above the rank's parameter and gradient shards
            net.zero_grad(set_to_none=not (last and case.memory))
            if context is not None:
                context.grad = None
            torch.manual_seed(1000 * step + rank)  # the same dropout masks for every method
            if last and case.memory:
                watched = _gathered_storages([*units, net])
                with MemoryTracker(watch=watched) as tracker:
                    _forward(net, part, context).square().mean().backward()
                result["peak"] = tracker.peak_bytes
                result["held"] = sum(_local(p).numel() * p.element_size() for p in net.parameters())
            else:
                y = _forward(net, part, context)
                # between forward and backward: which units hold their parameters gathered
                result["gathered"] = [not hasattr(next(unit.parameters()), "device_mesh") for unit in units]
                y.square().mean().backward()
            if not last:
                with torch.no_grad():
                    for p in net.parameters():
                        p -= 0.01 * p.grad
        result["grads"] = [p.grad.full_tensor() if p.grad is not None else None for p in net.parameters()]
        if context is not None:  # this rank's loss is the mean over its share: R times the whole batch's
            result["context_grad"] = context.grad / world_size
    except (ValueError, RuntimeError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        result["grads_left"] = [p.grad is not None for p in net.parameters()]
    return result


def _time_cases(cases: Sequence[Case], rank: int, world_size: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per training step of each case (float32), in interleaved rounds after a warm-up round."""
    nets = {case.name: (_sharded(case, torch.float32)[0], input_batch(case.kind, case.batch, case.width,
                                                                       dtype=torch.float32)) for case in cases}
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    for round_ in range(rounds + 1):
        for name, (net, x) in nets.items():
            part = x.chunk(world_size)[rank]
            net.zero_grad(set_to_none=True)
            dist.barrier()
            start = time.perf_counter()
            net(part).square().mean().backward()
            dist.barrier()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def _worker(rank: int, world_size: int, port: int, cases: Sequence[Case], folder: str, rounds: int) -> None:
    torch.set_num_threads(1)  # the ranks share this machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        if rounds:
            results = _time_cases(cases, rank, world_size, rounds)
        else:
            results = {case.name: _run_case(case, rank, world_size) for case in cases}
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    end_rank()


def run_cases(cases: Sequence[Case], world_size: int = 2, *, rounds: int = 0) -> list[dict]:
    """Run ``cases`` on ``world_size`` new CPU processes (gloo over loopback); per rank, each
    case's result: ``grads`` (the full gradients of the last step, in ``net.parameters()``
    order; ``None`` on error), ``error`` (a message, or ``None``), ``grads_left`` (on error:
    which parameters hold a gradient), ``gathered`` (per unit, whether its parameters were
    gathered between the forward and the backward of the last unmeasured step), ``peak`` and
    ``held`` (``memory=True``: the step's peak
    bytes above the rank's parameter and gradient shards, and its parameter-shard bytes).

    ``rounds > 0`` times instead: the cases' networks (float32) are built side by side and
    stepped in ``rounds`` interleaved rounds after a warm-up round, each step between two
    barriers; per rank, each case's list of seconds per step."""
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise ValueError("run_cases: case names must be unique")
    with tempfile.TemporaryDirectory() as folder:
        spawn_local(_worker, (world_size, _free_port(), tuple(cases), folder, rounds), world_size)
        return [torch.load(Path(folder) / f"rank{rank}.pt") for rank in range(world_size)]


def gradient_error(got: Sequence[Tensor], want: Sequence[Tensor]) -> float:
    """Largest relative difference ``|g - w| / |w|`` (2-norms) over the parameters' gradients; a
    gradient that is zero in exact arithmetic (a bias before batch norm) is measured against
    1e-3 of the whole gradient's norm instead of its own rounding-level norm."""
    if len(got) != len(want):
        raise ValueError(f"gradient_error: {len(got)} gradients against {len(want)}")
    floor = 1e-3 * float(torch.cat([w.double().flatten() for w in want]).norm())
    return max(float((g.double() - w.double()).norm()) / max(float(w.double().norm()), floor)
               for g, w in zip(got, want))


def single_process(case: Case, *, context_grad: bool = False) -> list[Tensor] | tuple[list[Tensor], Tensor]:
    """The reference gradients of ``case``'s network: the plain loop on the whole batch, one
    process, in ``net.parameters()`` order (the same order as :func:`run_cases`); with
    ``context_grad`` (``"conditional"`` blocks) also the context's gradient."""
    made = blocks(case.kind, case.depth, case.width, seed=case.seed, dropout=case.dropout,
                  batchnorm=case.batchnorm)
    net, _ = assemble(made, "plain")
    x = input_batch(case.kind, case.batch, case.width)
    whole = context_batch(case.kind, case.batch)
    context = None if whole is None else whole.clone().requires_grad_()
    for step in range(case.steps):
        net.zero_grad(set_to_none=True)
        if context is not None:
            context.grad = None
        _forward(net, x, context).square().mean().backward()
        if step < case.steps - 1:
            with torch.no_grad():
                for p in net.parameters():
                    p -= 0.01 * p.grad
    grads = [p.grad for p in net.parameters()]
    return (grads, context.grad) if context_grad else grads
