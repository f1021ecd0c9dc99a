"""Fail if a built page needs the network: remote scripts, stylesheets, fonts or images.

Usage: ``python tools/offline_check.py _build/html``. Links a reader may click (``<a href>``)
are fine; anything the browser fetches by itself to render the page must be local, and
every local script and stylesheet must exist in the build.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*['"]?((?:https?:)?//[^'")\s]+)""", re.IGNORECASE)
# Attributes the browser fetches on its own, by tag.
FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src",
           "link": "href"}
LINK_RELS_FETCHED = {"stylesheet", "preload", "modulepreload", "icon", "prefetch", "manifest"}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        attr = FETCHED.get(tag)
        if attr is None or not a.get(attr):
            return
        if tag == "link" and not set((a.get("rel") or "").lower().split()) & LINK_RELS_FETCHED:
            return
        self.refs.append((tag, a[attr]))


def problems(html_dir: Path) -> list[str]:
    """Every network dependency and missing local asset under ``html_dir``."""
    found = []
    for page in sorted(html_dir.rglob("*.html")):
        if page.relative_to(html_dir).parts[0] == "_static":
            continue  # theme template fragments, not pages
        text = page.read_text(encoding="utf-8", errors="replace")
        parser = _Refs()
        parser.feed(text)
        for tag, ref in parser.refs:
            if REMOTE.match(ref):
                found.append(f"{page.relative_to(html_dir)}: <{tag}> loads {ref}")
            elif tag in ("script", "link") and not ref.startswith("data:"):
                local = (page.parent / ref.split("?")[0].split("#")[0]).resolve()
                if not local.exists():
                    found.append(f"{page.relative_to(html_dir)}: <{tag}> file missing: {ref}")
        found += [f"{page.relative_to(html_dir)}: inline CSS loads {u}" for u in CSS_URL.findall(text)]
    for css in sorted(html_dir.rglob("*.css")):
        found += [f"{css.relative_to(html_dir)}: loads {u}"
                  for u in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace"))]
    return found


def main(argv: list[str]) -> int:
    html_dir = Path(argv[0] if argv else "_build/html")
    if not (html_dir / "index.html").exists():
        print(f"offline check: no built book at {html_dir}", file=sys.stderr)
        return 2
    found = problems(html_dir)
    for line in found:
        print("offline check:", line, file=sys.stderr)
    pages = len([p for p in html_dir.rglob("*.html") if p.relative_to(html_dir).parts[0] != "_static"])
    print(f"offline check: {pages} pages, {len(found)} network dependencies or missing assets")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
