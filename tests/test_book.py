"""The book's structure: sources and executed notebooks agree, outputs are stored, the
table of contents names only real chapters, and the built pages need no network."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import link_check  # noqa: E402
import offline_check  # noqa: E402

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]) for c in part["chapters"]]
    return [toc["root"]] + [c["file"] for c in chapters]


def test_every_toc_entry_exists_and_every_notebook_is_listed():
    files = toc_files()
    for f in files:
        assert (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists(), f
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in files, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_source_and_has_outputs(nb_path):
    src = ROOT / "book" / "src" / f"{nb_path.stem}.md"
    assert src.exists(), f"{nb_path.name} has no text source {src.relative_to(ROOT)}"
    stored = json.loads(nb_path.read_text())
    text = jupytext.read(src)
    code_src = [c.source for c in text.cells if c.cell_type == "code"]
    code_nb = ["".join(c["source"]) for c in stored["cells"] if c["cell_type"] == "code"]
    assert code_nb == code_src, "re-run `python3 tasks.py execute` after editing the source"
    tags_src = [sorted(c.metadata.get("tags", [])) for c in text.cells]
    tags_nb = [sorted(c.get("metadata", {}).get("tags", [])) for c in stored["cells"]]
    assert tags_nb == tags_src, "cell tags differ: run `python tools/sync_markdown.py NAME` (or execute)"
    mystnb_src = [dict(c.metadata.get("mystnb", {})) for c in text.cells]
    mystnb_nb = [dict(c.get("metadata", {}).get("mystnb", {})) for c in stored["cells"]]
    assert mystnb_nb == mystnb_src, "figure options differ: run `python tools/sync_markdown.py NAME`"
    assert any("hide-input" in t for t in tags_src), "no plumbing cell is folded (tag it hide-input)"
    unexecuted = [i for i, c in enumerate(stored["cells"])
                  if c["cell_type"] == "code" and c["execution_count"] is None]
    assert not unexecuted, f"cells {unexecuted} were never executed"
    assert any(c.get("outputs") for c in stored["cells"] if c["cell_type"] == "code")


def test_offline_check_flags_remote_assets(tmp_path):
    (tmp_path / "index.html").write_text(
        '<html><head><script src="https://cdn.example/x.js"></script>'
        '<link rel="stylesheet" href="//cdn.example/y.css">'
        '<link rel="canonical" href="https://example.org/page">'
        '<script src="local.js"></script></head>'
        '<body><a href="https://example.org">a link is fine</a>'
        '<style>@font-face { src: url("https://fonts.example/f.woff2"); }</style></body></html>')
    found = offline_check.problems(tmp_path)
    assert any("x.js" in f for f in found)
    assert any("y.css" in f for f in found)
    assert any("f.woff2" in f for f in found)
    assert any("file missing: local.js" in f for f in found)
    assert not any("example.org" in f for f in found)


def test_link_check_flags_broken_anchors_files_and_malformed_urls(tmp_path):
    (tmp_path / "a.html").write_text(
        '<h1 id="top">A</h1><a href="#top">ok</a><a href="#gone">x</a><a href="b.html#sec">ok</a>'
        '<a href="b.html#nope">x</a><a href="c.html">x</a><a href="https://arxiv.org/abs/1707.04585">ok</a>'
        '<a href="https://localhost/x">x</a><a href="ftp://example.org">x</a><a href="mailto:a@b.org">ok</a>')
    (tmp_path / "b.html").write_text('<section id="sec"></section>')
    found = link_check.problems(tmp_path)
    assert len(found) == 5, found
    assert any("#gone" in f for f in found) and any("#nope" in f for f in found)
    assert any("c.html: no such file" in f for f in found)
    assert any("localhost" in f for f in found) and any("ftp:" in f for f in found)


def test_built_book_renders_offline(tmp_path):
    """Build the book from the committed outputs (no execution) and scan every page."""
    subprocess.run([sys.executable, str(ROOT / "tools" / "vendor_assets.py")], check=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    cfg = tmp_path / "_config.yml"
    cfg.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jb), "build", str(ROOT), "--config", str(cfg), "--path-output",
                    str(tmp_path), "-W", "-n", "--keep-going", "-q"], check=True, cwd=ROOT)
    html = tmp_path / "_build" / "html"
    assert offline_check.problems(html) == []
    assert link_check.problems(html) == []
    page = (html / "book" / "algorithm.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in page
    assert "_static/html-manager/embed-amd.js" in page
    assert "invlib-player" in page          # the kernel-free slider player


# ---- figures: numbered and captioned, readable at the column's width, sliders at an informative end

def _figure_outputs(cell):
    """('png', bytes) or ('player', html) for every figure a code cell displays."""
    import base64
    found = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        html = data.get("text/html", "")
        html = "".join(html) if isinstance(html, list) else html
        if "image/png" in data:
            found.append(("png", base64.b64decode(data["image/png"])))
        elif "invlib-player" in html or "anim-slider" in html:
            found.append(("player", html))
    return found


def _png_width(png: bytes) -> int:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_is_numbered_captioned_described_and_fits_the_column(nb_path):
    import base64
    import re

    from invlib.sliders import COLUMN_PX
    cells = json.loads(nb_path.read_text())["cells"]
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        figures = _figure_outputs(cell)
        if not figures:
            continue
        where = f"{nb_path.stem}, code cell {i}: {cell['source'][:60]!r}"
        assert len(figures) == 1, f"{where} shows {len(figures)} figures; one per cell, so each gets its caption"
        options = cell.get("metadata", {}).get("mystnb", {})
        figure = options.get("figure", {})
        assert figure.get("caption") and figure.get("name"), f"{where}: no mystnb figure caption and name"
        kind, payload = figures[0]
        if kind == "png":
            assert options.get("image", {}).get("alt"), f"{where}: no mystnb image alt text"
            widths = [_png_width(payload)]
        else:
            assert "invlib-player" in payload, f"{where}: an old frame player; re-execute the chapter"
            state = json.loads(re.search(r"var d=(\{.*?\});var root", payload).group(1))
            assert state["alt"], f"{where}: the slider has no alt text (slider(..., alt=...))"
            widths = [_png_width(base64.b64decode(f.split(",", 1)[1])) for f in state["frames"]]
        assert max(widths) <= COLUMN_PX, f"{where}: {max(widths)} px wide, over the {COLUMN_PX} px column"


SMALL_TYPE = re.compile(r"fontsize\s*=\s*(?:(\d+(?:\.\d+)?)\b|[\"'](x{1,2}-small)[\"'])")


def test_no_lettering_below_8_points():
    sources = sorted((ROOT / "book" / "src").glob("*.md")) + sorted((ROOT / "invlib").rglob("*.py"))
    small = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources
             for m in SMALL_TYPE.finditer(p.read_text()) if m.group(2) or float(m.group(1)) < 8]
    assert not small, small


# ---- links a reader can follow: chapter mentions and glossary terms

GLOSSARY = ROOT / "book" / "glossary.md"
CHAPTER_SOURCES = sorted((ROOT / "book" / "src").glob("*.md"))


def _reader_text(path: Path) -> str:
    """A chapter's Markdown prose without code, math, inline code or headings."""
    text = "\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "markdown")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    text = re.sub(r"\$[^$\n]+\$", "", text)
    # roles and inline code: keep {term} roles, drop every other role's target and all inline code
    text = re.sub(r"(\{[\w:-]+\})?`[^`]*`", lambda m: m.group(0) if m.group(1) == "{term}" else " ", text)
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", " ", text)            # a link's text is a link already
    return "\n".join(line for line in text.split("\n") if not line.startswith("#"))


