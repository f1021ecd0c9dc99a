"""Copy a chapter's Markdown cells and cell tags and ``mystnb`` options (figure captions) from ``book/src/NAME.md`` into ``book/NAME.ipynb``
without executing it (for edits to prose or tags only).

The code cells of the source and the notebook must already be identical; if one differs, the
chapter has to be executed instead (``python tools/execute_chapters.py NAME``), and this script
refuses. Usage: ``python tools/sync_markdown.py NAME [NAME ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def sync(name: str) -> None:
    src = jupytext.read(ROOT / "book" / "src" / f"{name}.md")
    path = ROOT / "book" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    if [c.cell_type for c in src.cells] != [c.cell_type for c in nb.cells]:
        raise SystemExit(f"{name}: the cells of the source and the notebook differ in kind or number; execute it")
    for s, n in zip(src.cells, nb.cells):
        if s.cell_type == "code" and s.source != n.source:
            raise SystemExit(f"{name}: a code cell differs from the notebook's; execute it instead:\n{s.source[:200]}")
        if s.cell_type == "markdown":
            n.source = s.source
        for key in ("tags", "mystnb"):   # folding, and figure captions, names and alt text
            value = s.metadata.get(key)
            if value:
                n.metadata[key] = value
            else:
                n.metadata.pop(key, None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        sync(arg)
        print(f"{arg}: Markdown and tags copied")
