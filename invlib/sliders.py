"""One slider helper for every interactive figure in the book.

``slider(plot, width=[...], depth=[...])`` turns a plotting function of one or two
parameters into an object that Jupyter displays two ways at once:

* a live ``ipywidgets`` control (one selection slider per parameter, the figure redrawn on
  every move) for front ends with a running kernel (JupyterLab, Notebook, VS Code), and
* a kernel-free player for the static HTML book: every combination of parameter values
  pre-rendered as a PNG, and one labelled range input per parameter that picks the frame
  (a few lines of JavaScript, no network, no kernel).

Both live in one MIME bundle; each front end picks what it can render (the book's
``_config.yml`` ranks the HTML player above the widget view). Both open on the same frame,
``start``: by default the last value of every parameter, so a list written from small to large
opens at the deep or large end, which is also what a printed page shows.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import uuid
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure

PlotFn = Callable[..., None]

# The book's text column is about 704 CSS pixels wide: a frame wider than this is scaled down,
# and its lettering with it.
COLUMN_PX = 704


def _title(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items())


class Slider:
    """A plot of ``plot(fig, **values)`` for every combination of the given parameter values.

    ``plot`` receives a cleared :class:`matplotlib.figure.Figure` and keyword arguments
    named after the parameters; the helper writes the current values into the figure's
    suptitle so each frame says which parameters it shows. ``start`` names the values shown
    first (default: the last value of each parameter); ``alt`` describes the figure for readers
    who cannot see it (the current values are appended to it in the player).
    """

    def __init__(self, plot: PlotFn, params: dict[str, Sequence[Any]],
                 figsize: tuple[float, float] = (7.0, 3.6), dpi: int = 100,
                 start: dict[str, Any] | None = None, alt: str = ""):
        if not 1 <= len(params) <= 2:
            raise ValueError(f"slider takes one or two parameters, got {list(params)}")
        for name, values in params.items():
            if len(values) == 0:
                raise ValueError(f"parameter {name!r} needs at least one value, got an empty list")
        if figsize[0] * dpi > COLUMN_PX:
            raise ValueError(f"a frame {figsize[0]} in wide at {dpi} dpi is {figsize[0] * dpi:.0f} px, "
                             f"wider than the book's {COLUMN_PX} px column; narrow the figure")
        self.plot, self.params = plot, {k: list(v) for k, v in params.items()}
        self.figsize, self.dpi, self.alt = figsize, dpi, alt
        start = dict(start or {})
        unknown = set(start) - set(self.params)
        if unknown:
            raise ValueError(f"start names {sorted(unknown)}, not parameters of this slider")
        for name, value in start.items():
            if value not in self.params[name]:
                raise ValueError(f"start value {value!r} is not among {name}'s values {self.params[name]}")
        self.start = {name: start.get(name, values[-1]) for name, values in self.params.items()}

    def frames(self) -> list[dict[str, Any]]:
        """Every combination of parameter values, the last parameter varying fastest."""
        names = list(self.params)
        return [dict(zip(names, combo)) for combo in itertools.product(*self.params.values())]

    def draw(self, fig: Figure, **values: Any) -> Figure:
        fig.clear()
        self.plot(fig, **values)
        fig.suptitle(_title(values), fontsize=10)
        return fig

    def _png(self, values: dict[str, Any]) -> str:
        fig = self.draw(Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained"), **values)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def to_html(self) -> str:
        """Self-contained player: base64 PNG frames, one labelled range input per parameter."""
        frames = self.frames()
        names = list(self.params)
        pid = "invlib-player-" + uuid.uuid4().hex[:12]
        first = frames.index(self.start)
        alt = html.escape(f"{self.alt} ({_title(self.start)})" if self.alt else _title(self.start))
        controls = []
        for k, name in enumerate(names):
            values = self.params[name]
            at = values.index(self.start[name])
            controls.append(
                f'<label class="invlib-control">{html.escape(name)} '
                f'<input type="range" min="0" max="{len(values) - 1}" step="1" value="{at}" '
                f'data-param="{k}" aria-label="{html.escape(name)}"> '
                f'<output>{html.escape(str(values[at]))}</output></label>')
        data = {"frames": ["data:image/png;base64," + self._png(v) for v in frames],
                "values": [[str(v) for v in self.params[n]] for n in names],
                "names": names, "alt": self.alt}
        script = (
            "(function(){var d=" + json.dumps(data) + ";"
            "var root=document.getElementById('" + pid + "');"
            "var inputs=root.querySelectorAll('input[type=range]');var img=root.querySelector('img');"
            "function show(){var i=0,t=[];for(var k=0;k<inputs.length;k++){var v=+inputs[k].value;"
            "i=i*d.values[k].length+v;inputs[k].nextElementSibling.textContent=d.values[k][v];"
            "t.push(d.names[k]+' = '+d.values[k][v]);}img.src=d.frames[i];"
            "img.alt=d.alt?d.alt+' ('+t.join(', ')+')':t.join(', ');}"
            "for(var k=0;k<inputs.length;k++){inputs[k].addEventListener('input',show);}})();")
        return (f'<div class="invlib-player" id="{pid}">'
                f'<div class="invlib-controls">{"".join(controls)}</div>'
                f'<img src="{data["frames"][first]}" alt="{alt}" style="max-width:100%">'
                f"<script>{script}</script></div>")

    def widget(self):
        """Live control: one ``SelectionSlider`` per parameter driving a redraw in an Output."""
        import ipywidgets as widgets
        from IPython.display import display

        controls = {name: widgets.SelectionSlider(options=values, value=self.start[name],
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
        bundle = {"text/plain": repr(self), "text/html": self.to_html()}
        widget_bundle = self.widget()._repr_mimebundle_()
        if widget_bundle:
            bundle.update({k: v for k, v in widget_bundle.items() if k != "text/plain"})
        return bundle


def slider(plot: PlotFn, *, figsize: tuple[float, float] = (7.0, 3.6), dpi: int = 100,
           start: dict[str, Any] | None = None, alt: str = "", **params: Sequence[Any]) -> Slider:
    """Display ``plot(fig, **values)`` with a slider per parameter (one or two parameters).

    Example: ``slider(draw, width=[64, 256], depth=[4, 16, 64])`` shows six frames in the
    static book and two sliders in a live notebook, both opening at width 256, depth 64 (the
    last values; ``start=dict(depth=16)`` picks another). Keep the product of the value lists
    small (a dozen or two frames): the static player embeds one PNG per combination. A frame
    must fit the book's column (``figsize[0] * dpi`` at most ``COLUMN_PX`` pixels).
    """
    return Slider(plot, params, figsize=figsize, dpi=dpi, start=start, alt=alt)
