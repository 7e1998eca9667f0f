"""Stiffness over training and against input-space distance (Fort et al. 2019).

The ``stiffness`` table holds two kinds of rows, both with ``s_cos`` (cosine of two
examples' gradients) and ``s_sign`` (sign of their dot product):

- class rows (``class_a``, ``class_b``): the class-stiffness matrix, optionally at
  scheduled ``step`` s (rows without a step are the end-of-training matrix);
- distance rows (``distance_bin_lo``, ``distance_bin_hi``, ``count``; classes null): the
  mean stiffness of example pairs whose input-space distance falls in the bin.

Fort et al. follow the matrices from initialisation, where every pair is stiff, through
training, where stiffness between classes falls; and find stiffness falls with distance
to about 0 beyond a scale that shrinks as training goes on and grows with the learning
rate.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from analysis.curves import curve_axis
from analysis.heatmap import format_value
from analysis.load import Results
from analysis.surfaces import stiffness_heatmap
from analysis.training import at_end, knob_legend, knob_palette, representative_cell, with_knob

VALUES = ("s_cos", "s_sign")


def class_rows(stiffness: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of class-stiffness matrices (integer class labels); ``None`` when there are none."""
    if stiffness is None or not {"class_a", "class_b"} <= set(stiffness.columns):
        return None
    rows = stiffness[stiffness["class_a"].notna() & stiffness["class_b"].notna()]
    if rows.empty:
        return None
    labels = rows[["class_a", "class_b"]]
    if all(pd.api.types.is_numeric_dtype(t) for t in labels.dtypes) and (labels % 1 == 0).all(
        axis=None
    ):
        rows = rows.astype({"class_a": "int64", "class_b": "int64"})  # 0, not 0.0
    return rows


def final_stiffness(stiffness: pd.DataFrame | None) -> pd.DataFrame | None:
    """The end-of-training class-stiffness rows (see :func:`analysis.training.at_end`)."""
    rows = class_rows(stiffness)
    return None if rows is None else at_end(rows)


def _stages(steps: list[float], most: int) -> list[float]:
    """At most ``most`` steps, evenly spread, the first and last included."""
    if len(steps) <= most:
        return steps
    return [steps[i] for i in np.unique(np.linspace(0, len(steps) - 1, most).round().astype(int))]


def plot_stiffness_stages(
    results: Results, variant: str | None = None, value: str = "s_cos", max_stages: int = 6
) -> plt.Figure | None:
    """Class-stiffness matrices at scheduled steps: one heatmap per step (at most
    ``max_stages``), mean over the seeds of ``variant`` 's cell (default: the first variant
    measured over training). ``None`` without matrices over training."""
    rows = class_rows(results.stiffness)
    if rows is None or "step" not in rows or value not in rows:
        return None
    rows = rows[rows["step"].notna()]
    if rows.empty:
        return None
    ids, title = representative_cell(results, rows["variant_id"].unique(), variant)
    part = rows[rows["variant_id"].isin(ids)]
    steps = _stages(sorted(part["step"].unique()), max_stages)
    n = len(steps)
    # One colour bar in its own narrow column: drawn inside the last panel, it squeezed it.
    fig, axes = plt.subplots(
        1,
        n + 1,
        figsize=(3.2 * n + 1, 3.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * n + [0.06]},
    )
    for ax, step in zip(axes.flat, steps):
        at = part[part["step"] == step]
        stiffness_heatmap(ax, at, value, annot_max=36, cbar=False)
        epoch = f", epoch {at['epoch'].iloc[0]:.3g}" if "epoch" in at else ""
        ax.set_title(f"step {format_value(step)}{epoch}", fontsize=9)
    bar = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap="RdBu")
    fig.colorbar(bar, cax=axes.flat[-1], label=f"{value} (cosine, -1 to 1)")
    fig.suptitle(f"class stiffness ({value}) over training: {title}", fontsize=10)
    fig.tight_layout()
    return fig


def distance_rows(stiffness: pd.DataFrame | None) -> pd.DataFrame | None:
    """End-of-training rows of stiffness against distance; ``None`` when there are none."""
    if (
        stiffness is None
        or "distance_bin_lo" not in stiffness
        or "distance_bin_hi" not in stiffness
    ):
        return None
    rows = stiffness[stiffness["distance_bin_lo"].notna() & stiffness["distance_bin_hi"].notna()]
    return None if rows.empty else at_end(rows)


def plot_stiffness_distance(
    results: Results, by: str | None = None, temperature: str | None = None
) -> plt.Figure | None:
    """Stiffness against input-space distance, one line per value of knob ``by``.

    A variant's bins are matched to other variants' by rank (their edges can differ); each
    point is the mean over the variants with that knob value, at the mean bin centre.
    Panels for ``s_cos`` and ``s_sign`` when measured. ``None`` without distance rows.
    """
    rows = distance_rows(results.stiffness)
    values = [v for v in VALUES if rows is not None and v in rows and rows[v].notna().any()]
    if not values:
        return None
    by = by or curve_axis(results, temperature)
    data = with_knob(rows, results.runs, by).sort_values(["variant_id", "distance_bin_lo"])
    data = data.assign(
        centre=(data["distance_bin_lo"] + data["distance_bin_hi"]) / 2,
        bin=data.groupby("variant_id").cumcount(),
    )
    means = data.groupby([by, "bin"])[["centre", *values]].mean().reset_index()
    palette = knob_palette(means[by])
    fig, axes = plt.subplots(1, len(values), figsize=(5.2 * len(values), 3.8), squeeze=False)
    for ax, value in zip(axes.flat, values):
        for knob, line in means.groupby(by, sort=False):
            ax.plot(line["centre"], line[value], marker="o", ms=3, color=palette[knob])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="input-space distance", ylabel=value)
    knob_legend(axes.flat[0], palette, by)
    fig.suptitle(f"stiffness against distance between examples, across {by}", fontsize=10)
    fig.tight_layout()
    return fig
