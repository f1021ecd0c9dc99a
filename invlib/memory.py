"""Peak bytes of tensor memory allocated by a region of PyTorch code.

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
gradients created by ``backward``, tensors made from Python data (they enter via
``aten.lift_fresh``) and the random-number states ``invlib`` stores to replay dropout (torch
makes them outside the dispatcher; ``invlib._replay`` announces each one to the tracker). Not
counted: storages that existed before the region (parameters, the input,
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

One training step measured this way, for several ways of differentiating the same layers, is in
:mod:`invlib.compare`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import _replay

__all__ = ["MemoryTracker", "CudaMemoryTracker", "track_memory", "measure_peak"]

MIB = 2**20


def _storages(tree: Any) -> dict[int, torch.UntypedStorage]:
    """Map id -> storage for every strided tensor in op arguments or results.

    ``tree`` nests tuples (return types included), lists and dicts, as the dispatcher hands them
    over; walked by hand because ``torch.utils._pytree.tree_flatten`` costs more than most ops.
    """
    found = {}
    stack = [tree]
    while stack:
        leaf = stack.pop()
        if isinstance(leaf, Tensor):
            if leaf.layout == torch.strided:
                storage = leaf.untyped_storage()
                found[id(storage)] = storage
        elif isinstance(leaf, (tuple, list)):
            stack.extend(leaf)
        elif isinstance(leaf, dict):
            stack.extend(leaf.values())
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

    ``watch``: storages that exist before the block but are grown and shrunk in place inside it
    (``UntypedStorage.resize_``, which no op reports), such as those FSDP2 gathers parameters
    into; each counts by how much it exceeds its size at entry.
    """

    def __init__(self, watch: Sequence[torch.UntypedStorage] = ()) -> None:
        super().__init__()
        self.peak_bytes = 0
        self.live_bytes = 0
        self._tracked: dict[int, weakref.ref] = {}
        self._watch = list(watch)
        self._base: list[int] = []

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def live_mib(self) -> float:
        return self.live_bytes / MIB

    def __enter__(self) -> MemoryTracker:
        self.peak_bytes = self.live_bytes = 0
        self._tracked = {}
        self._base = [storage.nbytes() for storage in self._watch]
        _replay.LISTENERS.append(self._made_outside)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._refresh()
        _replay.LISTENERS.remove(self._made_outside)
        super().__exit__(*exc)

    def _made_outside(self, t: Tensor) -> None:
        """Count a tensor torch created without the dispatcher (a random-number state, which
        ``invlib._replay`` announces), from now until it dies."""
        storage = t.untyped_storage()
        key = id(storage)
        if key not in self._tracked:
            self._tracked[key] = weakref.ref(storage, self._forget(key))
        self._refresh()

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
        for storage, base in zip(self._watch, self._base):
            live += max(storage.nbytes() - base, 0)
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
