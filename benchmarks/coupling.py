"""Thin caller of ``python -m invlib.bench`` (where the benchmark lives), kept for old command lines.

    python benchmarks/coupling.py [--net coupling|dense|lu|conv1d|conv2d] [--width W] [--batch B]
                                  [--steps N] [--out PATH] [any other invlib.bench option]

maps the old single-valued options onto ``invlib.bench``'s (``--nets``, ``--widths``,
``--batches``, ``--repeats``, ``--json``) and runs the coupling net unless told otherwise.
"""

import sys

from invlib.bench import main

RENAMED = {"--net": "--nets", "--width": "--widths", "--batch": "--batches", "--steps": "--repeats",
           "--out": "--json"}

if __name__ == "__main__":
    argv = [RENAMED.get(a, a) for a in sys.argv[1:]]
    if "--nets" not in argv and "--quick" not in argv:
        argv = ["--nets", "coupling", *argv]
    sys.exit(main(argv))