def _titles() -> dict[str, str]:
    return {p.stem: next(line[2:].strip() for line in p.read_text().splitlines() if line.startswith("# "))
            for p in CHAPTER_SOURCES}


def _terms() -> list[str]:
    body = GLOSSARY.read_text().split("```{glossary}")[1]
    return re.findall(r"^([A-Za-z][^\n]*)$", body, re.M)


def test_glossary_lists_terms():
    assert {"cotangent", "scratch", "checkpointing"} <= set(_terms())


@pytest.mark.parametrize("src", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_chapter_mentions_are_links(src):
    text = _reader_text(src)
    names = "|".join(re.escape(stem.replace("_", " ")) for stem in _titles()) + "|post's sizes|numerical stability"
    unlinked = [m.group(0) for title in _titles().values()
                for m in re.finditer(r'(?<!\[)[*"]' + re.escape(title) + r'[*"]', text)]
    unlinked += [m.group(0) for m in re.finditer(rf"\bthe ({names}) chapter\b(?! \({{doc}})", text, re.I)]
    assert not unlinked, f"write these as {{doc}}`name` links: {unlinked}"


@pytest.mark.parametrize("src", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_glossary_terms_are_linked_where_first_used(src):
    text = _reader_text(src)
    unlinked = []
    for term in _terms():
        first = re.search(r"\{term\}`([^`<]*<)?" + re.escape(term) + r">?`|(?<![\w-])" + re.escape(term)
                          + r"(?![\w-])", text, re.I)
        if first and not first.group(0).startswith("{term}"):
            unlinked.append(f"{term!r} near {text[max(0, first.start() - 40):first.end() + 20]!r}")
    assert not unlinked, "link the first use with {term}`...`: " + "; ".join(unlinked)


@pytest.mark.parametrize("src", [p for p in CHAPTER_SOURCES if p.stem != "intro"], ids=lambda p: p.stem)
def test_chapter_opens_with_its_findings(src):
    """The first thing after the title is a box of 2-4 findings, their numbers glued from cells."""
    cells = jupytext.read(src).cells
    first = next(c.source for c in cells if c.cell_type == "markdown")
    body = first.split("\n", 1)[1] if first.startswith("# ") else first
    box = re.match(r"\s*:::\{admonition\} Findings\n:class: findings\n(.*?)\n:::", body, re.S)
    assert box, "open the chapter with a ':::{admonition} Findings' box (class findings) right after the title"
    items = re.findall(r"^[-*] ", box.group(1), re.M)
    assert 2 <= len(items) <= 4, f"{len(items)} findings; give 2 to 4"
    glued = re.findall(r"\{glue:text\}`([^`:]+)", box.group(1))
    assert glued, "the findings quote no number glued from a cell"
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    for key in glued:
        assert re.search(rf"""glue\(\s*(f?["']){re.escape(key)}\1|glue\(f["']""", code), f"{key} is not glued here"


def test_readme_quickstart_is_the_intros_first_cell():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n.*?```python\n(.*?)\n```", readme, re.S).group(1)
    first = next(c.source for c in jupytext.read(ROOT / "book" / "src" / "intro.md").cells if c.cell_type == "code")
    assert block == first
    assert len(block.splitlines()) <= 15


def test_every_test_the_limitations_page_names_exists():
    text = (ROOT / "book" / "src" / "limitations.md").read_text()
    named = re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text)
    assert len(named) >= 10
    missing = [f"{f}::{t}" for f, t in named
               if not re.search(rf"^def {t}\(", (ROOT / "tests" / f).read_text(), re.M)]
    assert not missing, missing
