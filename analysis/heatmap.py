"""Heatmaps of one metric over two sweep axes, mean over seeds.

Axis values are sorted numerically (``16, 64, 256``, never ``16, 256, 64``) and printed
compactly (``1e-04`` rather than ``0.0001``). The y axis grows upwards, as on a phase
diagram. A grid swept geometrically (batch sizes 16, 32, 64, ...) is drawn with one column
per value, which is a log axis with its true labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.columns import Shown


def text_colour(rgba: Any) -> str:
    """Dark text on light cells and white on dark ones (seaborn's annotation rule: relative
    luminance above 0.408 is light)."""
    return ".15" if sns.utils.relative_luminance(rgba) > 0.408 else "w"


def sort_values(values: Iterable[Any]) -> list[Any]:
    """Distinct values sorted numerically where they are numbers, then as text."""

    def key(v: Any) -> tuple[int, Any]:
        if isinstance(v, bool | np.bool_):
            return (1, str(v))
        if isinstance(v, int | float | np.integer | np.floating):
            return (0, float(v))
        return (1, str(v))

    return sorted(pd.unique(pd.Series(list(values)).dropna()), key=key)


def format_value(value: Any, digits: int = 3) -> str:
    """A compact label: ``16``, ``0.1``, ``1e-04``, ``True`` (``digits`` significant digits
    in the first form, ``digits - 2`` decimals of the mantissa in the exponent form)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.{digits}g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.{max(digits - 3, 0)}e}"
    return str(value)


def format_values(values: Iterable[Any]) -> list[str]:
    """:func:`format_value` of each, with as many more digits as it takes for distinct values
    to get distinct labels (2e-04 and 2.4e-04 on one axis)."""
    values = list(values)
    distinct = len({repr(v) for v in values})
    for digits in range(3, 18):
        labels = [format_value(v, digits) for v in values]
        if len(set(labels)) >= distinct:
            return labels
    return [repr(v) for v in values]


def is_geometric(values: Iterable[Any]) -> bool:
    """True for a positive numeric grid of 3+ values spaced more evenly in log than linearly."""
    try:
        v = np.array(sort_values(values), dtype=float)
    except (TypeError, ValueError):
        return False
    if len(v) < 3 or not np.all(v > 0) or v[-1] / v[0] < 8:
        return False

    def unevenness(x: np.ndarray) -> float:
        d = np.diff(x)
        return float(np.std(d) / np.mean(d))

    return unevenness(np.log(v)) < unevenness(v)


def grid(frame: pd.DataFrame, value: str, x: str, y: str, numeric: bool = True) -> pd.DataFrame:
    """Pivot ``value`` to rows ``y`` (largest on top) by columns ``x``.

    Numeric values are averaged over rows that share a cell (seeds, other knobs); with
    ``numeric=False`` the first value is kept (labels such as a phase).
    """
    data = frame[[x, y, value]].copy()
    if numeric:
        data[value] = pd.to_numeric(data[value], errors="coerce").replace([np.inf, -np.inf], np.nan)
    grouped = data.groupby([y, x], dropna=True)[value]
    table = (grouped.mean() if numeric else grouped.first()).unstack(x)
    table = table.reindex(index=sort_values(frame[y])[::-1], columns=sort_values(frame[x]))
    table.index = format_values(table.index)
    table.columns = format_values(table.columns)
    table.index.name, table.columns.name = axis_label(frame, y), axis_label(frame, x)
    return table


def axis_label(frame: pd.DataFrame, axis: str) -> str:
    """The axis name, marked ``(log scale)`` when its grid is geometric (one cell per value)."""
    return f"{axis} (log scale)" if is_geometric(frame[axis].dropna()) else axis


@contextmanager
def no_overlap_draw() -> Iterator[None]:
    """While it lasts, ``sns.heatmap`` does not draw the whole figure to see whether its tick
    labels overlap (seaborn 0.13 draws it once per call, only to rotate overlapping labels;
    a panel of a multi-panel figure redraws every panel before it). :func:`draw_grid` sets
    both label rotations itself right after, so that draw changes no pixel of the figure
    (tests/analysis/test_heatmap.py compares the PNGs) and cost a third of a heatmap's time.
    A seaborn without the helper is left as it is."""
    import seaborn.matrix

    drawn = getattr(seaborn.matrix, "_draw_figure", None)
    if drawn is None:
        yield
        return
    seaborn.matrix._draw_figure = lambda fig: None
    try:
        yield
    finally:
        seaborn.matrix._draw_figure = drawn


def draw_grid(
    table: pd.DataFrame,
    ax: plt.Axes,
    *,
    title: str,
    cmap: str = "viridis",
    center: float | None = None,
    annot: bool = True,
    cbar_label: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> plt.Axes:
    """Draw a pivoted grid with seaborn; empty cells show the grey background."""
    ax.set_facecolor("#f0f0f0")
    small = table.size <= 144
    with no_overlap_draw():  # the rotations are set below: seaborn's check would be undone
        sns.heatmap(
            table,
            ax=ax,
            cmap=cmap,
            center=center,
            vmin=vmin,
            vmax=vmax,
            annot=annot and small,
            fmt=".3g",
            annot_kws={"fontsize": 7},
            cbar_kws={"label": cbar_label} if cbar_label else None,
            linewidths=0.3,
            linecolor="white",
        )
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=45)
    return ax


def metric_heatmap(
    runs: pd.DataFrame,
    metric: str,
    x: str,
    y: str,
    *,
    ax: plt.Axes | None = None,
    shown: Shown | None = None,
    log: bool | None = None,
    cmap: str | None = None,
    center: float | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Heatmap of ``metric`` over axes ``x`` and ``y`` (mean over seeds and any other knob).

    ``shown`` is how the results' catalogue draws the column (``Results.columns``; plain when
    None): its unit labels the colour bar, ``log=None`` shows log10 where it is a log column
    and every value is positive, and ``center=None`` takes its diverging centre.
    """
    if metric not in runs:
        raise ValueError(f"metric {metric!r} is not a column; columns are {list(runs.columns)}")
    shown = shown or Shown(metric)
    table = grid(runs, metric, x, y)
    if log is None:
        values = table.to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        log = shown.log and len(values) > 0 and bool((values > 0).all())
    label = shown.colour_label(log=bool(log))
    if log:
        table = np.log10(table.where(table > 0))
    if ax is None:
        size = (max(5.0, 1.6 + 0.8 * table.shape[1]), max(4.0, 1.2 + 0.6 * table.shape[0]))
        _, ax = plt.subplots(figsize=size)
    center = shown.centre if center is None else center
    cmap = cmap or ("RdBu" if center is not None else "viridis")
    return draw_grid(
        table, ax, title=title or shown.title(bool(log)), cmap=cmap, center=center, cbar_label=label
    )


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG (cropped to its content) and close it. The PNG is written under a
    hidden temporary name and renamed: a kill or a full disk never leaves a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def save_heatmap(
    runs: pd.DataFrame, metric: str, x: str, y: str, path: str | Path, **kwargs: Any
) -> Path:
    """:func:`metric_heatmap` saved as a PNG at ``path``."""
    ax = metric_heatmap(runs, metric, x, y, **kwargs)
    return save_figure(ax.figure, path)
