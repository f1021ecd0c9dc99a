"""Record the engine's overhead (host reads per backward, fixed cost per layer at tiny sizes) of
whatever ``invlib`` is importable, as JSON, for the compute chapter's before/after comparison.

    python tools/record_overhead.py OUT.json LABEL          # this checkout
    PYTHONPATH=/path/to/old/checkout python tools/record_overhead.py OUT.json LABEL

The measuring code is loaded from this checkout's ``invlib/_bench/overhead.py`` by file path, so
an older ``invlib`` (which lacks it) is measured the same way as the current one.
"""

import importlib.util
import json
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent / "invlib" / "_bench" / "overhead.py"


def main(out: str, label: str) -> None:
    spec = importlib.util.spec_from_file_location("overhead_recorder", HERE)
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    import invlib

    rows = overhead.overhead_table(rounds=60)
    data = dict(label=label, invlib=str(Path(invlib.__file__).parent), torch=torch.__version__,
                cpu=platform.processor() or platform.machine(), threads=1, rows=rows)
    Path(out).write_text(json.dumps(data, indent=1))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main(*sys.argv[1:3])
