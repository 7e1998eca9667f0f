"""The report's grokking section: the phase map over two knobs, accuracy against log step per
cell, and sharpness and weight norm along training aligned on the step of generalisation.

Phases come from :func:`analysis.grokking.grokking_phases` on the curves table; a cell's phase
is its seeds' most common one (ties: the earlier in :data:`analysis.grokking.GROKKING_PHASES`),
written with the count when the seeds disagree (``grokking 2/3``). The aligned panel puts each
run that generalised at ``step / test_step`` on a log axis (1: the step its test accuracy
crossed), so runs of very different delays line up on their generalisation. Panels and labels
come from the results' catalogue (:mod:`analysis.columns`): the trajectory's sharpness columns
(``sharpness``, else ``hessian_top_eig``, else ``hessian_trace``) and ``param_norm``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.columns import shown
from analysis.grokking import GROKKING_PHASES, grokking_phases
from analysis.heatmap import format_values, sort_values
from analysis.load import Results

SHARPNESS = ("sharpness", "hessian_top_eig", "hessian_trace")


def variant_phases(results: Results) -> pd.DataFrame | None:
    """Each ok run's knobs joined to its grokking phase, or None without accuracy curves."""
    curves = results.curves
    if curves is None or not {"variant_id", "train_acc", "test_acc"} <= set(curves.columns):
        return None
    phases = grokking_phases(curves)
    runs = results.ok_runs
    return runs.merge(phases, on="variant_id", how="inner")


def has_grokking(results: Results) -> bool:
    """Whether any run groks (its test accuracy crossed a decade after its training accuracy):
    the section is drawn only then."""
    v = variant_phases(results)
    return v is not None and bool((v["grokking_phase"] == "grokking").any())


def cell_phases(variants: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per cell of ``keys``: the seeds' most common phase and its label."""
    rank = {p: i for i, p in enumerate(GROKKING_PHASES)}
    rows = []
    for values, g in variants.groupby(keys, dropna=False):
        counts = g["grokking_phase"].value_counts()
        top = min(counts.index, key=lambda p: (-counts[p], rank.get(p, 99)))
        label = top if counts[top] == len(g) else f"{top} {counts[top]}/{len(g)}"
        rows.append((*values, top, label, float(g["delay"].median())))
    return pd.DataFrame(rows, columns=[*keys, "grokking_phase", "label", "delay"])


def plot_phase_map(results: Results, keys: list[str]) -> plt.Figure | None:
    """The phases over the two knobs (``keys[0]`` across, ``keys[1]`` up), one colour each."""
    v = variant_phases(results)
    if v is None or not set(keys[:2]) <= set(v.columns):
        return None
    cells = cell_phases(v, keys[:2])
    xs, ys = sort_values(cells[keys[0]]), sort_values(cells[keys[1]])
    grid = np.full((len(ys), len(xs)), np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 2, 0.8 * len(ys) + 1.5))
    table = cells[[keys[0], keys[1], "grokking_phase", "label"]]
    for x, y, phase, label in table.itertuples(index=False, name=None):
        i, j = ys.index(y), xs.index(x)
        grid[i, j] = GROKKING_PHASES.index(phase)
        ax.text(j, i, label, ha="center", va="center", fontsize=8)
    cmap = plt.get_cmap("Set2", len(GROKKING_PHASES))
    ax.imshow(grid, origin="lower", cmap=cmap, vmin=-0.5, vmax=len(GROKKING_PHASES) - 0.5)
    ax.set_xticks(range(len(xs)), format_values(xs))
    ax.set_yticks(range(len(ys)), format_values(ys))
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    ax.set_title("grokking phase (most common over seeds)")
    return fig


def plot_accuracy_by_cell(results: Results, keys: list[str]) -> plt.Figure | None:
    """Train and test accuracy (mean over seeds) against log step, one panel per cell."""
    v = variant_phases(results)
    curves = results.curves
    if v is None or "step" not in curves or not set(keys[:2]) <= set(v.columns):
        return None
    joined = curves.merge(v[["variant_id", *keys[:2]]], on="variant_id", how="inner")
    joined = joined[pd.to_numeric(joined["step"], errors="coerce") > 0]
    xs, ys = sort_values(v[keys[0]]), sort_values(v[keys[1]])
    fig, axes = plt.subplots(
        len(ys), len(xs), figsize=(2.2 * len(xs), 1.8 * len(ys)), sharex=True, sharey=True,
        squeeze=False,
    )  # fmt: skip
    for (x, y), g in joined.groupby(keys[:2]):
        ax = axes[len(ys) - 1 - ys.index(y), xs.index(x)]
        mean = g.groupby("step")[["train_acc", "test_acc"]].mean()
        ax.plot(mean.index, mean["train_acc"], label="train")
        ax.plot(mean.index, mean["test_acc"], label="test")
        ax.set_xscale("log")
        ax.set_title(
            f"{keys[0]}={format_values([x])[0]}, {keys[1]}={format_values([y])[0]}", fontsize=7
        )
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7)
    fig.supxlabel("step (log)")
    fig.supylabel("accuracy")
    return fig


def aligned(results: Results) -> tuple[pd.DataFrame, list[str]] | None:
    """Trajectory rows of the runs that generalised with ``relative_step = step / test_step``,
    and the columns drawn (a sharpness column, then ``param_norm``), or None."""
    v = variant_phases(results)
    traj = results.trajectory
    if v is None or traj is None or "step" not in traj:
        return None
    cols = [c for c in SHARPNESS if c in traj and traj[c].notna().any()][:1]
    cols += ["param_norm"] if "param_norm" in traj and traj["param_norm"].notna().any() else []
    gen = v[v["test_step"].notna() & (v["test_step"] > 0)][
        ["variant_id", "grokking_phase", "test_step"]
    ]
    if not cols or gen.empty:
        return None
    rows = traj[["variant_id", "step", *cols]].merge(gen, on="variant_id", how="inner")
    rows = rows[pd.to_numeric(rows["step"], errors="coerce") > 0]
    rows = rows.assign(relative_step=rows["step"] / rows["test_step"])
    return rows, cols


def plot_aligned(results: Results) -> plt.Figure | None:
    """Sharpness and weight norm against step / test_step (log), one line per run."""
    got = aligned(results)
    if got is None:
        return None
    rows, cols = got
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for _, g in rows.groupby("variant_id"):
            g = g.dropna(subset=[col]).sort_values("relative_step")
            ax.plot(g["relative_step"], g[col], lw=0.8, alpha=0.6)
        ax.axvline(1.0, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("step / step of generalisation (log)")
        ax.set_title(shown(results.columns, col).title())
    return fig
