"""The slider helper: frames, the self-contained player, and the live widget bundle."""

import json
import re

import pytest

from invlib import slider
from invlib.sliders import Slider

WIDGET = "application/vnd.jupyter.widget-view+json"


def draw(fig, width, depth=1):
    ax = fig.add_subplot()
    ax.plot([0, depth], [0, width])
    ax.set_xlabel("depth")


def test_frames_cover_every_combination_last_parameter_fastest():
    s = slider(draw, width=[8, 16], depth=[1, 2, 3])
    assert s.frames() == [{"width": w, "depth": d} for w in (8, 16) for d in (1, 2, 3)]


def test_player_is_self_contained_and_titles_each_frame():
    s = slider(draw, width=[8, 16])
    html = s.to_html()
    assert "http://" not in html and "https://" not in html
    # two frames in the player's data, plus the opening frame in the <img>
    assert len(re.findall(r"data:image/png;base64", html)) == 3
    fig = s.draw(__import__("matplotlib.figure").figure.Figure(), width=16)
    assert fig._suptitle.get_text() == "width = 16"


def test_bundle_offers_player_and_live_widget():
    bundle = slider(draw, width=[8, 16], depth=[1, 2])._repr_mimebundle_()
    assert bundle["text/plain"] == "Slider(width=[8, 16], depth=[1, 2]; 4 frames)"
    assert "invlib-player" in bundle["text/html"]
    assert "model_id" in bundle[WIDGET]


def test_widget_has_one_slider_per_parameter():
    box = Slider(draw, {"width": [8, 16], "depth": [1, 2]}).widget()
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["width", "depth"]
    assert list(sliders[1].options) == [1, 2]


def test_player_has_one_labelled_range_per_parameter_opening_at_the_last_values():
    html = slider(draw, width=[8, 16], depth=[1, 2, 3], alt="a line").to_html()
    ranges = re.findall(r'<label class="invlib-control">(\w+) <input type="range" min="0" max="(\d)" '
                        r'step="1" value="(\d)"', html)
    assert ranges == [("width", "1", "1"), ("depth", "2", "2")]
    assert 'alt="a line (width = 16, depth = 3)"' in html
    frames = json.loads(re.search(r"var d=(\{.*?\});var root", html).group(1))["frames"]
    opening = re.search(r'<img src="([^"]+)"', html).group(1)
    assert opening == frames[-1] and len(frames) == 6


def test_start_picks_the_opening_frame_in_player_and_widget():
    s = slider(draw, width=[8, 16], depth=[1, 2, 3], start=dict(depth=2))
    assert s.start == {"width": 16, "depth": 2}
    html = s.to_html()
    frames = json.loads(re.search(r"var d=(\{.*?\});var root", html).group(1))["frames"]
    assert re.search(r'<img src="([^"]+)"', html).group(1) == frames[s.frames().index(s.start)]
    assert [c.value for c in s.widget().children[0].children] == [16, 2]


def test_frame_wider_than_the_column_is_refused():
    with pytest.raises(ValueError, match="wider than the book's 704 px column"):
        slider(draw, width=[8], figsize=(9.0, 3.0), dpi=90)


@pytest.mark.parametrize("params, match", [({}, "one or two parameters"),
                                           ({"a": [1], "b": [1], "c": [1]}, "one or two"),
                                           ({"a": []}, "at least one value"),
                                           ({"a": [1], "start": {"b": 1}}, "not parameters"),
                                           ({"a": [1], "start": {"a": 2}}, "not among")])
def test_errors(params, match):
    with pytest.raises(ValueError, match=match):
        slider(draw, **params)


# ---- invlib.figures: the picture of the algorithm and the code excerpts the chapters show

from matplotlib.figure import Figure  # noqa: E402

from invlib import figures  # noqa: E402
from invlib._reverse_step import ReverseStep  # noqa: E402


@pytest.mark.parametrize("depth", [1, 4, 9])
def test_inversion_stores_one_activation_and_the_cache_empties(depth):
    cache = [len(figures.stored_activations("cache", depth, s)) for s in range(depth + 1)]
    inversion = [figures.stored_activations("inversion", depth, s) for s in range(depth + 1)]
    assert cache == [depth + 1] + list(range(depth - 1, -1, -1))
    assert inversion == [[depth - s] for s in range(depth + 1)]


def test_sweep_figure_titles_count_what_is_stored():
    fig = figures.draw_sweeps(Figure(), depth=4, step=1)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["backprop with a cache: 3 activations stored",
                      "backprop by inversion: 1 activation stored"]


def test_source_excerpt_is_the_live_source_between_markers():
    text = figures.source_excerpt(ReverseStep.backward, "# ---- hand x", None)
    assert text.startswith("# ---- hand x") and "return" in text.splitlines()[-1]
    with pytest.raises(ValueError, match="start marker"):
        figures.source_excerpt(ReverseStep.backward, "no such line")
    with pytest.raises(ValueError, match="end marker"):
        figures.source_excerpt(ReverseStep.backward, "# ---- hand x", "no such line")
    with pytest.raises(ValueError, match="step must be between"):
        figures.stored_activations("cache", 3, 4)
