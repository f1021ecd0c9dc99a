"""Results that are tables, shown as tables: Markdown in the book, aligned text in a terminal.

``Table(columns, rows, formats=...)`` as the last expression of a notebook cell (or passed to
``IPython.display.display``) renders through ``_repr_markdown_`` as a real table that wraps to
the page column, and prints as aligned fixed-width text elsewhere (``str`` / ``repr``). Both
forms are plain text, so nbval validates them like any printed output. A value is formatted by
its column's format spec (``"{:.2f}"`` style, without the braces: ``".2f"``), or by ``str``.
Numbers align right, text left. ``byte_size(n)`` writes a byte count in the unit that suits
it, chosen per value, so that a table never shows "0 KiB" for a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Number

__all__ = ["Table", "byte_size"]


class Table:
    """A small results table: ``columns`` (headers), ``rows`` (sequences of values), optional
    per-column ``formats`` (``None`` entries: ``str``) and a ``caption`` shown under it."""

    def __init__(self, columns: Sequence[str], rows: Iterable[Sequence[object]], *,
                 formats: Sequence[str | None] | None = None, caption: str | None = None) -> None:
        self.columns = [str(c) for c in columns]
        self.rows = [list(r) for r in rows]
        n = len(self.columns)
        bad = [i for i, r in enumerate(self.rows) if len(r) != n]
        if bad:
            raise ValueError(f"Table: every row needs {n} values (one per column), "
                             f"row {bad[0]} has {len(self.rows[bad[0]])}")
        self.formats = list(formats) if formats is not None else [None] * n
        if len(self.formats) != n:
            raise ValueError(f"Table: formats needs {n} entries (one per column, None for str), "
                             f"got {len(self.formats)}")
        self.caption = caption

    def _cell(self, value: object, spec: str | None) -> str:
        if spec is None or isinstance(value, str):
            return str(value)
        return format(value, spec)

    def _cells(self) -> list[list[str]]:
        return [[self._cell(v, f) for v, f in zip(row, self.formats)] for row in self.rows]

    def _numeric(self) -> list[bool]:
        """Columns whose values are all numbers (strings such as '-' allowed): right-aligned."""
        return [bool(self.rows) and all(isinstance(r[j], Number) or r[j] in ("-", "")
                                        for r in self.rows)
                and any(isinstance(r[j], Number) for r in self.rows)
                for j in range(len(self.columns))]

    def _repr_markdown_(self) -> str:
        def escape(text: str) -> str:
            return text.replace("|", "\\|")

        right = self._numeric()
        lines = ["| " + " | ".join(escape(c) for c in self.columns) + " |",
                 "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
        lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in self._cells()]
        if self.caption:
            lines += ["", escape(self.caption)]
        return "\n".join(lines)

    def __str__(self) -> str:
        cells, right = self._cells(), self._numeric()
        widths = [max(len(c), *(len(r[j]) for r in cells)) if cells else len(c)
                  for j, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if r else v.ljust(w)
                             for v, w, r in zip(values, widths, right)).rstrip()

        text = [line(self.columns)] + [line(r) for r in cells]
        if self.caption:
            text.append(self.caption)
        return "\n".join(text)

    __repr__ = __str__


def byte_size(nbytes: float, digits: int = 3) -> str:
    """``nbytes`` in GiB, MiB or KiB (powers of 1024), the largest unit it reaches, to ``digits``
    significant digits; below 1 KiB in whole bytes: ``byte_size(8) == "8 B"``,
    ``byte_size(1536) == "1.5 KiB"``, ``byte_size(2**30) == "1 GiB"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.{digits}g} {unit}"
    return f"{round(nbytes)} B"
