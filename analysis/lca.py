"""Loss change allocation per layer (Lan et al. 2019, "LCA: Loss Change Allocation").

The ``lca`` table: variant_id, step (a window's first step), layer, allocation: the loss
change over the window attributed to the layer's parameters (a path integral of gradient
times parameter change, summed over the layer and the window's steps). Negative means the
layer's moves lowered the loss; the allocations of all layers sum to the loss change.
Lan et al. find that about half the parameters' moves raise the loss at any step, and
that some layers (often the last) hurt on balance.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.load import Results
from analysis.training import representative_cell


def plot_lca(results: Results, variant: str | None = None) -> plt.Figure | None:
    """Total allocation per layer (bars: mean over the seeds of ``variant`` 's cell, sd as
    error bars) and allocation per layer and window (heatmap, mean over those seeds,
    blue = helped). Default cell: the first variant with LCA rows. ``None`` without them."""
    lca = results.lca
    if lca is None or lca.empty or not {"step", "layer", "allocation"} <= set(lca.columns):
        return None
    ids, title = representative_cell(results, lca["variant_id"].unique(), variant)
    part = lca[lca["variant_id"].isin(ids)]
    layers = list(part["layer"].drop_duplicates())  # the network's order, as written
    totals = lca_totals(part).pivot(index="variant_id", columns="layer", values="allocation")
    totals = totals[layers]
    windows = part.pivot_table(index="layer", columns="step", values="allocation", aggfunc="mean")
    windows = windows.reindex(layers)
    fig, (bars, heat) = plt.subplots(
        1,
        2,
        figsize=(4 + 0.5 * len(layers) + 0.25 * windows.shape[1], 3.2 + 0.3 * len(layers)),
        gridspec_kw={"width_ratios": [1, 1.6]},
    )
    mean, sd = totals.mean(), totals.std(ddof=1).fillna(0)
    colours = ["tab:blue" if m < 0 else "tab:red" for m in mean]
    bars.barh(range(len(layers)), mean, xerr=sd, color=colours, capsize=3)
    bars.set_yticks(range(len(layers)), layers)
    bars.invert_yaxis()
    bars.axvline(0, color="grey", lw=0.8)
    bars.set(xlabel="total allocation (negative: lowered the loss)", title="per layer, whole run")
    limit = float(windows.abs().max().max()) or 1.0
    sns.heatmap(
        windows,
        ax=heat,
        cmap="RdBu_r",
        center=0,
        vmin=-limit,
        vmax=limit,
        cbar_kws={"label": "allocation"},
        annot=windows.shape[1] <= 8,
        fmt=".2g",
        annot_kws={"fontsize": 6},
    )
    heat.set(xlabel="window (first step)", ylabel="", title="per layer and window")
    heat.tick_params(axis="y", rotation=0)
    total = float(mean.sum())
    fig.suptitle(f"loss change allocation, {title}; loss change {total:.3g}", fontsize=10)
    fig.tight_layout()
    return fig


def lca_totals(lca: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per variant and layer, the allocation summed over windows (``None`` without a table)."""
    if lca is None or lca.empty:
        return None
    return lca.groupby(["variant_id", "layer"], sort=False)["allocation"].sum().reset_index()
