"""Check every link a reader can click in the built book.

Usage: ``python tools/link_check.py _build/html``. For each ``<a href>`` on each page:

* a link inside the site must point to a file that exists, and its ``#anchor`` (if any) to an
  element of that page with that ``id`` (or a legacy ``name``);
* a link out of the site must be well formed: ``http``, ``https`` or ``mailto``, a host name with
  a dot in it, no spaces. External sites are not fetched (the build machines have no network).
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def external_problem(href: str) -> str | None:
    """Why an outbound link is malformed, or None."""
    parts = urlsplit(href)
    if any(c.isspace() for c in href):
        return "contains white space"
    if parts.scheme == "mailto":
        return None if "@" in parts.path else "mailto without an address"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    host = parts.hostname or ""
    if "." not in host or host.startswith(".") or host.endswith("."):
        return f"host {host!r} is not a domain name"
    return None


def problems(html_dir: Path) -> list[str]:
    """Every broken internal link or anchor and every malformed external link under html_dir."""
    html_dir = html_dir.resolve()
    pages = {p.resolve(): None for p in html_dir.rglob("*.html")
             if p.relative_to(html_dir).parts[0] not in ("_static", "_sources")}
    parsed = {p: _parse(p) for p in pages}
    found = []
    for page, info in parsed.items():
        name = page.relative_to(html_dir)
        for href in info.links:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//"):
                why = external_problem(href)
                if why:
                    found.append(f"{name}: {href}: {why}")
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                found.append(f"{name}: {href}: no such file")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    found.append(f"{name}: {href}: no element with id {parts.fragment!r}")
    return found


if __name__ == "__main__":
    bad = problems(Path(sys.argv[1]))
    print("\n".join(bad) or f"every link under {sys.argv[1]} resolves")
    sys.exit(1 if bad else 0)
