"""Rank correlation of every measure with generalisation, overall and granulated per knob.

Following Jiang et al. (2019), "Fantastic generalization measures and where to find them"
(ICLR 2020), Sec. 2.2: for a measure mu and a target g (test accuracy, or the
generalisation gap ``train_acc - test_acc``),

- the **overall** Kendall tau is computed over every cell of the sweep;
- the **granulated** tau of knob i, psi_i, is the mean of the taus computed within each
  group of cells in which only knob i varies (all other knobs fixed); groups with fewer
  than two values of the knob are skipped;
- **Psi**, the granulated score, is the mean of psi_i over the knobs.

Cells are the seed-averaged points of :func:`analysis.cells.aggregate_cells`, so run
metrics and pair metrics (mc, CKA) are ranked on the same footing. The measures are the
columns the results' catalogue declares (training's and the metrics'), less the targets and
the test set's own numbers; a new bookkeeping column never becomes a measure. Kendall's tau-b (ties
corrected) is computed here with numpy, so nothing beyond numpy is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.columns import Shown

TARGETS = ("test_acc", "gen_gap")
# What generalisation is, not what predicts it: the targets and the test set's own numbers.
NOT_PREDICTORS = frozenset({*TARGETS, "test_loss"})
# Results written before the catalogue declared columns: the bookkeeping columns of their runs
# and cells (a closed set; newer results name their measures in the catalogue).
_OLD_BOOKKEEPING = frozenset(
    {"wall_time_s", "pack_wall_time_s", "pack_members", "best_epoch", "n_runs", "n_ok",
     "n_diverged", "n_failed", "n_groups"}
)  # fmt: skip


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of paired samples, ignoring pairs with a non-finite value
    (``scipy.stats.kendalltau``, which also gives the p-value: :func:`kendall_tau_test`).

    NaN when fewer than two pairs remain or one side is constant.

    >>> kendall_tau([1, 2, 3], [10, 20, 30]), kendall_tau([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    return kendall_tau_test(x, y)[0]


def kendall_tau_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(tau-b, two-sided p-value) over the pairs where both values are finite; NaNs when
    fewer than two pairs remain or one side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan")
    from scipy import stats  # here: importing scipy.stats costs 0.7 s, paid only when used

    result = stats.kendalltau(x, y, variant="b")
    return float(result.statistic), float(result.pvalue)


def granulated_taus(
    cells: pd.DataFrame, measure: str, target: str, knobs: Sequence[str]
) -> dict[str, float]:
    """psi_i per knob: mean tau within groups of cells where only knob i varies."""
    out = {}
    for knob in knobs:
        others = [k for k in knobs if k != knob]
        groups = cells.groupby(others, dropna=False) if others else [(None, cells)]
        taus = [
            kendall_tau(g[measure], g[target])
            for _, g in groups
            if g[knob].nunique(dropna=True) > 1
        ]
        taus = [t for t in taus if np.isfinite(t)]
        out[knob] = float(np.mean(taus)) if taus else float("nan")
    return out


def measure_columns(
    cells: pd.DataFrame, keys: Sequence[str], columns: Mapping[str, Shown] | None = None
) -> list[str]:
    """Cell columns that are measures: seed means of the columns ``columns`` declares
    (``Results.columns``), not targets, test-set numbers, spreads or probe counts, that vary.
    Without declared columns (older results): every numeric column but keys, counts and the
    old bookkeeping."""
    out = []
    for col in cells.columns:
        if col in keys or col in NOT_PREDICTORS or col.endswith(("_std", "_n", "_se", "_probes")):
            continue
        if (col not in columns) if columns else (col in _OLD_BOOKKEEPING):
            continue
        values = pd.to_numeric(cells[col], errors="coerce") if cells[col].dtype != object else None
        if values is not None and np.isfinite(values).sum() >= 2 and values.nunique() > 1:
            out.append(col)
    return out


def correlation_table(
    cells: pd.DataFrame,
    keys: Sequence[str],
    targets: Sequence[str] = TARGETS,
    columns: Mapping[str, Shown] | None = None,
) -> pd.DataFrame:
    """One row per (measure, target): ``n``, overall ``tau``, ``tau[<knob>]`` per knob, ``Psi``.

    ``keys`` are the knob columns of the cells (temperature, load, extra axes); ``columns``
    the results' declared columns (:func:`measure_columns`). Targets absent from ``cells`` are
    skipped; rows are sorted by target, then by ``|Psi|``.
    """
    rows = []
    for target in [t for t in targets if t in cells]:
        for measure in measure_columns(cells, keys, columns):
            psi = granulated_taus(cells, measure, target, keys)
            finite = [v for v in psi.values() if np.isfinite(v)]
            n = int(
                (
                    np.isfinite(pd.to_numeric(cells[measure], errors="coerce"))
                    & cells[target].notna()
                ).sum()
            )
            row = {
                "measure": measure,
                "target": target,
                "n": n,
                "tau": kendall_tau(cells[measure], cells[target]),
            }
            row.update({f"tau[{k}]": v for k, v in psi.items()})
            row["Psi"] = float(np.mean(finite)) if finite else float("nan")
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = table["Psi"].abs().fillna(table["tau"].abs()).fillna(-1)
    return (
        table.assign(_o=order)
        .sort_values(["target", "_o"], ascending=[True, False])
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def small_sample_warnings(
    table: pd.DataFrame, cells: pd.DataFrame, keys: Sequence[str]
) -> list[str]:
    """Warnings for taus that are +-1 (or nearly so) by construction: over 2 cells Kendall's
    tau can only be -1 or 1, over 3 cells only -1, -1/3, 1/3 or 1; and a knob with 2 values
    gives groups of 2 cells, so its granulated tau[knob] is a mean of +-1s."""
    out = []
    if len(table) and "n" in table:
        n = int(table["n"].min())
        if n <= 3:
            values = "-1 or +1" if n == 2 else "-1, -1/3, 1/3 or 1"
            out.append(
                f"Some taus come from only {n} cells: Kendall's tau over {n} cells can only be "
                f"{values}, whatever the measures; read them as signs, not strengths."
            )
    for knob in keys:
        if knob in cells and cells[knob].nunique(dropna=True) == 2 and f"tau[{knob}]" in table:
            out.append(
                f"{knob} takes 2 values, so tau[{knob}] averages taus over pairs of cells, each "
                "-1 or +1 by construction."
            )
    return out


def plot_correlations(table: pd.DataFrame) -> plt.Figure | None:
    """Bar plot of overall tau and Psi per measure, one panel per target; ``None`` if empty."""
    if table.empty:
        return None
    targets = list(dict.fromkeys(table["target"]))
    n_measures = table["measure"].nunique()
    fig, axes = plt.subplots(
        1, len(targets), figsize=(5.5 * len(targets), 1.5 + 0.32 * n_measures), squeeze=False
    )
    for ax, target in zip(axes.flat, targets):
        part = table[table["target"] == target]
        long = part.melt(
            id_vars="measure", value_vars=["tau", "Psi"], var_name="score", value_name="Kendall tau"
        )
        long["score"] = long["score"].map({"tau": "overall tau", "Psi": "granulated Psi"})
        y = np.arange(len(part))
        for k, (score, color) in enumerate(
            (("overall tau", "#4c72b0"), ("granulated Psi", "#dd8452"))
        ):
            values = long[long["score"] == score]["Kendall tau"].to_numpy(dtype=float)
            ax.barh(
                y + (k - 0.5) * 0.4, np.nan_to_num(values), height=0.4, color=color, label=score
            )
        ax.set_yticks(y, part["measure"])
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("Kendall tau")
        ax.set_title(f"vs {target}")
    handles, names = axes.flat[0].get_legend_handles_labels()
    # Beside the panels, never over the bars (a measure near -1 reaches the lower left).
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.tight_layout()
    return fig
