"""Training curves overlaid across one knob, and the LR range test.

Curves are joined to their runs by ``variant_id`` so they can be grouped by any knob; by
default the overlay is across the learning rate when the sweep varies it (so the curves
of different learning rates can be compared, as SCIENCE.md asks), else across the
temperature axis. Each line is the mean over every finished variant with that value, with
a band of one standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.heatmap import format_value, format_values, sort_values
from analysis.load import Results

LR = "optim.lr"


def curve_axis(results: Results, temperature: str | None = None) -> str:
    """``optim.lr`` when the runs vary it, else the temperature axis."""
    if LR in results.runs and results.runs[LR].nunique(dropna=True) > 1:
        return LR
    return temperature or results.analysis_axes()[0]


def _with_knob(table: pd.DataFrame, runs: pd.DataFrame, by: str) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    joined = table.merge(ok[["variant_id", by]], on="variant_id", how="inner")
    order = sort_values(joined[by])
    labels = dict(zip(order, format_values(order)))
    joined[by] = pd.Categorical(joined[by].map(labels), list(labels.values()))
    return joined


def plot_training_curves(
    results: Results, by: str | None = None, temperature: str | None = None
) -> plt.Figure | None:
    """Train and test loss against epoch, one line per value of ``by``; ``None`` without curves."""
    curves = results.curves
    if curves is None or curves.empty or "epoch" not in curves:
        return None
    by = by or curve_axis(results, temperature)
    if by not in results.runs:
        raise ValueError(f"curve axis {by!r} is not a column of the runs table")
    data = _with_knob(curves, results.runs, by)
    panels = [
        c
        for c in ("train_loss", "test_loss", "train_acc", "test_acc")
        if c in data and data[c].notna().any()
    ]
    if data.empty or not panels:
        return None
    palette = sns.color_palette("viridis", n_colors=len(data[by].cat.categories))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        sns.lineplot(
            data=data,
            x="epoch",
            y=col,
            hue=by,
            palette=palette,
            errorbar="sd",
            ax=ax,
            legend=ax is axes.flat[0],
        )
        if col.endswith("loss") and (data[col] > 0).all():
            ax.set_yscale("log")
        ax.set_title(col.replace("_", " "))
    fig.suptitle(f"training curves across {by} (mean and sd over the other knobs and seeds)")
    fig.tight_layout()
    return fig


def plot_lr_range(
    results: Results, by: str | None = None, labels: dict[str, str] | None = None
) -> plt.Figure | None:
    """Smith's LR range test: loss against a growing learning rate (log x); ``None`` if absent."""
    table = results.lr_range
    if table is None or table.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for vid, part in table.sort_values("step").groupby("variant_id", sort=True):
        ax.plot(part["lr"], part["loss"], label=(labels or {}).get(vid, vid))
    ax.set_xscale("log")
    if (table["loss"] > 0).all() and table["loss"].max() / table["loss"].min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=7)
    return fig


def variant_labels(runs: pd.DataFrame, keys: Sequence[str]) -> dict[str, str]:
    """``variant_id -> "batch_size=16, width=4, seed=0"`` from the cell keys and the seed."""
    cols = [k for k in [*keys, "seed"] if k in runs]
    out = {}
    for row in runs[["variant_id", *cols]].to_dict("records"):
        out[row["variant_id"]] = ", ".join(
            f"{c.split('.')[-1]}={format_value(row[c])}" for c in cols
        )
    return out
