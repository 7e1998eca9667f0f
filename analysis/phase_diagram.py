"""Phase diagrams in the style of Yang et al. (2021), Fig. 1.

The main figure is the test-accuracy heatmap over (temperature, load) with the phase
regions drawn on top: thick lines along every cell edge where the phase changes and the
phase name at the centre of each connected region. Companion panels show the signals the
classifier read (training loss, log Hessian trace and top eigenvalue, mc on a diverging
colormap centred at 0, CKA, L2 distance: the columns the results' catalogue marks
``phase_diagram``), each with the same boundaries. Panels for metrics that were not measured
are left out.

Every function takes cells for one setting of any extra axes (see
:func:`analysis.cells.aggregate_cells`); :func:`slices` splits a larger frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.columns import Shown, in_report_order, shown
from analysis.heatmap import draw_grid, format_value, grid, text_colour
from analysis.phases import PHASE_MEANING, PHASE_ORDER


def slices(cells: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """(title, cells) per setting of the key columns after the first two (one if none)."""
    extra = list(keys[2:])
    if not extra:
        yield "", cells
        return
    for values, part in cells.groupby(extra, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield ", ".join(f"{k}={format_value(v)}" for k, v in zip(extra, values)), part


def phase_regions(labels: pd.DataFrame) -> list[tuple[str, list[tuple[int, int]]]]:
    """Connected regions (4-neighbour) of equal label in a grid: [(label, [(row, col), ...])]."""
    values = labels.to_numpy(dtype=object)
    seen = np.zeros(values.shape, dtype=bool)
    regions = []
    for start in np.ndindex(values.shape):
        if seen[start] or pd.isna(values[start]):
            continue
        label, stack, cells = values[start], [start], []
        seen[start] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                inside = 0 <= nr < values.shape[0] and 0 <= nc < values.shape[1]
                if inside and not seen[nr, nc] and values[nr, nc] == label:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        regions.append((str(label), cells))
    return regions


def draw_boundaries(ax: plt.Axes, labels: pd.DataFrame, color: str = "black") -> None:
    """Thick lines along cell edges between different labels (seaborn cell (r, c) = [c, c+1] x [r, r+1])."""
    v = labels.to_numpy(dtype=object)
    rows, cols = v.shape
    kw = {"color": color, "linewidth": 2.5, "solid_capstyle": "round"}
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and v[r, c] != v[r, c + 1]:
                ax.plot([c + 1, c + 1], [r, r + 1], **kw)
            if r + 1 < rows and v[r, c] != v[r + 1, c]:
                ax.plot([c, c + 1], [r + 1, r + 1], **kw)


def label_regions(ax: plt.Axes, labels: pd.DataFrame, fontsize: float = 12) -> None:
    """The label of each region at the member cell nearest the region's centroid."""
    outline = [pe.withStroke(linewidth=3, foreground="white")]
    for label, cells in phase_regions(labels):
        centre = np.mean(cells, axis=0)
        r, c = min(cells, key=lambda rc: (rc[0] - centre[0]) ** 2 + (rc[1] - centre[1]) ** 2)
        ax.text(
            c + 0.5,
            r + 0.42,
            label,
            ha="center",
            va="center",
            fontsize=fontsize,
            fontweight="bold",
            color="black",
            path_effects=outline,
        )


def overlay_phases(ax: plt.Axes, cells: pd.DataFrame, x: str, y: str, names: bool = True) -> None:
    """Phase boundaries (and names) from the ``phase`` column over a heatmap drawn on ``ax``."""
    labels = grid(cells, "phase", x, y, numeric=False)
    draw_boundaries(ax, labels)
    if names:
        label_regions(ax, labels)


def plot_phase_diagram(
    cells: pd.DataFrame,
    x: str,
    y: str,
    *,
    ax: plt.Axes | None = None,
    title: str = "",
    columns: Mapping[str, Shown] | None = None,
) -> plt.Axes:
    """Test accuracy heatmap (``x`` across, ``y`` up) with phase regions overlaid.

    ``cells`` needs ``test_acc`` and ``phase`` (from :func:`analysis.phases.classify_phases`);
    ``columns`` (``Results.columns``) gives the colour bar its unit.
    """
    for col in ("test_acc", "phase"):
        if col not in cells:
            raise ValueError(f"phase diagram needs a {col!r} column in cells")
    acc = grid(cells, "test_acc", x, y)
    if ax is None:
        _, ax = plt.subplots(
            figsize=(max(5.5, 1.6 + 0.9 * acc.shape[1]), max(4.0, 1.2 + 0.7 * acc.shape[0]))
        )
    draw_grid(
        acc,
        ax,
        title=title or "test accuracy and phases",
        cmap="viridis",
        annot=False,
        cbar_label=shown(columns, "test_acc").colour_label(),
    )
    mesh = ax.collections[0]  # seaborn's QuadMesh: the colour of each cell
    for (r, c), value in np.ndenumerate(acc.to_numpy(dtype=float)):
        if np.isfinite(value) and acc.size <= 196:
            ax.text(
                c + 0.5,
                r + 0.8,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color=text_colour(mesh.to_rgba(value)),
            )
    overlay_phases(ax, cells, x, y)
    present = [p for p in PHASE_ORDER if p in set(cells["phase"].dropna().astype(str))]
    legend = "\n".join(f"{p}: {PHASE_MEANING.get(p, p)}" for p in present)
    ax.text(0.0, -0.22, legend, transform=ax.transAxes, ha="left", va="top", fontsize=9)
    return ax


def present_panels(cells: pd.DataFrame, columns: Mapping[str, Shown]) -> list[Shown]:
    """The phase-diagram columns of ``columns`` with at least one finite value in ``cells``,
    in report order."""
    return [
        c
        for c in in_report_order(columns, cells)
        if c.phase_diagram and np.isfinite(pd.to_numeric(cells[c.name], errors="coerce")).any()
    ]


def plot_phase_panels(
    cells: pd.DataFrame,
    x: str,
    y: str,
    title: str = "",
    columns: Mapping[str, Shown] | None = None,
) -> plt.Figure | None:
    """One heatmap per measured signal, phase boundaries drawn on each; ``None`` if none measured.

    The signals are the columns ``columns`` (``Results.columns``) marks ``phase_diagram``."""
    panels = present_panels(cells, columns or {})
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    shape = grid(cells, panels[0].name, x, y).shape
    w, h = max(4.5, 1.4 + 0.7 * shape[1]), max(3.5, 1.0 + 0.55 * shape[0])
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax, column in zip(axes.flat, panels):
        table = grid(cells, column.name, x, y)
        if column.log:
            table = np.log10(table.where(table > 0))
        name, unit = column.title(column.log), column.colour_label(column.log)
        if column.centre is not None:
            lim = float(np.nanmax(np.abs(table.to_numpy(dtype=float) - column.centre))) or 1.0
            draw_grid(
                table,
                ax,
                title=name,
                cmap="RdBu",
                center=column.centre,
                annot=False,
                vmin=column.centre - lim,
                vmax=column.centre + lim,
                cbar_label=unit,
            )
        else:
            draw_grid(table, ax, title=name, cmap="viridis", annot=False, cbar_label=unit)
        if "phase" in cells:
            overlay_phases(ax, cells, x, y, names=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
