"""invlib.tables.Table: Markdown for the book, aligned text elsewhere, same cells in both."""

import pytest

from invlib.tables import Table


def _table():
    return Table(["network", "batch", "ratio"], [["dense | w64", 1, 2.345], ["conv2d", 16, 0.5]],
                 formats=[None, "d", ".2f"], caption="ratios are invlib / plain")


def test_markdown_is_a_table_with_numbers_right_aligned_and_pipes_escaped():
    md = _table()._repr_markdown_().splitlines()
    assert md[0] == "| network | batch | ratio |"
    assert md[1] == "|:---|---:|---:|"
    assert md[2] == "| dense \\| w64 | 1 | 2.35 |"
    assert md[3] == "| conv2d | 16 | 0.50 |"
    assert md[-1] == "ratios are invlib / plain"


def test_text_is_aligned_in_columns():
    lines = str(_table()).splitlines()
    assert lines[0] == "network      batch  ratio"
    assert lines[1] == "dense | w64      1   2.35"
    assert lines[2] == "conv2d          16   0.50"
    assert repr(_table()) == str(_table())


def test_placeholder_strings_keep_a_column_numeric():
    t = Table(["depth", "measured"], [[8, 0.99], [16, "-"]], formats=["d", ".2f"])
    assert t._repr_markdown_().splitlines()[1] == "|---:|---:|"
    assert str(t).splitlines()[2] == "   16         -"


@pytest.mark.parametrize("rows, formats, match", [
    ([[1, 2, 3]], None, "every row needs 2 values"),
    ([[1, 2]], ["d"], "formats needs 2 entries"),
])
def test_bad_shapes_are_refused(rows, formats, match):
    with pytest.raises(ValueError, match=match):
        Table(["a", "b"], rows, formats=formats)


def test_byte_size_picks_a_unit_per_value():
    from invlib.tables import byte_size
    assert byte_size(8) == "8 B"
    assert byte_size(256) == "256 B"
    assert byte_size(1536) == "1.5 KiB"
    assert byte_size(133 * 1024) == "133 KiB"
    assert byte_size(3 * 2**20 + 2**19) == "3.5 MiB"
    assert byte_size(2**30) == "1 GiB"
    assert byte_size(-2048) == "-2 KiB"
    assert byte_size(12401 * 1024) == "12.1 MiB"
