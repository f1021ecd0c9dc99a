"""Peak memory and step time of plain autograd, checkpointing and invlib on a chain of layers.

The reference benchmark: a chain of additive coupling blocks ``y1 = x1 + F(x2)``,
``y2 = x2 + G(y1)`` with ``F, G = Linear(w/2, w/2) + LeakyReLU``, width 256, batch 4096,
float32, depths 4, 16 and 64, 2 CPU threads. ``--net`` swaps in the other invlib layers.
Each step is ``loss = mean(net(x)**2); loss.backward()`` with ``x`` requiring grad; methods run
interleaved in one process, and the time is the median of ``--steps`` steps after a warm-up.
On CUDA (``--device cuda``; e.g. ``--width 1024 --depths 4 64 256``) memory comes from the
allocator's statistics instead of the dispatch tracker.

    python benchmarks/coupling.py [--quick] [--net dense] [--out results.json]
"""

from common import main

if __name__ == "__main__":
    main(__doc__.splitlines()[0], default_net="coupling")
