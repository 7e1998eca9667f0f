"""Loss surfaces, paths between models, class-stiffness matrices and Hessian spectra.

- ``surfaces`` kinds ``1d`` and ``2d`` (Li et al. 2018 filter-normalised slices): loss
  against alpha, and contours / 3-D surfaces over (alpha, beta), optionally in log10;
- ``mli`` (Lucas et al. 2021, init to trained), ``interpolation`` (Frankle et al. 2020,
  linear path between two seeds) and ``bezier`` (Garipov et al. 2018, trained curve):
  loss and accuracy along the path parameter;
- ``stiffness``: the class-stiffness matrix of Fort et al. (2019), diverging colours at 0;
- ``spectra``: stochastic-Lanczos eigenvalue density, log y.

Every function returns ``None`` when its table or kind is absent, so a report can leave
the figure out. At most ``max_variants`` models (or pairs) are drawn. Given ``order`` (a
variant's place in the sweep's grid, :func:`analysis.curves.variant_order`), they are spread
evenly over the grid's cells in grid order, one per cell (its smallest seed), so a figure
spans the knobs; without it, the first in label order.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PER_MODEL = ("1d", "2d", "mli")
PATHS = ("mli", "interpolation", "bezier")


def _kind(surfaces: pd.DataFrame | None, kind: str) -> pd.DataFrame | None:
    if surfaces is None or "kind" not in surfaces:
        return None
    part = surfaces[surfaces["kind"] == kind]
    return None if part.empty else part


def _path_id(frame: pd.DataFrame) -> pd.Series:
    """``variant_id`` for per-model rows, ``"a | b"`` for pair rows."""
    missing = pd.Series(np.nan, index=frame.index, dtype=object)
    single = frame.get("variant_id", missing)
    pair = (
        frame.get("variant_a", missing).astype(str)
        + " | "
        + frame.get("variant_b", missing).astype(str)
    )
    return single.where(single.notna(), pair).astype(str)


def _label(path_id: str, labels: dict[str, str]) -> str:
    return " | ".join(labels.get(p, p) for p in path_id.split(" | "))


def _chosen(
    ids: pd.Series,
    labels: dict[str, str],
    max_variants: int,
    order: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[str], str]:
    """The paths to draw and a title note; spread over the grid when ``order`` is given."""
    unique = sorted(ids.unique(), key=lambda i: _label(i, labels))
    note = f" ({max_variants} of {len(unique)})" if len(unique) > max_variants else ""
    if order is None or len(unique) <= max_variants:
        return unique[:max_variants], note
    last = (len(order), 0)  # unknown variants after every known one

    def place(pid: str) -> tuple[int, int]:
        return order.get(pid.split(" | ")[0], last)

    unique = sorted(unique, key=place)  # stable: label order within a place
    first_of_cell = list({place(p)[0]: p for p in reversed(unique)}.values())[::-1]
    if len(first_of_cell) >= max_variants:
        picks = np.linspace(0, len(first_of_cell) - 1, max_variants).round().astype(int)
        chosen = [first_of_cell[i] for i in picks]
    else:  # fewer cells than wanted: one per cell, then the next seeds in grid order
        chosen = first_of_cell + [p for p in unique if p not in first_of_cell]
    return chosen[:max_variants], f" ({max_variants} of {len(unique)}, spread over the grid)"


def _legend_outside(ax: plt.Axes, **kw) -> None:
    """A legend to the right of ``ax``, off the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def plot_surface_1d(
    surfaces: pd.DataFrame | None,
    labels: dict[str, str],
    log: bool = False,
    max_variants: int = 8,
    order: dict[str, tuple[int, int]] | None = None,
) -> plt.Figure | None:
    """Loss along one filter-normalised direction, one line per model."""
    part = _kind(surfaces, "1d")
    if part is None:
        return None
    ids = _path_id(part)
    chosen, note = _chosen(ids, labels, max_variants, order)
    fig, ax = plt.subplots(figsize=(6, 4))
    for pid in chosen:
        line = part[ids == pid].sort_values("alpha")
        ax.plot(line["alpha"], line["loss"], label=_label(pid, labels))
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="alpha", ylabel="training loss (nats)", title=f"1-D loss slices{note}")
    _legend_outside(ax, fontsize=7)
    return fig


