"""Does a network train the same under ``DistributedDataParallel`` as in one process?

:func:`ddp_agreement` answers by measurement: it trains ``build()`` with SGD for a few steps on
the whole batch in this process, then again with ``world_size`` processes (gloo, CPU), each on
its shard of the batch, wrapped in ``torch.nn.parallel.DistributedDataParallel``, and compares the
parameters after every step. With the mean-squared-error loss and equal shards the two runs
compute the same gradient, since DDP averages the ranks' gradients:

    grad L(batch) = (1 / R) sum_r grad L(shard_r),   L = mean squared error.

So the difference is rounding (about 1e-16 relative in float64), unless some gradient never
reaches DDP's reducer, which is exactly the failure that writing ``.grad`` by hand produces.

Modes (``MODES``): ``"default"``; ``"find_unused_parameters"``; ``"static_graph"``; and
``"no_sync"``, which accumulates two micro-batches per step, the first inside ``no_sync()``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

__all__ = ["MODES", "ddp_agreement", "end_rank", "spawn_local", "train_single"]

MODES = ("default", "find_unused_parameters", "static_graph", "no_sync")
_OPTIONS = {"default": {}, "find_unused_parameters": {"find_unused_parameters": True},
            "static_graph": {"static_graph": True}, "no_sync": {}}


def spawn_local(worker: Callable[..., None], args: tuple, world_size: int) -> None:
    """``torch.multiprocessing.spawn(worker, args, world_size)``: ranks on this machine that talk
    over loopback only, with torch's C++ advice (e.g. DDP's reducer finding no unused parameter)
    kept out of the caller's output; a rank's error propagates. The environment is restored."""
    child_env = {"GLOO_SOCKET_IFNAME": "lo", "TORCH_CPP_LOG_LEVEL": "ERROR"}
    saved = {k: os.environ.get(k) for k in child_env}
    try:
        os.environ.update(child_env)  # read by each rank when it starts and imports torch
        mp.spawn(worker, args=args, nprocs=world_size, join=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _loss(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return (net(x) - target).square().mean()


def train_single(build: Callable[[], nn.Module], x: Tensor, target: Tensor, steps: int,
                 lr: float) -> list[dict[str, Tensor]]:
    """SGD on the whole batch in this process; the parameters after each step."""
    net = build()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(net, x, target).backward()
        opt.step()
        history.append({k: v.detach().clone() for k, v in net.named_parameters()})
    return history


def _worker(rank: int, world_size: int, build: Callable[[], nn.Module], x: Tensor, target: Tensor,
            modes: Sequence[str], steps: int, lr: float, folder: str) -> None:
    torch.set_num_threads(1)  # the ranks share this machine's cores
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        for mode in modes:
            net = nn.parallel.DistributedDataParallel(build(), **_OPTIONS[mode])
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            history = []
            for _ in range(steps):
                opt.zero_grad()
                if mode == "no_sync":  # two micro-batches; only the second one's backward reduces
                    xs, ts = x[shard].chunk(2), target[shard].chunk(2)
                    with net.no_sync():
                        (_loss(net, xs[0], ts[0]) / 2).backward()
                    (_loss(net, xs[1], ts[1]) / 2).backward()
                else:
                    _loss(net, x[shard], target[shard]).backward()
                opt.step()
                history.append({k: v.detach().clone() for k, v in net.module.named_parameters()})
            torch.save(history, f"{folder}/{mode}-rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    end_rank()


def end_rank() -> None:
    """End a spawned rank that finished its work: destroy the process group and exit at once,
    without Python's teardown. Tearing a DDP reducer down after its process group can deadlock
    against gloo's worker threads (torch 2.13: the reducer's destructor, holding the GIL, joins
    a gloo thread that waits for the GIL to release a work item), which hung a test once."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ddp_agreement(build: Callable[[], nn.Module], x: Tensor, target: Tensor, *,
                  modes: Sequence[str] = MODES, steps: int = 3, lr: float = 0.1,
                  world_size: int = 2) -> dict[str, float]:
    """Largest relative parameter difference, over steps, parameters and ranks, between DDP and
    one process, for each mode.

    ``build``: returns the network, identically initialised on every call and picklable (a
    module-level function or a ``functools.partial`` of one), since each rank is a new process.
    ``x``, ``target``: the whole batch, ``(batch, ...)``, ``batch`` divisible by
    ``2 * world_size`` (the ``no_sync`` mode splits each shard in two). Relative difference of
    a parameter: ``max|p_ddp - p_single| / max|p_single|``.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"ddp_agreement: unknown modes {unknown}; choose from {MODES}")
    if len(x) % (2 * world_size):
        raise ValueError(f"ddp_agreement: the batch ({len(x)}) must be divisible by 2 * world_size = "
                         f"{2 * world_size} so that shards and micro-batches are equal")
    reference = train_single(build, x, target, steps, lr)
    with tempfile.TemporaryDirectory() as folder:
        spawn_local(_worker, (world_size, build, x, target, tuple(modes), steps, lr, folder), world_size)
        result = {}
        for mode in modes:
            worst = 0.0
            for rank in range(world_size):
                history = torch.load(Path(folder) / f"{mode}-rank{rank}.pt")
                for got, want in zip(history, reference, strict=True):
                    for name, p in want.items():
                        scale = float(p.abs().max()) or 1.0
                        worst = max(worst, float((got[name] - p).abs().max()) / scale)
            result[mode] = worst
    return result
