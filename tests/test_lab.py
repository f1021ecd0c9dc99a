"""The JupyterLab reading copies (tools/lab_notebooks.py): glued numbers filled in as myst-nb does."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lab_notebooks  # noqa: E402


def test_fill_formats_like_myst_nb_and_keeps_unknown_keys():
    own = {"ratio": "'1.17'", "count": "42", "x": "0.123456"}
    others = {"training.ipynb": {"acc": "'95.4%'"}}
    text = ("a {glue:text}`ratio` b {glue:text}`count` c {glue:text}`x:.2f` "
            "d {glue:text}`training.ipynb::acc:s` e {glue:text}`missing`")
    assert lab_notebooks.fill(text, own, others) == "a 1.17 b 42 c 0.12 d 95.4% e {glue:text}`missing`"


def test_copies_have_no_glue_role_left_and_keep_code_and_outputs(tmp_path):
    written = lab_notebooks.write_copies(tmp_path / "lab")
    assert {p.name for p in written} == {p.name for p in (ROOT / "book").glob("*.ipynb")}
    for path in written:
        copy = json.loads(path.read_text())
        original = json.loads((ROOT / "book" / path.name).read_text())
        markdown = "".join("".join(c["source"]) for c in copy["cells"] if c["cell_type"] == "markdown")
        assert "{glue:text}" not in markdown, path.name
        assert [c.get("outputs") for c in copy["cells"]] == [c.get("outputs") for c in original["cells"]]
    assert (tmp_path / "lab" / "data" / "gpu_h100.json").exists()
