"""The slider helper: frames, the self-contained player, and the live widget bundle."""

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
    html = s.to_jshtml()
    assert "http://" not in html and "https://" not in html
    assert "<i class=\"fa" not in html           # icon font replaced by glyphs
    assert len(re.findall(r"data:image/png;base64", html)) == 2
    fig = s.draw(__import__("matplotlib.figure").figure.Figure(), width=16)
    assert fig._suptitle.get_text() == "width = 16"


def test_bundle_offers_player_and_live_widget():
    bundle = slider(draw, width=[8, 16], depth=[1, 2])._repr_mimebundle_()
    assert bundle["text/plain"] == "Slider(width=[8, 16], depth=[1, 2]; 4 frames)"
    assert "anim-slider" in bundle["text/html"]
    assert "model_id" in bundle[WIDGET]


def test_widget_has_one_slider_per_parameter():
    box = Slider(draw, {"width": [8, 16], "depth": [1, 2]}).widget()
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["width", "depth"]
    assert list(sliders[1].options) == [1, 2]


@pytest.mark.parametrize("params, match", [({}, "one or two parameters"),
                                           ({"a": [1], "b": [1], "c": [1]}, "one or two"),
                                           ({"a": []}, "at least one value")])
def test_errors(params, match):
    with pytest.raises(ValueError, match=match):
        slider(draw, **params)
