"""The report's grokking section: the phase map over two knobs, accuracy against log step per
cell, and sharpness and weight norm along training aligned on the step of generalisation.

Phases come from :func:`analysis.grokking.grokking_phases` on the curves table; a cell's phase
is its seeds' most common one (ties: the earlier in :data:`analysis.grokking.GROKKING_PHASES`),
written with the count when the seeds disagree (``grokking 2/3``). The aligned panel puts each
run that generalised at ``step / test_step`` on a log axis (1: the step its test accuracy
crossed), so runs of very different delays line up on their generalisation. Panels and labels
come from the results' catalogue (:mod:`analysis.columns`): the trajectory's sharpness columns
(``sharpness``, else ``hessian_top_eig``, else ``hessian_trace``) and ``param_norm``.

Between seeds at the end of training (the ``pairs`` table: distance, CKA, linear barrier,
Bezier mc), each pair takes its two runs' phase when they agree and ``mixed`` when they do
not; the pair metrics are drawn over the two knobs (mean over a cell's pairs) and by that
phase. A Bezier curve whose training loss still fell by more than the phase rule's
``mc_converge_tol`` over its last fifth of steps (``bezier_improvement``) measured its own
under-training, not the landscape: its mc is left out of both figures and of the table, which
counts the curves kept.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.columns import shown
from analysis.grokking import GROKKING_PHASES, grokking_phases
from analysis.heatmap import format_values, metric_heatmap, sort_values
from analysis.load import Results
from analysis.phases import PhaseThresholds

SHARPNESS = ("sharpness", "hessian_top_eig", "hessian_trace")
# between seeds, in this order where measured: distance, CKA (Yang's softmax, then features),
# the linear barrier in error and Bezier mode connectivity
PAIR_METRICS = ("l2_distance", "cka_linear_softmax", "cka_linear_features", "barrier_error", "mc")
MIXED = "mixed"  # a pair whose two runs are in different phases
PAIR_PHASES = (*GROKKING_PHASES, MIXED)


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


def pair_phases(results: Results, keys: list[str]) -> tuple[pd.DataFrame, list[str]] | None:
    """Each pair of ok runs with its cell's knobs ``keys``, ``pair_phase`` (its runs' phase, or
    ``mixed``) and ``converged`` (False for a Bezier curve still improving: its ``mc`` is set
    to NaN), and the pair metrics present; None without pairs, phases or pair metrics."""
    v = variant_phases(results)
    pairs = results.pairs
    if v is None or pairs is None or not {"variant_a", "variant_b"} <= set(pairs.columns):
        return None
    cols = [c for c in PAIR_METRICS if c in pairs and pd.to_numeric(pairs[c]).notna().any()]
    if not cols or not set(keys) <= set(v.columns):
        return None
    phase = v.set_index("variant_id")["grokking_phase"]
    rows = pairs[pairs["variant_a"].isin(phase.index) & pairs["variant_b"].isin(phase.index)]
    rows = rows.merge(v[["variant_id", *keys]], left_on="variant_a", right_on="variant_id")
    a, b = phase.loc[rows["variant_a"]].to_numpy(), phase.loc[rows["variant_b"]].to_numpy()
    rows = rows.assign(pair_phase=np.where(a == b, a, MIXED))
    tol = PhaseThresholds().mc_converge_tol
    if "bezier_improvement" in rows:  # NaN (no curve, or too short to tell): no evidence
        improvement = pd.to_numeric(rows["bezier_improvement"], errors="coerce")
        rows = rows.assign(converged=~(improvement > tol))
    else:
        rows = rows.assign(converged=True)
    if "mc" in rows:
        rows["mc"] = pd.to_numeric(rows["mc"]).where(rows["converged"])
    return rows, [c for c in cols if rows[c].notna().any()]


def pair_phase_table(results: Results, keys: list[str]) -> pd.DataFrame | None:
    """Per pair phase: the number of pairs, the mean of each pair metric, and for ``mc`` the
    number of curves that converged (the mean is over those)."""
    got = pair_phases(results, keys)
    if got is None:
        return None
    rows, cols = got
    order = [p for p in PAIR_PHASES if p in set(rows["pair_phase"])]
    grouped = rows.groupby("pair_phase")
    table = pd.DataFrame({"pairs": grouped.size()})
    for c in cols:
        table[c] = grouped[c].mean()
    if "mc" in rows and "bezier_improvement" in rows:
        table["mc_curves_converged"] = grouped["converged"].sum().astype(int)
    return table.reindex(order).reset_index().rename(columns={"pair_phase": "phase"})


def plot_pair_map(results: Results, keys: list[str]) -> plt.Figure | None:
    """One heatmap per pair metric over the two knobs (mean over a cell's seed pairs)."""
    got = pair_phases(results, keys[:2])
    if got is None:
        return None
    rows, cols = got
    fig, axes = plt.subplots(
        1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False
    )  # fmt: skip
    for ax, col in zip(axes[0], cols):
        s = shown(results.columns, col)
        dropped = col == "mc" and not rows["converged"].all()
        title = f"{s.title()}\n(converged curves only)" if dropped else None
        metric_heatmap(rows, col, keys[0], keys[1], ax=ax, shown=s, title=title)
    fig.tight_layout()
    return fig


def plot_pairs_by_phase(results: Results, keys: list[str]) -> plt.Figure | None:
    """Each pair metric by pair phase: one dot per pair, a bar at each phase's mean."""
    got = pair_phases(results, keys[:2])
    if got is None:
        return None
    rows, cols = got
    order = [p for p in PAIR_PHASES if p in set(rows["pair_phase"])]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), squeeze=False)
    spread = np.random.default_rng(0)  # horizontal jitter only; the values are as measured
    for ax, col in zip(axes[0], cols):
        for i, p in enumerate(order):
            values = rows.loc[rows["pair_phase"] == p, col].dropna()
            if values.empty:
                continue
            x = i + spread.uniform(-0.15, 0.15, len(values))
            ax.scatter(x, values, s=14, alpha=0.7, color=f"C{PAIR_PHASES.index(p)}")  # per phase
            ax.hlines(values.mean(), i - 0.3, i + 0.3, color="k", lw=1.2)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        s = shown(results.columns, col)
        ax.set_title(s.title() + (" (converged)" if col == "mc" else ""), fontsize=9)
        ax.set_ylabel(s.colour_label())
    fig.tight_layout()
    return fig