def _surface_grid(frame: pd.DataFrame, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = frame.pivot_table(index="beta", columns="alpha", values="loss", aggfunc="mean")
    z = table.to_numpy(dtype=float)
    if log:
        z = np.log10(np.where(z > 0, z, np.nan))
    a, b = np.meshgrid(table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float))
    return a, b, z


def plot_surface_2d(
    surfaces: pd.DataFrame | None,
    labels: dict[str, str],
    log: bool = False,
    three_d: bool = False,
    max_variants: int = 4,
    order: dict[str, tuple[int, int]] | None = None,
) -> plt.Figure | None:
    """Contours (or 3-D surfaces with ``three_d``) of loss over (alpha, beta), one panel per model."""
    part = _kind(surfaces, "2d")
    if part is None:
        return None
    ids = _path_id(part)
    chosen, note = _chosen(ids, labels, max_variants, order)
    kw = {"subplot_kw": {"projection": "3d"}} if three_d else {}
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 4.2), squeeze=False, **kw)
    zlabel = "log10 loss (nats)" if log else "loss (nats)"
    for ax, pid in zip(axes.flat, chosen):
        a, b, z = _surface_grid(part[ids == pid], log)
        if three_d:
            ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel(zlabel)
        else:
            filled = ax.contourf(a, b, z, levels=20, cmap="viridis")
            ax.contour(a, b, z, levels=10, colors="white", linewidths=0.5)
            fig.colorbar(filled, ax=ax, label=zlabel)
            ax.plot([0], [0], marker="*", color="red", markersize=10)
        ax.set(xlabel="alpha", ylabel="beta")
        ax.set_title(_label(pid, labels), fontsize=9)
    what = "3-D loss surfaces" if three_d else "2-D loss contours"
    fig.suptitle(f"{what}{' (log10)' if log else ''}{note}")
    fig.tight_layout()
    return fig


def plot_paths(
    surfaces: pd.DataFrame | None,
    kind: str,
    labels: dict[str, str],
    max_variants: int = 8,
    order: dict[str, tuple[int, int]] | None = None,
) -> plt.Figure | None:
    """Loss and accuracy along an ``mli``, ``interpolation`` or ``bezier`` path."""
    if kind not in PATHS:
        raise ValueError(f"path kind must be one of {PATHS}, got {kind!r}")
    part = _kind(surfaces, kind)
    if part is None:
        return None
    ids = _path_id(part)
    chosen, note = _chosen(ids, labels, max_variants, order)
    cols = [c for c in ("loss", "accuracy") if c in part and part[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3.8), squeeze=False)
    x = "t" if kind == "bezier" else "alpha"
    for ax, col in zip(axes.flat, cols):
        for pid in chosen:
            line = part[ids == pid].sort_values("alpha")
            ax.plot(line["alpha"], line[col], marker=".", label=_label(pid, labels))
        ax.set(xlabel=x, ylabel={"loss": "training loss (nats)"}.get(col, "training accuracy"))
    _legend_outside(axes.flat[-1], fontsize=6)
    titles = {
        "mli": "init to trained (MLI)",
        "interpolation": "linear interpolation between seeds",
        "bezier": "Bezier curve between seeds",
    }
    fig.suptitle(f"{titles[kind]}{note}")
    fig.tight_layout()
    return fig


def plot_stiffness(
    stiffness: pd.DataFrame | None,
    labels: dict[str, str],
    value: str = "s_cos",
    max_variants: int = 4,
    order: dict[str, tuple[int, int]] | None = None,
) -> plt.Figure | None:
    """Class-stiffness matrices (mean ``value`` per class pair), colours centred at 0."""
    if stiffness is None or stiffness.empty or value not in stiffness:
        return None
    ids = stiffness["variant_id"].astype(str)
    chosen, note = _chosen(ids, labels, max_variants, order)
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.4 * len(chosen), 3.8), squeeze=False)
    for ax, vid in zip(axes.flat, chosen):
        stiffness_heatmap(ax, stiffness[ids == vid], value, annot_max=100)
        ax.set_title(_label(vid, labels), fontsize=9)
    fig.suptitle(f"class stiffness ({value}){note}")
    fig.tight_layout()
    return fig


