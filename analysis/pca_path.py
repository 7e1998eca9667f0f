"""The optimiser's path on the plane of its two leading PCA directions (Li et al. 2018, s. 7).

The ``path`` table (``Results.pca_path``) has the snapshots w_t projected onto the first two
principal directions of (w_t - w_final): variant_id, step, alpha, beta, ending at (0, 0).
The ``surfaces`` rows of kind ``pca`` are the training loss on that plane around the final
point. Li et al. draw the path over the contours: it runs across the contours early and
then along a valley, and the two directions usually explain most of the path's variance:
each axis says how much (``explained_alpha``, ``explained_beta``), as Li et al.'s do.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.heatmap import format_value
from analysis.load import Results

KIND = "pca"


def _pca_surface(surfaces: pd.DataFrame | None) -> pd.DataFrame:
    if surfaces is None or "kind" not in surfaces:
        return pd.DataFrame(columns=["variant_id", "alpha", "beta", "loss"])
    return surfaces[surfaces["kind"] == KIND]


def _contour(ax: plt.Axes, plane: pd.DataFrame) -> None:
    """Filled contours of the loss over (alpha, beta), log10 when it spans > 20x."""
    table = plane.pivot_table(index="beta", columns="alpha", values="loss", aggfunc="mean")
    z = table.to_numpy(dtype=float)
    label = "loss"
    finite = z[np.isfinite(z)]
    if len(finite) and (finite > 0).all() and finite.max() / finite.min() > 20:
        z, label = np.log10(z), "log10 loss"
    a, b = np.meshgrid(table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float))
    filled = ax.contourf(a, b, z, levels=20, cmap="viridis")
    ax.contour(a, b, z, levels=10, colors="white", linewidths=0.5)
    ax.figure.colorbar(filled, ax=ax, label=label)


def _axis_label(line: pd.DataFrame, coord: str, nth: str) -> str:
    """``1st PCA direction (91% of the path's variance)`` when the path table carries the
    share (``explained_alpha`` / ``explained_beta``; older results do not)."""
    col = f"explained_{coord}"
    share = pd.to_numeric(line[col], errors="coerce").dropna() if col in line else pd.Series()
    label = f"{nth} PCA direction"
    return f"{label} ({100 * share.iloc[0]:.0f}% of the path's variance)" if len(share) else label


def plot_pca_path(
    results: Results, labels: dict[str, str] | None = None, max_variants: int = 3
) -> plt.Figure | None:
    """Path (line with markers, start and end labelled) over the ``pca`` loss contours, one
    panel per variant: those with a surface first, in runs order, at most ``max_variants``.
    A variant without a surface gets its path alone. ``None`` without a path table."""
    path = results.pca_path
    if path is None or path.empty or not {"step", "alpha", "beta"} <= set(path.columns):
        return None
    surface = _pca_surface(results.surfaces)
    order = [
        v for v in results.runs["variant_id"].drop_duplicates() if v in set(path["variant_id"])
    ]
    with_surface = set(surface["variant_id"])
    order = sorted(order, key=lambda v: v not in with_surface)  # stable: runs order within
    chosen = order[:max_variants]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 4.3), squeeze=False)
    for ax, vid in zip(axes.flat, chosen):
        if vid in with_surface:
            _contour(ax, surface[surface["variant_id"] == vid])
        line = path[path["variant_id"] == vid].sort_values("step")
        ax.plot(
            line["alpha"], line["beta"], "-o", color="tab:red", ms=3.5, lw=1.3, mec="white", mew=0.5
        )
        for row, text in ((line.iloc[0], "start"), (line.iloc[-1], "end")):
            inward = -1 if row["alpha"] > 0 else 1  # label towards the middle, not off the axes
            ax.annotate(
                f"{text} (step {format_value(row['step'])})",
                (row["alpha"], row["beta"]),
                xytext=(8 * inward, -12 if text == "end" else 8),
                textcoords="offset points",
                ha="right" if inward < 0 else "left",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0},
            )
        ax.plot([0], [0], marker="*", color="red", ms=11, mec="white")
        ax.set(xlabel=_axis_label(line, "alpha", "1st"), ylabel=_axis_label(line, "beta", "2nd"))
        ax.set_title((labels or {}).get(vid, vid), fontsize=9)
    note = f" ({len(chosen)} of {len(order)})" if len(order) > len(chosen) else ""
    fig.suptitle(f"optimiser path on its PCA plane, over the training loss{note}", fontsize=10)
    fig.tight_layout()
    return fig
