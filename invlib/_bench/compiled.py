"""A peer for the benchmark: ``torch.compile`` with the activation-memory-budget partitioner.

``torch._functorch.config.activation_memory_budget`` (0..1) tells AOTAutograd's min-cut
partitioner how much of the forward's activations it may keep for backward: 1 keeps what the
default partitioner keeps, 0 keeps as little as it can and recomputes the rest in backward.
:func:`compiled_forward` compiles a chain of layers at one budget; :func:`allocator_peak`
measures the peak memory of such compiled code; :func:`inductor_available` says whether the
``"inductor"`` backend works here (otherwise use ``"aot_eager"``, and say so).

**Why not** :class:`invlib.memory.MemoryTracker`. It is a ``TorchDispatchMode``; while one is
active, dynamo does not run the compiled artefact the way it runs without it (the numbers come
out as eager's at every budget), and inductor's generated code allocates its buffers with
``empty_strided_cpu``, which never passes through the dispatcher. So compiled code is measured
one level lower, at the c10 CPU allocator.

**How** :func:`allocator_peak` **measures.** It runs ``fn`` inside ``torch.profiler.profile(
profile_memory=True)``. With memory profiling on, the c10 CPU allocator reports every allocation
and free (size, address, time) to the profiler, whoever asked for the memory: an aten op, autograd,
inductor's generated C++ (``empty_strided_cpu``), a kernel's scratch buffer. The raw events
(``prof.profiler.kineto_results.events()``, the ``[memory]`` entries, ``nbytes() < 0`` for a free)
are sorted by time and summed: the running sum is the CPU memory allocated inside ``fn`` and
still alive, counted from zero at entry; its maximum is the peak, its last value the live bytes
at the end (the value ``fn`` returns is still held then). Summing ``FunctionEvent.cpu_memory_usage``
instead would count an allocation once per enclosing op.

Counted: every CPU allocation made through the c10 allocator on a thread the profiler follows
(the calling thread; CPU autograd runs backward there too), at its requested size. Not counted:
memory that existed before ``fn`` (its release is not reported either: the allocator does not
know its size, and torch prints a warning once), allocations on threads the profiler does not
follow (intra-op worker threads that allocate, which is rare), memory allocated outside c10
(oneDNN's own caches, Python objects), allocator rounding and fragmentation.
Checked against :class:`~invlib.memory.MemoryTracker` on eager float32 steps with the gradients
allocated beforehand (``tests/test_compiled_peer.py``): identical peaks and live bytes on a
Linear/GELU chain, a chain with an :class:`~invlib.AdditiveCoupling` block and the MLP below.
Where they may differ: wrapped Python scalars (``x * 2`` allocates 8 bytes) and kernel scratch
that only the allocator sees.

**What it showed** (CPU, torch 2.13, the MLP ``4 x (Linear(128, 512), GELU, Linear(512, 128))``,
gradients allocated beforehand; aot_eager and inductor alike, to within 0.3 MB):

* the budget works on what the forward keeps: 0, 0.11, 0.25, 0.31, 0.57 MB of activations at
  budgets 0, 0.25, 0.5, 0.75, 1 (batch 32), and 0 to 9.2 MB at batch 512;
* the step's peak does *not* follow it. At batch 32 it is 2.19 MB at every budget (eager: 0.92 MB):
  the compiled backward is one graph that returns all parameter gradients at once (2.1 MB) before
  autograd adds them into ``.grad``, and that moment is the peak. At batch 512 it is 10.7, 6.0,
  7.3-7.6, 7.3-7.6, 10.7 MB at budgets 0 .. 1 (eager 10.7): budget 0 saves nothing, but the
  backward graph recomputes the whole forward before it starts using it, so it peaks where
  budget 1 does. A sweep must report the peak at every budget; the lowest may lie inside.

The profiler slows every op, so :func:`allocator_peak` is for memory only: time the step in a
separate run without it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch._functorch.config  # not imported by `import torch` alone
from torch import Tensor, nn

__all__ = ["allocator_peak", "compiled_forward", "inductor_available", "saved_bytes", "CompiledChain"]

_SERIAL = itertools.count()


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: kineto prints a line to it at every profiler start and
    stop, from C++, which no logging setting silences (a notebook would show them as output).
    Python's own ``sys.stderr`` output is flushed first; exceptions propagate as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def allocator_peak(fn: Callable[[], object]) -> tuple[int, int]:
    """``(peak_bytes, live_bytes)`` of CPU memory the c10 allocator handed out inside ``fn()``.

    Both counted from zero at entry: the most allocated at once inside ``fn``, and what of it is
    still allocated when ``fn`` returns (its return value is held until then). See the module
    docstring for what is and is not counted. Works for eager and compiled code alike.
    """
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), _quiet_native_stderr():
        warnings.simplefilter("ignore")  # "Memory block of unknown size ..." for frees of old memory
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
    del result
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak, live


@functools.cache
def inductor_available() -> bool:
    """Whether the ``"inductor"`` backend compiles and runs a small function with its gradient
    on this machine (a C++ compiler is needed on CPU). Cached; failures are not raised.
    Leaves dynamo's caches alone (the probe has a code object of its own)."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2, backend="inductor")
        x = torch.randn(8, requires_grad=True)
        fn(x).sum().backward()
        return bool(torch.allclose(x.grad, 2 * torch.cos(x.detach())))
    except Exception:  # noqa: BLE001 - any failure means "use aot_eager"
        return False


