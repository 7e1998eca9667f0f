"""Weight histograms and norms across a knob (Li et al. 2018, figure 2 and section 4).

The ``params`` table: one row per variant and parameter tensor (``layer``, a parameter
name), optionally per ``step``: numel, l2_norm, mean, std, abs_max, and a histogram
(``hist_counts`` over ``hist_edges``, ``hist_outside`` entries beyond the edges). Li et al.
show that small batches give larger weights without weight decay and smaller with it, so
that sharpness compared without filter normalisation says more about the scale of the
weights than about the landscape; these figures show the scale.

Histograms of different variants have different edges (each pack bins over its own range),
so each is re-binned onto common edges, spreading a bin's count uniformly across it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.heatmap import format_value, is_geometric, sort_values
from analysis.load import Results
from analysis.training import at_end, knob_legend, knob_palette, with_knob


def rebin(counts: Sequence[float], edges: Sequence[float], common: np.ndarray) -> np.ndarray:
    """Counts of a histogram over ``edges`` re-binned onto ``common`` edges (uniform within bins).

    >>> rebin([2, 2], [0.0, 1.0, 2.0], np.array([0.0, 0.5, 2.0])).tolist()
    [1.0, 3.0]
    """
    edges = np.asarray(edges, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=float))])
    return np.diff(np.interp(common, edges, cumulative))


def largest_layer(params: pd.DataFrame) -> str:
    """The weight tensor (name ending in ``weight``, else any) with the most entries."""
    sizes = params.drop_duplicates("layer").set_index("layer")["numel"]
    weights = sizes[[name.endswith("weight") for name in sizes.index]]
    return str((weights if len(weights) else sizes).idxmax())


def final_params(results: Results) -> pd.DataFrame | None:
    """End-of-training rows of ``params`` (see :func:`analysis.training.at_end`)."""
    params = results.params
    if params is None or params.empty or "layer" not in params:
        return None
    return at_end(params)


def plot_weight_histograms(
    results: Results, by: str, layer: str | None = None, bins: int = 60
) -> plt.Figure | None:
    """Histograms (densities) of one layer's weights at the end of training, one per value
    of knob ``by`` (mean over its variants). ``layer`` defaults to :func:`largest_layer`.
    ``None`` without histograms."""
    params = final_params(results)
    if params is None or not {"hist_counts", "hist_edges"} <= set(params.columns):
        return None
    layer = layer or largest_layer(params)
    rows = with_knob(params[params["layer"] == layer], results.runs, by)
    rows = rows[rows["hist_counts"].notna() & rows["hist_edges"].notna()]
    if rows.empty:
        return None
    low = min(float(np.min(e)) for e in rows["hist_edges"])
    high = max(float(np.max(e)) for e in rows["hist_edges"])
    common = np.linspace(low, high, bins + 1)
    palette = knob_palette(rows[by])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for knob, group in rows.groupby(by, sort=False):
        density = np.mean(
            [
                rebin(c, e, common) / max(np.sum(c), 1)
                for c, e in zip(group["hist_counts"], group["hist_edges"])
            ],
            axis=0,
        ) / np.diff(common)
        ax.stairs(density, common, color=palette[knob], lw=1.5)
        ax.stairs(density, common, color=palette[knob], fill=True, alpha=0.12)
    outside = int(rows["hist_outside"].sum()) if "hist_outside" in rows else 0
    note = f"; {outside} entries outside the edges" if outside else ""
    knob_legend(ax, palette, by)
    ax.set(xlabel="weight value", ylabel="density")
    ax.set_title(f"weights of {layer} at the end of training, across {by}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_weight_norms(
    results: Results, by: str, hue: str | None = None, max_layers: int = 8
) -> plt.Figure | None:
    """L2 norm of each parameter tensor at the end of training against knob ``by``, one
    panel per tensor (at most ``max_layers``, in the network's order), one line per value
    of knob ``hue`` (say the width, whose norms differ), mean and sd over the other
    variants. ``None`` without norms."""
    params = final_params(results)
    if params is None or "l2_norm" not in params or params["l2_norm"].isna().all():
        return None
    data = with_knob(params, results.runs, by)
    if hue is not None and hue != by:
        data = with_knob(data, results.runs, hue)
        order = [format_value(v) for v in sort_values(data[hue])]
        data = data.assign(**{hue: pd.Categorical(data[hue].map(format_value), order)})
    else:
        hue = None
    if data.empty:
        return None
    numeric = pd.api.types.is_numeric_dtype(data[by]) and not pd.api.types.is_bool_dtype(data[by])
    if not numeric:
        data = data.assign(**{by: data[by].map(format_value)})
    layers = list(data["layer"].drop_duplicates())[:max_layers]
    palette = sns.color_palette("viridis", len(data[hue].cat.categories)) if hue else None
    cols = min(len(layers), 3)
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        part = data[data["layer"] == layer]
        sns.lineplot(
            data=part,
            x=by,
            y="l2_norm",
            hue=hue,
            palette=palette,
            marker="o",
            errorbar="sd",
            ax=ax,
            legend=ax is axes.flat[0],
        )
        if numeric and is_geometric(part[by].unique()):
            ticks = sorted(part[by].unique())
            ax.set_xscale("log")
            ax.set_xticks(ticks, [format_value(v) for v in ticks])
            ax.minorticks_off()
        ax.set(ylabel="L2 norm", title=layer)
    for ax in list(axes.flat)[len(layers) :]:
        ax.set_visible(False)
    if hue:
        axes.flat[0].legend(title=hue, fontsize=7, title_fontsize=8)
    fig.suptitle(f"weight norm per tensor at the end of training, across {by}", fontsize=10)
    fig.tight_layout()
    return fig
