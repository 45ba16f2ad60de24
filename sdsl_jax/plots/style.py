"""What every figure shares: a headless canvas, axis formats, colours, saving.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``)
rather than pyplot: no global state, no GUI backend, nothing to close, and a
figure made in a test is garbage-collected like any object. Saving picks the
Agg renderer for PNG and the PDF backend for PDF by file type. matplotlib is
imported inside these functions, so importing :mod:`sdsl_jax.plots` (and the
CLI's parser) stays cheap until a figure is actually drawn.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from sdsl_jax.common.io import atomic_write
from sdsl_jax.common.quantities import format_count

# Wide enough that a panel title and axis labels never collide at 150 dpi.
PANEL_WIDTH = 5.2
PANEL_HEIGHT = 4.2
FORMATS = ("png", "pdf")


def new_figure(rows: int = 1, cols: int = 1, *, width: float | None = None,
               height: float | None = None, projection: list | None = None):
    """(Figure, flat list of Axes): a grid of panels, one projection per panel."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or PANEL_WIDTH * cols, height or PANEL_HEIGHT * rows),
                 layout="constrained")
    axes = []
    for k in range(rows * cols):
        kind = None if projection is None else projection[k]
        axes.append(fig.add_subplot(rows, cols, k + 1, projection=kind))
    return fig, axes


def colors(count: int) -> list:
    """``count`` distinguishable colours: tab10 up to ten, viridis beyond."""
    import matplotlib

    if count <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(k) for k in range(count)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.92, count)]


def _short_labels(values, write) -> list[str]:
    """Labels with the fewest significant digits (3 to 8) that say every tick's value.

    A label may round its tick by at most 1% of the spacing between ticks, so
    279.75M, 280M, 280.25M are not all printed as 280M.
    """
    values = [float(v) for v in values]
    positive = sorted(v for v in values if v > 0)
    gaps = [b - a for a, b in zip(positive, positive[1:]) if b > a]
    step = min(gaps) if gaps else (positive[0] if positive else 1.0)
    for digits in range(3, 9):
        if all(abs(float(f"{v:.{digits}g}") - v) <= 0.01 * step for v in positive):
            break
    return [write(v, digits) for v in values]


def _count_formatter(plain: bool):
    from matplotlib.ticker import Formatter

    def write(v, digits):
        if v <= 0:
            return "0"
        return f"{v:.{digits}g}" if plain else format_count(v, digits)

    class Labels(Formatter):
        # Formatter.format_ticks sees every tick at once, so the digits can be
        # chosen for the whole axis: 280M, 281M instead of 280M, 280M, 281M.
        def format_ticks(self, values):
            return _short_labels(values, write)

        def __call__(self, value, pos=None):
            return write(value, 3)

    class MinorLabels(Formatter):
        # On a log axis spanning two decades or less, label the 2s and 5s too
        # (otherwise only one or two labels would say where the curve lies).
        def format_ticks(self, values):
            low, high = sorted(self.axis.get_view_interval())
            if self.axis.get_scale() != "log" or low <= 0 or high / low > 120:
                return ["" for _ in values]
            keep = [v for v in values if round(v / 10 ** np.floor(np.log10(v))) in (2, 5)]
            labels = dict(zip(keep, _short_labels(keep, write)))
            return [labels.get(v, "") for v in values]

        def __call__(self, value, pos=None):
            return ""

    return Labels(), MinorLabels()


def count_axis(axis) -> None:
    """Tick labels like 100M, 1B, 15T on an axis of parameter or token counts."""
    major, minor = _count_formatter(plain=False)
    axis.set_major_formatter(major)
    axis.set_minor_formatter(minor)


def plain_axis(axis) -> None:
    """Tick labels like 0.004, 0.0125 (no 10^x notation) on a log or linear axis."""
    major, minor = _count_formatter(plain=True)
    axis.set_major_formatter(major)
    axis.set_minor_formatter(minor)


def grid(ax) -> None:
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def output_stem(path: str | os.PathLike) -> Path:
    """The stem to write STEM.png and STEM.pdf; a given .png or .pdf suffix is dropped."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") in FORMATS:
        path = path.with_suffix("")
    return path


def output_paths(stem: str | os.PathLike) -> list[Path]:
    """STEM.png and STEM.pdf, the files :func:`save` writes."""
    stem = output_stem(stem)
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS]


def save(fig, stem: str | os.PathLike, *, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as STEM.png and STEM.pdf; returns the two paths.

    Both are drawn in memory first and then each replaces its file atomically
    (:func:`sdsl_jax.common.io.atomic_write`): a drawing that fails leaves any
    earlier figure as it was, and no reader sees half a file.

    Raises:
      FileNotFoundError: the folder of STEM does not exist.
    """
    stem = output_stem(stem)
    folder = stem.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    paths = output_paths(stem)
    drawn = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        # Stamping the creation date into the PDF would make every rerun differ.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        drawn.append(buffer.getvalue())
    for path, data in zip(paths, drawn):
        atomic_write(path, lambda handle, data=data: handle.write(data), mode="wb")
    return paths


def band(ax, x, low, high, color, gid: str | None = None):
    """A light fill between low and high with thin edges, so overlapping bands stay apart.

    With a ``gid``, the fill gets it and the edges ``gid:low`` and ``gid:high``.
    """
    fill = ax.fill_between(x, low, high, color=color, alpha=0.12, lw=0)
    for name, edge in (("low", low), ("high", high)):
        (line,) = ax.plot(x, edge, color=color, lw=0.8, alpha=0.7, ls="-")
        if gid is not None:
            line.set_gid(f"{gid}:{name}")
    if gid is not None:
        fill.set_gid(gid)
    return fill
