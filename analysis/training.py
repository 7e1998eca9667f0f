"""Measurements during training: metrics against step, and the edge of stability.

The ``trajectory`` table has one row per (variant, step) at which anything was measured:
``step``, ``epoch``, ``lr``, the local metrics at scheduled (often log-spaced) steps
(``hessian_trace``, ``stiffness_between_cos``, ...) and, every N steps, ``sharpness`` (top
Hessian eigenvalue, warm-started power iteration) with ``two_over_lr``. A column absent
at a row is null. :func:`plot_trajectory` draws one line per variant coloured by a knob
(the learning rate when the sweep varies it, else the temperature axis, as for training
curves). For sharpness, 2/lr is drawn dashed in the same colour: gradient descent on a
quadratic is stable only while the top eigenvalue stays below 2/lr, and full-batch
training drives sharpness up to that line and holds it there (Cohen et al. 2021, "Gradient
descent on neural networks typically occurs at the edge of stability").

Also the helpers the other during-training figures share: a knob per variant and its
colours, the end-of-training rows of a table measured at several steps, and the choice of
one representative cell (a variant and its other seeds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis.columns import shown
from analysis.curves import curve_axis
from analysis.heatmap import format_value, is_geometric, sort_values
from analysis.load import Results

SHARPNESS = "sharpness"
TRAJECTORY_INDEX = (
    "variant_id",
    "member",
    "step",
    "epoch",
    "lr",
    "two_over_lr",
    "stability_threshold",
)


# --- shared helpers ------------------------------------------------------------------------
def knob_by_variant(runs: pd.DataFrame, by: str) -> pd.Series:
    """``variant_id -> value of knob by`` (the newest runs row of a variant wins)."""
    if by not in runs:
        raise ValueError(f"knob {by!r} is not a column of the runs table")
    last = runs.drop_duplicates("variant_id", keep="last")
    return last.set_index("variant_id")[by]


def with_knob(table: pd.DataFrame, runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """``table`` with a column ``by`` joined on ``variant_id``; rows of unknown variants dropped."""
    knob = knob_by_variant(runs, by)
    out = table.assign(**{by: table["variant_id"].map(knob)})
    return out[out[by].notna()]


def knob_palette(values: Iterable[Any]) -> dict[Any, tuple[float, float, float]]:
    """One viridis colour per distinct value, in numeric order (dark = small)."""
    order = sort_values(values)
    return dict(zip(order, sns.color_palette("viridis", n_colors=max(len(order), 1))))


def knob_legend(
    ax: plt.Axes, palette: dict[Any, Any], by: str, extra: Sequence[Line2D] = ()
) -> None:
    handles = [Line2D([], [], color=c, label=format_value(v)) for v, c in palette.items()]
    ax.legend(
        handles=[*handles, *extra],
        title=by,
        fontsize=7,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )  # beside the axes, off the data


def at_end(table: pd.DataFrame) -> pd.DataFrame:
    """The end-of-training rows of a table that may be measured at several steps.

    Per variant: the rows without a ``step`` when it has any (measured after training),
    else the rows at its last step (the schedule always ends at the last step). A table
    without a ``step`` column is returned as it is.
    """
    if "step" not in table or table["step"].isna().all():
        return table
    step = table["step"]
    has_final = step.isna().groupby(table["variant_id"]).transform("any")
    last = step.groupby(table["variant_id"]).transform("max")
    return table[(has_final & step.isna()) | (~has_final & (step == last))]


def representative_cell(
    results: Results, candidates: Iterable[str], variant: str | None = None
) -> tuple[list[str], str]:
    """A variant and the other seeds of its cell, among ``candidates``; and a title for them.

    The variant is ``variant``, else the first of ``candidates`` in the runs table. Its cell
    is every candidate that shares its value of each swept knob but the seed.
    """
    candidates = set(candidates)
    runs = results.runs.drop_duplicates("variant_id", keep="last").set_index("variant_id")
    if variant is None:
        variant = next((v for v in runs.index if v in candidates), None)
    if variant is None or variant not in candidates or variant not in runs.index:
        raise ValueError(
            f"variant {variant!r} has no rows here; variants with rows: {len(candidates)}"
        )
    knobs = [a for a in results.axes if a != "seed" and a in runs]
    same = runs.index.isin(list(candidates))
    for knob in knobs:
        value = runs.at[variant, knob]
        same &= (runs[knob].isna() if pd.isna(value) else runs[knob] == value).to_numpy()
    ids = runs.index[same].tolist()
    title = ", ".join(f"{k.split('.')[-1]}={format_value(runs.at[variant, k])}" for k in knobs)
    seeds = f"mean over {len(ids)} seeds" if len(ids) > 1 else "one seed"
    return ids, f"{title or variant} ({seeds})"


def numeric(frame: pd.DataFrame, col: str) -> pd.Series:
    """A column as floats, with infinities as NaN."""
    return pd.to_numeric(frame[col], errors="coerce").replace([np.inf, -np.inf], np.nan)


def set_step_axis(ax: plt.Axes, steps: pd.Series, label: str = "step") -> None:
    """Symmetric-log x (0 stays visible) when the positive steps are log-spaced."""
    positive = steps[steps > 0].unique()
    if is_geometric(positive):
        ax.set_xscale("symlog", linthresh=1.0)
        label += " (log scale)"
    ax.set_xlabel(label)


def log_if_wide(ax: plt.Axes, values: pd.Series, ratio: float = 20.0) -> None:
    """Log y when every value is positive and they span more than ``ratio``."""
    v = values.dropna()
    if len(v) and (v > 0).all() and v.max() / v.min() > ratio:
        ax.set_yscale("log")


# --- metrics against step ------------------------------------------------------------------
def trajectory_metrics(trajectory: pd.DataFrame | None) -> list[str]:
    """Measured metric columns of ``trajectory`` (sharpness first), without standard errors
    and bookkeeping counts (``*_probes``)."""
    if trajectory is None or trajectory.empty or "step" not in trajectory:
        return []
    cols = [
        c
        for c in trajectory.columns
        if c not in TRAJECTORY_INDEX
        and not c.endswith(("_se", "_probes"))
        and numeric(trajectory, c).notna().any()
    ]
    return sorted(cols, key=lambda c: c != SHARPNESS)


def plot_trajectory(
    results: Results, metric: str, by: str | None = None, temperature: str | None = None
) -> plt.Figure | None:
    """``metric`` against step, one line per variant coloured by knob ``by``.

    ``by`` defaults to :func:`analysis.curves.curve_axis`. A ``<metric>_se`` column is shown
    as a band; for ``sharpness``, the optimiser's stability threshold (``stability_threshold``:
    2(1 + momentum)/lr for SGD) is drawn dashed in the line's colour, or ``two_over_lr`` where
    that is absent (results written before it, adaptive optimisers). ``None`` when the table
    or the metric is absent.
    """
    table = results.trajectory
    if metric not in trajectory_metrics(table):
        return None
    by = by or curve_axis(results, temperature)
    data = with_knob(table.assign(**{metric: numeric(table, metric)}), results.runs, by)
    data = data[data[metric].notna()].sort_values("step")
    if data.empty:
        return None
    palette = knob_palette(data[by])
    se, edge = f"{metric}_se", metric == SHARPNESS and "two_over_lr" in data
    if edge:  # each row's own threshold, 2/lr where the optimiser has none
        own = numeric(data, "stability_threshold") if "stability_threshold" in data else None
        data = data.assign(
            edge=numeric(data, "two_over_lr")
            if own is None
            else own.fillna(numeric(data, "two_over_lr"))
        )
        plain = own is None or own.isna().all() or bool((own == numeric(data, "two_over_lr")).all())
        label = "2 / lr" if plain else "stability threshold (SGD: 2(1 + momentum) / lr)"
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for _, line in data.groupby("variant_id", sort=False):
        colour = palette[line[by].iloc[0]]
        ax.plot(line["step"], line[metric], color=colour, alpha=0.8, lw=1.2, marker=".", ms=3)
        if se in line and line[se].notna().any():
            low, high = line[metric] - line[se], line[metric] + line[se]
            ax.fill_between(line["step"], low, high, color=colour, alpha=0.15, lw=0)
        if edge:
            ax.plot(line["step"], line["edge"], color=colour, ls="--", lw=1)
    set_step_axis(ax, data["step"])
    if shown(results.columns, metric).log or edge:
        log_if_wide(ax, pd.concat([data[metric], data["edge"] if edge else None]))
    if ax.get_yscale() == "log":  # standard-error bands below zero: clip them to the data
        ax.set_ylim(bottom=float(data[metric].min()) / 1.5)
    extra = [Line2D([], [], color="grey", ls="--", label=label)] if edge else []
    knob_legend(ax, palette, by, extra)
    ax.set_ylabel(metric)
    what = "top Hessian eigenvalue against its stability threshold" if edge else metric
    ax.set_title(f"{what} during training, across {by}", fontsize=10)
    fig.tight_layout()
    return fig
