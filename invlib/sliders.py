"""One slider helper for every interactive figure in the book.

``slider(plot, width=[...], depth=[...])`` turns a plotting function of one or two
parameters into an object that Jupyter displays two ways at once:

* a live ``ipywidgets`` control (one selection slider per parameter, the figure redrawn on
  every move) for front ends with a running kernel (JupyterLab, Notebook, VS Code), and
* a kernel-free frame player (``matplotlib`` ``FuncAnimation.to_jshtml``: every
  combination of parameter values pre-rendered, with play/step buttons) for the static
  HTML book, where no kernel answers the widget's callbacks.

Both live in one MIME bundle; each front end picks what it can render (the book's
``_config.yml`` ranks the HTML player above the widget view).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Callable, Sequence

from matplotlib.animation import FuncAnimation
from matplotlib.figure import Figure

PlotFn = Callable[..., None]

# matplotlib's player draws its buttons with Font Awesome 4 icons fetched from a CDN; plain
# Unicode glyphs keep the page self-contained (the buttons keep their titles as tooltips).
_ICON = re.compile(r'<i class="fa fa-([a-z-]+)( fa-flip-horizontal)?"></i>')
_GLYPHS = {"minus": "\u2212", "plus": "+", "fast-backward": "|\u25c0", "step-backward": "\u25c0",
           "pause": "\u275a\u275a", "play": "\u25b7", "step-forward": "\u25b6",
           "fast-forward": "\u25b6|"}
_CDN_LINK = re.compile(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">')


def _offline(html: str) -> str:
    def glyph(m: re.Match) -> str:
        return "\u25c1" if m.group(2) else _GLYPHS.get(m.group(1), m.group(1))
    return _ICON.sub(glyph, _CDN_LINK.sub("", html))


def _title(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items())


class Slider:
    """A plot of ``plot(fig, **values)`` for every combination of the given parameter values.

    ``plot`` receives a cleared :class:`matplotlib.figure.Figure` and keyword arguments
    named after the parameters; the helper writes the current values into the figure's
    suptitle so each frame says which parameters it shows.
    """

    def __init__(self, plot: PlotFn, params: dict[str, Sequence[Any]],
                 figsize: tuple[float, float] = (7.0, 3.6), dpi: int = 90,
                 interval_ms: int = 700):
        if not 1 <= len(params) <= 2:
            raise ValueError(f"slider takes one or two parameters, got {list(params)}")
        for name, values in params.items():
            if len(values) == 0:
                raise ValueError(f"parameter {name!r} needs at least one value, got an empty list")
        self.plot, self.params = plot, {k: list(v) for k, v in params.items()}
        self.figsize, self.dpi, self.interval_ms = figsize, dpi, interval_ms

    def frames(self) -> list[dict[str, Any]]:
        """Every combination of parameter values, the last parameter varying fastest."""
        names = list(self.params)
        return [dict(zip(names, combo)) for combo in itertools.product(*self.params.values())]

    def draw(self, fig: Figure, **values: Any) -> Figure:
        fig.clear()
        self.plot(fig, **values)
        fig.suptitle(_title(values), fontsize=10)
        return fig

    def to_jshtml(self) -> str:
        """Self-contained HTML frame player (base64 PNG frames + a little JavaScript)."""
        fig = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        frames = self.frames()
        anim = FuncAnimation(fig, lambda i: self.draw(fig, **frames[i]), frames=len(frames),
                             interval=self.interval_ms, repeat=False)
        return _offline(anim.to_jshtml(default_mode="once"))

    def widget(self):
        """Live control: one ``SelectionSlider`` per parameter driving a redraw in an Output."""
        import ipywidgets as widgets
        from IPython.display import display

        controls = {name: widgets.SelectionSlider(options=values, value=values[0],
                                                  description=name, continuous_update=False)
                    for name, values in self.params.items()}

        def redraw(**values):
            display(self.draw(Figure(figsize=self.figsize, dpi=self.dpi,
                                     layout="constrained"), **values))

        out = widgets.interactive_output(redraw, controls)
        return widgets.VBox([widgets.HBox(list(controls.values())), out])

    def __repr__(self) -> str:
        spans = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"Slider({spans}; {len(self.frames())} frames)"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle = {"text/plain": repr(self), "text/html": self.to_jshtml()}
        widget_bundle = self.widget()._repr_mimebundle_()
        if widget_bundle:
            bundle.update({k: v for k, v in widget_bundle.items() if k != "text/plain"})
        return bundle


def slider(plot: PlotFn, *, figsize: tuple[float, float] = (7.0, 3.6), dpi: int = 90,
           **params: Sequence[Any]) -> Slider:
    """Display ``plot(fig, **values)`` with a slider per parameter (one or two parameters).

    Example: ``slider(draw, width=[64, 256], depth=[4, 16, 64])`` shows six frames in the
    static book and two sliders in a live notebook. Keep the product of the value lists
    small (a dozen or two frames): the static player embeds one PNG per combination.
    """
    return Slider(plot, params, figsize=figsize, dpi=dpi)
