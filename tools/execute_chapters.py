"""Rebuild ``book/NAME.ipynb`` from its text source ``book/src/NAME.md`` and execute it.

The ``.md`` files (MyST notebooks, via jupytext) are what authors edit and review; the
executed ``.ipynb`` files, with outputs and widget state, are what the book renders and
what strict nbval re-runs and compares. Usage: ``python tools/execute_chapters.py [NAME ...]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "book" / "src"


def execute(src: Path) -> float:
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.pop("jupytext", None)
    start = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(ROOT / "book")}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, ROOT / "book" / f"{src.stem}.ipynb")
    return seconds


def main(names: list[str]) -> None:
    sources = [SRC / f"{n}.md" for n in names] if names else sorted(SRC.glob("*.md"))
    for src in sources:
        print(f"{src.stem}: executed in {execute(src):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
