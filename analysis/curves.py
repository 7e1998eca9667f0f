"""Training curves overlaid across one knob, and the LR range test.

Curves are joined to their runs by ``variant_id`` so they can be grouped by any knob; by
default the overlay is across the learning rate when the sweep varies it (so the curves
of different learning rates can be compared), else across the
temperature axis. Each line is the mean over every finished variant with that value, with
a band of one standard deviation; on a log axis the band is clipped at the smallest value
drawn (a mean minus one sd below zero has no place there). Legends sit beside the panels,
off the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.columns import shown
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
    levels = list(data[by].cat.categories)
    palette = dict(zip(levels, sns.color_palette("viridis", n_colors=len(levels))))
    # Two panels a row: the page shows the figure near its own size, so its text stays legible.
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        log = col.endswith("loss") and bool((data[col].dropna() > 0).all())
        for level, part in data.groupby(by, observed=True):
            stats = part.groupby("epoch")[col].agg(["mean", "std"]).sort_index()
            ax.plot(stats.index, stats["mean"], color=palette[level], label=level)
            low, high = (
                stats["mean"] - stats["std"].fillna(0),
                stats["mean"] + stats["std"].fillna(0),
            )
            if log:  # a band below zero has no place on a log axis: clip it to the data
                low = low.clip(lower=float(data[col].min()))
            ax.fill_between(stats.index, low, high, color=palette[level], alpha=0.2, lw=0)
        if log:
            ax.set_yscale("log")
        unit = " (nats)" if col.endswith("loss") else " (fraction)"
        ax.set(xlabel="epoch", ylabel=col + unit, title=shown(results.columns, col).title())
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, title=by, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
    ax.set_ylabel("training loss (nats)")
    ax.set_title("LR range test")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
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


def variant_order(runs: pd.DataFrame, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``variant_id -> (cell rank, seed rank)``: cells sorted numerically by the cell keys in
    order (temperature, load, extra axes), seeds within a cell by value. Figures that draw a
    few models spread their choice over the cell ranks (:mod:`analysis.surfaces`)."""
    cols = [k for k in keys if k in runs]
    frame = runs.drop_duplicates("variant_id", keep="last").reset_index(drop=True)
    ranks = {c: {v: i for i, v in enumerate(sort_values(frame[c]))} for c in cols}
    cell = [
        tuple(ranks[c].get(v, -1) for c, v in zip(cols, row))
        for row in frame[cols].itertuples(index=False)
    ]
    cell_rank = {c: i for i, c in enumerate(sorted(set(cell)))}
    seeds = frame["seed"] if "seed" in frame else pd.Series(0, index=frame.index)
    seed_rank = {v: i for i, v in enumerate(sort_values(seeds))}
    return {
        vid: (cell_rank[c], seed_rank.get(s, 0))
        for vid, c, s in zip(frame["variant_id"], cell, seeds)
    }
