"""What a reverse step costs besides its arithmetic: host reads and the fixed cost per layer.

* **Host reads.** Every value read back from a tensor (``item()``, ``bool()``, ``float()``,
  ``tolist()``, ``numpy()``) is, on a GPU, a synchronisation that stalls the host until the
  device has caught up. :class:`HostReads` counts them during a region: the aten
  ``_local_scalar_dense`` calls (what ``item``, ``bool`` and ``float`` dispatch to), seen by a
  dispatch mode, which also sees the ops a custom ``autograd.Function`` runs in backward, plus
  ``Tensor.tolist`` and ``Tensor.numpy``, which bypass the dispatcher and are counted by wrapping
  them. Plain autograd reads nothing.
* **Fixed cost per layer.** At tiny sizes (width 16, batch 4, depth 16, one thread) the
  arithmetic takes no time and a step measures the Python and dispatch work around it:
  :func:`fixed_cost` times the invlib step against the plain loop over the same layers,
  interleaved, and reports microseconds per layer and their ratio; and the same with
  ``InvertibleSequential(scratch_bytes=SCRATCH)`` (1 MiB), whose check may then batch the
  layers' factorisations and keep their factors for the steps (at most twice that constant
  more memory, whatever the depth; by default the bound is one layer output, which at these sizes is 256
  bytes to 1 KiB and leaves one layer or one frequency per call). On a GPU the same ratios appear
  at real sizes, where the kernels are that fast.

``python -m invlib.bench --overhead`` prints both for every net.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from invlib._bench.nets import NETS, build
from invlib.sequential import InvertibleSequential

__all__ = ["HostReads", "host_reads", "fixed_cost", "TINY", "SCRATCH"]

#: The sizes at which the fixed cost is measured (width in features per sample, for the conv
#: nets channels times points; batch; depth).
TINY = dict(width=16, batch=4, depth=16)
#: The ``scratch_bytes`` of the second invlib variant :func:`fixed_cost` times.
SCRATCH = 1 << 20
_TINY_CHANNELS = {"conv1d": 4, "conv2d": 4}
_TINY_WIDTH = {"conv1d": 64, "conv2d": 64}  # 4 channels x 16 points; 4 channels x 4 x 4


class HostReads(TorchDispatchMode):
    """Counts the values read back to the host inside a ``with`` block (see the module doc).

    ``count`` is the total and ``by`` the count per kind (``"_local_scalar_dense"``, ``"tolist"``,
    ``"numpy"``). Counts reads on the entering thread (autograd runs CPU backward there).
    """

    KINDS = ("_local_scalar_dense",)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.by: dict[str, int] = {}
        self._wrapped: dict[str, Callable] = {}

    def _add(self, kind: str) -> None:
        self.count += 1
        self.by[kind] = self.by.get(kind, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.KINDS:
            self._add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        for name in ("tolist", "numpy"):
            original = getattr(Tensor, name)
            self._wrapped[name] = original

            def wrapper(t: Tensor, *args, _original=original, _name=name, **kwargs):
                self._add(_name)
                return _original(t, *args, **kwargs)

            setattr(Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for name, original in self._wrapped.items():
            setattr(Tensor, name, original)
        self._wrapped = {}
        return super().__exit__(*exc)


def _tiny(net: str, depth: int, seed: int = 0) -> tuple[list, Tensor]:
    torch.manual_seed(seed)
    width = _TINY_WIDTH.get(net, TINY["width"])
    return build(net, depth, width, TINY["batch"], _TINY_CHANNELS.get(net))


def host_reads(net: str, depth: int) -> dict[str, int]:
    """Host reads during one ``backward()`` of an :class:`invlib.InvertibleSequential` of ``net``
    (tiny sizes; the count does not depend on them), by kind, plus ``"total"``."""
    layers, x = _tiny(net, depth)
    loss = InvertibleSequential(*layers)(x).square().sum()
    with HostReads() as reads:
        loss.backward()
    return dict(reads.by, total=reads.count)


def fixed_cost(net: str, rounds: int = 60, warmup: int = 10, scratch_bytes: int | None = SCRATCH) -> dict:
    """Microseconds per layer of a step (``loss = sum(net(x)**2); loss.backward()``) of the plain
    loop and of invlib at :data:`TINY` sizes, one thread, interleaved; the ratio is the median
    of the per-round ratios. With ``scratch_bytes``, also ``InvertibleSequential(scratch_bytes=...)``
    (``scratch_us``, ``scratch_ratio``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers, x = _tiny(net, TINY["depth"])
        x = x.detach()
        nets = {"plain": torch.nn.Sequential(*layers), "invlib": InvertibleSequential(*layers)}
        if scratch_bytes is not None:
            nets["scratch"] = InvertibleSequential(*layers, scratch_bytes=scratch_bytes)

        def step(module: torch.nn.Module) -> float:
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            module(x).square().sum().backward()
            return time.perf_counter() - start

        seconds: dict[str, list[float]] = {name: [] for name in nets}
        for round_ in range(warmup + rounds):
            for name, module in nets.items():
                elapsed = step(module)
                if round_ >= warmup:
                    seconds[name].append(elapsed)
    finally:
        torch.set_num_threads(threads)
    per_layer = {k: 1e6 * statistics.median(v) / len(layers) for k, v in seconds.items()}
    ratios = {k: statistics.median(i / p for i, p in zip(v, seconds["plain"])) for k, v in seconds.items()}
    row = dict(net=net, layers=len(layers), plain_us=per_layer["plain"], invlib_us=per_layer["invlib"],
               ratio=ratios["invlib"])
    if scratch_bytes is not None:
        row.update(scratch_bytes=scratch_bytes, scratch_us=per_layer["scratch"], scratch_ratio=ratios["scratch"])
    return row


def overhead_table(nets: tuple[str, ...] = NETS, depths: tuple[int, ...] = (4, 16), rounds: int = 60,
                   scratch_bytes: int | None = SCRATCH) -> list[dict]:
    """Host reads at ``depths`` and the fixed cost per layer for each net, as rows."""
    rows = []
    for net in nets:
        row = {f"reads_d{d}": host_reads(net, d)["total"] for d in depths}
        row.update(fixed_cost(net, rounds, scratch_bytes=scratch_bytes))
        rows.append(row)
    return rows