class CompiledChain:
    """``layers`` run in order, compiled by ``torch.compile`` at one activation-memory budget.

    Built by :func:`compiled_forward`. Attributes: ``budget``, ``backend``, ``compile_seconds``
    (the warm-up forward + backward, which compiled both graphs). Each instance compiles its own
    copy of the chain's code, so instances do not share dynamo's cache nor its recompile limit,
    and every call runs inside ``activation_memory_budget=budget``, so a recompilation (a new
    input shape, ``requires_grad`` flipped) partitions at the instance's budget too.
    (The config patch costs about 22 us a call here, under 1 % of the 4 ms MLP step in the module docstring.)
    """

    def __init__(self, layers: Sequence[nn.Module], example: Tensor, budget: float,
                 backend: str = "inductor") -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {budget}")
        self.layers = list(layers)
        self.budget = float(budget)
        self.backend = backend

        def chain(x: Tensor) -> Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

        # A code object of its own: dynamo caches compiled graphs per code object, so chains built
        # from a shared function would share (and reuse) one another's graphs across budgets.
        chain.__code__ = chain.__code__.replace(co_name=f"compiled_chain_{next(_SERIAL)}")
        self._compiled = torch.compile(chain, backend=backend)
        start = time.perf_counter()
        self._warm_up(example)
        self.compile_seconds = time.perf_counter() - start

    def _warm_up(self, example: Tensor) -> None:
        # Forward and backward (inductor compiles the backward graph at the first backward), with
        # autograd.grad so that no .grad of the parameters or the example is touched.
        y = self(example)
        inputs = [p for layer in self.layers for p in layer.parameters() if p.requires_grad]
        if example.requires_grad:
            inputs.append(example)
        if y.requires_grad and inputs:
            torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)

    def __call__(self, x: Tensor) -> Tensor:
        with torch._functorch.config.patch(activation_memory_budget=self.budget):
            return self._compiled(x)


def compiled_forward(layers: Sequence[nn.Module], example: Tensor, budget: float,
                     backend: str = "inductor") -> CompiledChain:
    """A forward running ``layers`` in order, compiled by ``torch.compile(backend=backend)`` with
    ``torch._functorch.config.activation_memory_budget = budget``.

    ``example`` is an input of the shape, dtype and ``requires_grad`` the forward will get: one
    forward + backward on it, inside the factory, compiles both graphs while the budget is set
    (the partitioner runs when the forward is first compiled), without touching any ``.grad``.
    Its wall time is the result's ``compile_seconds``.
    """
    return CompiledChain(layers, example, budget, backend)


def saved_bytes(y: Tensor, exclude: Sequence[Tensor] = ()) -> int:
    """Bytes of the distinct storages that ``y``'s autograd node saved for backward, leaving out
    those of ``exclude`` (pass the parameters and the input): for a compiled chain, the
    activations its partitioner chose to keep. A view of an excluded tensor is excluded too."""
    if y.grad_fn is None:
        return 0
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}
    for t in getattr(y.grad_fn, "saved_tensors", ()):
        if isinstance(t, Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in skip:
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
