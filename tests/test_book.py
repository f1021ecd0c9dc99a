"""The book's structure: sources and executed notebooks agree, outputs are stored, the
table of contents names only real chapters, and the built pages need no network."""

import json
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import offline_check  # noqa: E402

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for c in toc["chapters"]]


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
    page = (html / "book" / "algorithm.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in page
    assert "_static/html-manager/embed-amd.js" in page
    assert "anim-slider" in page            # the kernel-free slider player
