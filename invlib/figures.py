"""Figures and code excerpts that the book's chapters share.

* :func:`draw_sweeps`: one picture of the algorithm, backprop with a cache next to backprop by
  inversion, at one step of the backward sweep (a slider over ``step`` animates it);
* :func:`source_excerpt`: the lines of a function's *current* source between two markers, so a
  chapter shows the code that runs rather than a copy of it.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["stored_activations", "draw_sweeps", "source_excerpt"]

_KEPT, _GONE, _BAR = "#4c72b0", "#c8c8c8", "#dd8452"


def stored_activations(method: str, depth: int, step: int) -> list[int]:
    """Indices ``k`` of the activations ``x_k`` held after ``step`` steps of the backward sweep.

    A network of ``depth`` layers maps ``x_0`` to ``x_depth``; step ``s`` of the sweep undoes
    layer ``depth - s + 1`` and leaves the cotangent at ``c = depth - step``.

    * ``"cache"`` (plain backprop): before the sweep, every layer input ``x_0 .. x_{depth-1}``
      and the output; after step ``s``, the inputs not yet used, ``x_0 .. x_{c-1}``.
    * ``"inversion"``: only ``x_c``, the output at first and then each rebuilt input.
    """
    if method not in ("cache", "inversion"):
        raise ValueError(f"method must be 'cache' or 'inversion', got {method!r}")
    if not 0 <= step <= depth:
        raise ValueError(f"step must be between 0 and depth={depth}, got {step}")
    c = depth - step
    if method == "inversion":
        return [c]
    return list(range(depth + 1)) if step == 0 else list(range(c))


def _row(ax: Any, method: str, depth: int, step: int) -> None:
    c = depth - step
    kept = set(stored_activations(method, depth, step))
    for k in range(depth + 1):
        alive = k in kept
        ax.add_patch(FancyBboxPatch((k - 0.3, 0.75), 0.6, 0.5, boxstyle="round,pad=0.02",
                                    fc=_KEPT if alive else "white", ec=_KEPT if alive else _GONE,
                                    ls="-" if alive else "--", lw=1.2))
        ax.text(k, 1.0, f"$x_{k}$", ha="center", va="center", fontsize=10,
                color="white" if alive else _GONE)
        if k > 0:
            ax.annotate("", (k - 0.32, 1.0), (k - 0.68, 1.0),
                        arrowprops=dict(arrowstyle="->", color="0.5", lw=1))
            ax.text(k - 0.5, 1.12, f"$f_{k}$", ha="center", fontsize=8, color="0.4")
    # the cotangent, carried from the output back to the input
    ax.add_patch(FancyBboxPatch((c - 0.3, -0.25), 0.6, 0.5, boxstyle="round,pad=0.02", fc=_BAR, ec=_BAR))
    ax.text(c, 0.0, rf"$\bar x_{c}$", ha="center", va="center", fontsize=10, color="white")
    if step > 0:
        ax.add_patch(FancyArrowPatch((c + 0.7, 0.0), (c + 0.32, 0.0), arrowstyle="->", color=_BAR, lw=1.5,
                                     mutation_scale=10))
        ax.text(c + 0.5, -0.42, rf"$J_{c + 1}^\top$", ha="center", fontsize=8, color=_BAR)
        if method == "inversion":
            ax.add_patch(FancyArrowPatch((c + 1, 0.72), (c, 0.72), connectionstyle="arc3,rad=-0.5",
                                         arrowstyle="->", color=_KEPT, lw=1.5, mutation_scale=10))
            ax.text(c + 0.5, 0.42, rf"$f_{c + 1}^{{-1}}$", ha="center", fontsize=8, color=_KEPT)
    what = "backprop with a cache" if method == "cache" else "backprop by inversion"
    ax.set_title(f"{what}: {len(kept)} activation{'s' if len(kept) != 1 else ''} stored", fontsize=9,
                 loc="left")
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(-0.6, 1.45)
    ax.set_yticks([0.0, 1.0], ["cotangent", "activations"], fontsize=8)
    ax.set_xticks(range(depth + 1), [f"{k}" for k in range(depth + 1)], fontsize=8)
    ax.set_xlabel("layer index k", fontsize=8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def draw_sweeps(fig: Figure, depth: int = 4, step: int = 0) -> Figure:
    """Draw both backward sweeps of a ``depth``-layer network after ``step`` steps.

    Top: plain backprop, whose cache holds every layer input until the sweep reaches it. Bottom:
    backprop by inversion, which holds one activation: the output, then each input rebuilt by
    ``f_k^{-1}`` from the one above it, while the cotangent ``x_bar`` moves down by ``J_k^T``.
    Filled boxes are stored, dashed ones are not. ``step = 0`` is the end of the forward pass.
    """
    top, bottom = fig.subplots(2, 1)
    _row(top, "cache", depth, step)
    _row(bottom, "inversion", depth, step)
    return fig


def source_excerpt(obj: Any, start: str, end: str | None = None) -> str:
    """The lines of ``inspect.getsource(obj)`` from the first containing ``start`` up to, not
    including, the first after it containing ``end`` (to the end if ``end`` is None), dedented.

    Raises ``ValueError`` naming the marker if it is not in the source, so a chapter fails loudly
    when the code it shows has changed shape.
    """
    lines = inspect.getsource(obj).splitlines()
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        raise ValueError(f"start marker {start!r} is not in the source of {obj.__qualname__}")
    last = len(lines)
    if end is not None:
        last = next((i for i in range(first + 1, len(lines)) if end in lines[i]), None)
        if last is None:
            raise ValueError(f"end marker {end!r} is not in the source of {obj.__qualname__} after {start!r}")
    return textwrap.dedent("\n".join(lines[first:last])).rstrip()
