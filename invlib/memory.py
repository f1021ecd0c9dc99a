"""Peak bytes of tensor memory allocated by a region of PyTorch code, and by one training step.

Two backends report the same two numbers, both counted from zero at the start of the region:

* ``peak_bytes``: the most tensor memory that was allocated inside the region and alive at once;
* ``live_bytes``: what of it is still alive when the region ends (e.g. what a forward pass keeps
  for backward, or the gradients a step leaves behind).

**CPU (and any device): :class:`MemoryTracker`.** A dispatch-level storage tracker. Every aten op
run on the entering thread passes through it, backward included: on CPU the autograd engine runs
backward on the calling thread, also inside a custom ``backward`` that runs its own
``torch.autograd.backward`` (tested); for CUDA tensors torch hands the mode on to autograd's
device threads with the rest of its thread-local state (not checked here: no GPU). For each op it
registers the storages of the outputs that no input shares, so views (``x[0]``, ``x.T``) and
in-place results (``x.add_(1)``) are not allocations; it keeps a weak reference to each (a storage
keeps its Python object alive for as long as the storage lives, so the reference dies exactly when
the memory is released) and re-reads every registered size after each op, so a storage shrunk with
``storage.resize_(0)`` counts as freed. The peak is taken after each op, while the op's inputs are
still referenced.

Counted: the exact ``nbytes`` of every storage created inside the region, including parameter
gradients created by ``backward`` and tensors made from Python data (they enter via
``aten.lift_fresh``). Not counted: storages that existed before the region (parameters, the input,
gradients already allocated), even if an op grows them; scratch buffers a kernel allocates and
frees internally without the dispatcher (e.g. oneDNN workspaces); ops on threads that did not
inherit the mode; the allocator's caching, alignment and fragmentation; Python objects.

**CUDA: :class:`CudaMemoryTracker`.** The caching allocator's own counters,
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated at
the start. These include kernel scratch and round each block up to 512 bytes; memory the allocator
reserves but has not handed out is not counted.

Process RSS is not used: the CPU allocator hands freed pages back to the C library, which keeps
some and returns others to the OS on its own schedule, so RSS moves by megabytes for reasons
unrelated to the code measured, and cannot support a claim of a few activations.

**One training step.** :func:`chain` differentiates a list of layers by plain autograd,
checkpointing or inversion; :func:`step_memory` and :func:`compare_methods` measure
``loss = mean(chain(x)**2); loss.backward()`` with the tracker for ``x.device``, with parameter
gradients absent or already allocated before the step.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .sequential import InvertibleSequential

__all__ = [
    "MemoryTracker",
    "CudaMemoryTracker",
    "track_memory",
    "measure_peak",
    "METHODS",
    "chain",
    "training_step",
    "StepMemory",
    "step_memory",
    "step_seconds",
    "StepReport",
    "compare_methods",
]

MIB = 2**20


def _storages(tree: Any) -> dict[int, torch.UntypedStorage]:
    """Map id -> storage for every strided tensor in a pytree of op arguments or results."""
    found = {}
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, Tensor) and leaf.layout == torch.strided:
            storage = leaf.untyped_storage()
            found[id(storage)] = storage
        elif isinstance(leaf, torch.UntypedStorage):  # e.g. Tensor.set_(storage, ...)
            found[id(leaf)] = leaf
    return found


class MemoryTracker(TorchDispatchMode):
    """Peak and live bytes of tensor storage allocated inside a ``with`` block (see module doc).

    Usage::

        with MemoryTracker() as mem:
            loss = model(x).square().mean()
            loss.backward()
        mem.peak_bytes, mem.live_bytes

    While the block runs, ``live_bytes`` is the current count. Every op pays a Python call and a
    pass over the registered storages, so do not time code inside the tracker.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak_bytes = 0
        self.live_bytes = 0
        self._tracked: dict[int, weakref.ref] = {}

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def live_mib(self) -> float:
        return self.live_bytes / MIB

    def __enter__(self) -> MemoryTracker:
        self.peak_bytes = self.live_bytes = 0
        self._tracked = {}
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._refresh()
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _storages((args, kwargs))
        # lift_fresh wraps a tensor just built from Python data outside the dispatcher: its
        # output shares the input's storage, yet that storage is a new allocation.
        if func is torch.ops.aten.lift_fresh.default:
            inputs = {}
        for key, storage in _storages(out).items():
            if key not in inputs and key not in self._tracked:
                self._tracked[key] = weakref.ref(storage, self._forget(key))
        self._refresh()
        return out

    def _forget(self, key: int) -> Callable[[weakref.ref], None]:
        # Drop the entry when its storage dies, unless the id was reused by a newer storage.
        def callback(ref: weakref.ref) -> None:
            if self._tracked.get(key) is ref:
                del self._tracked[key]

        return callback

    def _refresh(self) -> None:
        live = 0
        for ref in list(self._tracked.values()):
            storage = ref()
            if storage is not None:
                live += storage.nbytes()
        self.live_bytes = live
        self.peak_bytes = max(self.peak_bytes, live)


