"""Record the planning chapter's measurement with torch.compile's inductor backend, as JSON.

    python tools/record_planning.py book/data/planning_inductor.json

The book's own cells run the same measurement with the ``aot_eager`` backend (same partitioner,
no code generation): inductor compiles each network at each memory budget for 10-80 s on a
two-core CPU, too long for a chapter that runs in CI. Everything in one network's record (the
plans, checkpoint_sequential at every segment count, all-invert, all-keep and the five compiled
budgets) is measured side by side in one run, as in the chapter.
"""

import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch._inductor.config

from invlib._bench import planning


def main(out: str) -> None:
    warnings.filterwarnings("ignore")
    torch._inductor.config.compile_threads = 1
    records = []
    for name in planning.NETWORKS:
        start = time.perf_counter()
        result = planning.run(name, backend="inductor")
        result.pop("costs")
        result["wall_seconds"] = time.perf_counter() - start
        records.append(result)
        print(name, f"{result['wall_seconds']:.0f} s", flush=True)
    data = dict(torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                threads=torch.get_num_threads(), records=records)
    Path(out).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