def stiffness_heatmap(
    ax: plt.Axes, rows: pd.DataFrame, value: str, annot_max: int, cbar: bool = True
) -> None:
    """The class-stiffness matrix of ``rows`` (mean ``value`` per class pair) on ``ax``, in
    [-1, 1] with colours centred at 0; numbers written when it has at most ``annot_max`` cells."""
    matrix = rows.pivot_table(index="class_a", columns="class_b", values=value, aggfunc="mean")
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="RdBu",
        center=0,
        vmin=-1,
        vmax=1,
        square=True,
        cbar=cbar,
        annot=matrix.size <= annot_max,
        fmt=".2f",
        annot_kws={"fontsize": 6},
    )


# Decades of density shown below the highest peak: the Gaussian broadening (sigma^2 = 1e-5)
# gives tails down to 1e-20 and beyond, which say nothing and flatten every peak.
SPECTRUM_DECADES = 6


def plot_spectra(
    spectra: pd.DataFrame | None,
    labels: dict[str, str],
    max_variants: int = 8,
    order: dict[str, tuple[int, int]] | None = None,
) -> plt.Figure | None:
    """Hessian eigenvalue densities, log y over :data:`SPECTRUM_DECADES` below the peak."""
    if spectra is None or spectra.empty:
        return None
    ids = spectra["variant_id"].astype(str)
    chosen, note = _chosen(ids, labels, max_variants, order)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    peak = 0.0
    for vid in chosen:
        line = spectra[ids == vid].sort_values("eigenvalue")
        density = line["density"].where(line["density"] > 0)
        peak = max(peak, float(density.max()) if density.notna().any() else 0.0)
        ax.plot(line["eigenvalue"], density, label=_label(vid, labels))
    ax.set_yscale("log")
    if peak > 0:
        ax.set_ylim(peak * 10.0**-SPECTRUM_DECADES, peak * 2)
    ax.set(xlabel="eigenvalue", ylabel="density", title=f"Hessian spectral density{note}")
    _legend_outside(ax, fontsize=7)
    return fig


def plot_cross(
    cross: pd.DataFrame | None, runs: pd.DataFrame, vary: Sequence[str] = (), max_pairs: int = 4
):
    """Li et al.'s (2018) figure 3: train (solid) and test (dashed) loss and accuracy along the
    line from variant a (alpha 0) to variant b (alpha 1), one panel pair per cross-variant pair,
    labelled by the knobs in which the two differ. None without a ``cross`` table."""
    if cross is None or cross.empty:
        return None
    pairs = cross[["variant_a", "variant_b"]].drop_duplicates().head(max_pairs)
    knobs = runs.set_index("variant_id")
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 6), squeeze=False)
    for j, (a, b) in enumerate(pairs.itertuples(index=False)):
        rows = cross[(cross.variant_a == a) & (cross.variant_b == b)]
        differ = [
            c
            for c in knobs.columns
            if "." in c
            and a in knobs.index
            and b in knobs.index
            and str(knobs.at[a, c]) != str(knobs.at[b, c])
        ]
        label = (
            ", ".join(f"{c.split('.')[-1]} {knobs.at[a, c]} -> {knobs.at[b, c]}" for c in differ)
            or f"{a} -> {b}"
        )
        for i, (col, name) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
            ax = axes[i][j]
            for split, style in (("train", "-"), ("test", "--")):
                part = rows[rows.split == split].sort_values("alpha")
                ax.plot(part.alpha, part[col], style, label=split)
            for x in (0, 1):
                ax.axvline(x, color="grey", lw=0.5)
            ax.set_xlabel("alpha (0: a, 1: b)")
            ax.set_ylabel(name)
            if i == 0:
                ax.set_title(label, fontsize=9)
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    fig.suptitle("interpolation between sweep points (train solid, test dashed)")
    fig.tight_layout()
    return fig