class CudaMemoryTracker:
    """Peak and live bytes allocated on a CUDA device inside a ``with`` block, from allocator stats.

    ``peak_bytes = max_memory_allocated - allocated_at_entry`` and
    ``live_bytes = memory_allocated_at_exit - allocated_at_entry``, with the device synchronized at
    both ends. The peak statistics of ``device`` are reset on entry.
    """

    def __init__(self, device: torch.device | str | int | None = None) -> None:
        self.device = torch.device("cuda") if device is None else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaMemoryTracker needs a CUDA device, got {self.device}; "
                             "use MemoryTracker for other devices")
        self.peak_bytes = 0
        self.live_bytes = 0
        self._base = 0

    peak_mib = MemoryTracker.peak_mib
    live_mib = MemoryTracker.live_mib

    def __enter__(self) -> CudaMemoryTracker:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        self.live_bytes = torch.cuda.memory_allocated(self.device) - self._base


def track_memory(device: torch.device | str = "cpu") -> MemoryTracker | CudaMemoryTracker:
    """The tracker for ``device``: allocator stats on CUDA, the dispatch tracker elsewhere."""
    device = torch.device(device)
    return CudaMemoryTracker(device) if device.type == "cuda" else MemoryTracker()


def measure_peak(fn: Callable[..., Any], *args: Any) -> int:
    """Peak bytes allocated while ``fn(*args)`` runs; the device is that of the first tensor in args.

    With no tensor among ``args`` the dispatch tracker is used (it sees every device, without the
    allocator's rounding and scratch buffers).
    """
    tensors = [a for a in tree_flatten(args)[0] if isinstance(a, Tensor)]
    with track_memory(tensors[0].device if tensors else "cpu") as tracker:
        fn(*args)
    return tracker.peak_bytes


# ---------------------------------------------------------------------------------------------
# One training step of a chain of layers, by plain autograd, checkpointing or inversion
# ---------------------------------------------------------------------------------------------

METHODS = ("plain", "checkpoint", "invertible")


