"""Reading copies of the chapters for JupyterLab, with every glued number filled in.

``python tools/lab_notebooks.py OUT`` writes ``OUT/NAME.ipynb`` for every ``book/NAME.ipynb``.
In the book, a number in the text is a role, ``{glue:text}`key```, that myst-nb replaces by the
value a code cell glued under that key. JupyterLab's MyST renderer (jupyterlab-myst) renders the
other roles but not glue: it would show the key. The copies replace each glue role in the
Markdown cells by the value stored in the committed outputs (formatted as myst-nb formats it,
``key:format`` and ``other.ipynb::key`` included); code cells, outputs and widget state are
copied unchanged. ``OUT/data``, ``OUT/src`` and ``OUT/_static`` link back to ``book/`` so the
chapters' relative paths keep working when their cells are run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from myst_nb.core.variables import format_plain_text

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
GLUE = re.compile(r"\{glue:text\}`(?:([\w.-]+\.ipynb)::)?([^`:]+)(?::([^`]*))?`")


def glued(notebook: dict) -> dict[str, str]:
    """Every key a notebook's outputs glued, with its ``text/plain`` value."""
    values = {}
    for cell in notebook["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            data = out.get("data", {})
            plain = data.get("text/plain") or data.get("application/papermill.record/text/plain")
            if name and plain is not None:
                values[name] = "".join(plain) if isinstance(plain, list) else plain
    return values


def fill(text: str, own: dict[str, str], others: dict[str, dict[str, str]]) -> str:
    """``text`` with every ``{glue:text}`` role replaced by its value (unknown keys are kept)."""
    def value(m: re.Match) -> str:
        source = others.get(m.group(1), {}) if m.group(1) else own
        if m.group(2) not in source:
            return m.group(0)
        return format_plain_text(source[m.group(2)], m.group(3) if m.group(3) is not None else "")
    return GLUE.sub(value, text)


def write_copies(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    notebooks = {p.name: json.loads(p.read_text()) for p in sorted(BOOK.glob("*.ipynb"))}
    values = {name: glued(nb) for name, nb in notebooks.items()}
    written = []
    for name, nb in notebooks.items():
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                cell["source"] = fill(source, values[name], values)
        path = out / name
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    for folder in ("data", "src", "_static"):
        link = out / folder
        if not link.exists() and (BOOK / folder).exists():
            link.symlink_to(Path("..") / "book" / folder if out.parent == ROOT else BOOK / folder)
    return written


if __name__ == "__main__":
    paths = write_copies(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_lab")
    print(f"{len(paths)} reading copies written to {paths[0].parent}")