def chain(layers: Sequence[nn.Module], method: str) -> Callable[[Tensor], Tensor]:
    """The composition ``x -> layers[-1](... layers[0](x))``, differentiated by ``method``.

    * ``"plain"``: ``for layer in layers: x = layer(x)``; autograd keeps what every layer saves.
    * ``"checkpoint"``: ``torch.utils.checkpoint.checkpoint_sequential`` with ``round(sqrt(n))``
      segments, non-reentrant: keeps each segment's input and reruns the segment in backward.
    * ``"invertible"``: ``invlib.InvertibleSequential(*layers)``: keeps the output only and
      rebuilds each layer's input from its output with ``inverse`` in backward.

    The layers are shared, not copied, so every method sees the same weights.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one module, got an empty sequence")
    if method == "plain":
        def forward(x: Tensor) -> Tensor:
            for layer in layers:
                x = layer(x)
            return x
        return forward
    if method == "checkpoint":
        net = nn.Sequential(*layers)
        segments = max(1, round(math.sqrt(len(layers))))
        return lambda x: torch.utils.checkpoint.checkpoint_sequential(
            net, segments, x, use_reentrant=False)
    if method == "invertible":
        return InvertibleSequential(*layers)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def training_step(forward: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """One step: ``y = forward(x)``, ``loss = mean(y**2)``, ``loss.backward()``; returns the loss."""
    loss = forward(x).square().mean()
    loss.backward()
    return loss.item()


def _reset_grads(x: Tensor, params: Sequence[Tensor], accumulate: bool) -> None:
    x.grad = None
    for p in params:
        p.grad = torch.zeros_like(p) if accumulate else None


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step: ``peak_bytes``, ``live_bytes`` after it, and ``grad_bytes``,
    the parameter gradients it had to allocate (0 when they existed before the step)."""

    peak_bytes: int
    live_bytes: int
    grad_bytes: int

    @property
    def peak_above_grads(self) -> int:
        """Peak minus one copy of the parameter gradients (the step's working memory)."""
        return self.peak_bytes - self.grad_bytes


def step_memory(forward: Callable[[Tensor], Tensor], x: Tensor, params: Iterable[Tensor],
                accumulate: bool = False) -> StepMemory:
    """Measure one :func:`training_step` with :func:`track_memory` on ``x.device``.

    ``params`` are the trainable parameters. With ``accumulate=False`` their gradients are set to
    ``None`` first, so the step allocates them (counted in ``grad_bytes``); with ``True`` they are
    allocated as zeros beforehand, outside the measurement, and the step adds into them.
    ``x.grad`` is reset to ``None`` either way, so an input gradient is part of the step.
    """
    params = [p for p in params if p.requires_grad]
    _reset_grads(x, params, accumulate)
    with track_memory(x.device) as tracker:
        training_step(forward, x)
    grad_bytes = 0 if accumulate else sum(p.numel() * p.element_size() for p in params)
    return StepMemory(tracker.peak_bytes, tracker.live_bytes, grad_bytes)


def step_seconds(forward: Callable[[Tensor], Tensor], x: Tensor,
                 params: Iterable[Tensor]) -> tuple[float, float]:
    """Wall-clock seconds and loss of one :func:`training_step` (gradients reset to ``None`` first)."""
    _reset_grads(x, list(params), accumulate=False)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    loss = training_step(forward, x)
    sync()
    return time.perf_counter() - start, loss


@dataclass(frozen=True)
class StepReport:
    """Timings of several steps of one method, its loss, and its memory with fresh and allocated
    grads (the loss lets a caller check that every method computed the same function)."""

    seconds: tuple[float, ...]
    loss: float
    fresh: StepMemory
    accumulate: StepMemory

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def compare_methods(layers: Sequence[nn.Module], x: Tensor, methods: Sequence[str] = METHODS,
                    steps: int = 5, warmup: int = 1) -> dict[str, StepReport]:
    """Time and measure training steps of ``layers`` by each method, side by side.

    Runs ``warmup + steps`` rounds; each round runs one step of every method in turn, so slow
    drifts of the machine hit all methods alike, and the first ``warmup`` rounds are dropped.
    Memory is measured afterwards, one untimed step per method and gradient regime.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    params = list({id(p): p for layer in layers for p in layer.parameters()}.values())
    forwards = {m: chain(layers, m) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    losses: dict[str, float] = {}
    for round_ in range(warmup + steps):
        for m, forward in forwards.items():
            t, losses[m] = step_seconds(forward, x, params)
            if round_ >= warmup:
                times[m].append(t)
    return {m: StepReport(tuple(times[m]), losses[m],
                          step_memory(forward, x, params, accumulate=False),
                          step_memory(forward, x, params, accumulate=True))
            for m, forward in forwards.items()}
