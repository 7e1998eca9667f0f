"""Aggregate runs and pairs to cells: one row per point of the (temperature, load) grid.

A *cell* is a setting of every swept knob except the seed: the temperature axis, the load
axis and any other axis the sweep varies (kept as extra key columns, so nothing is
averaged across a knob by accident). Per cell, every numeric run metric gets

- ``<metric>``: mean over the seeds that finished (``status == "ok"``),
- ``<metric>_std``: sample standard deviation over those seeds (ddof 1; NaN for one seed),
- ``<metric>_n``: how many seeds had a finite value,

plus ``n_runs``, ``n_ok``, ``n_diverged``, ``n_failed`` and the derived
``gen_gap = train_acc - test_acc`` (computed per run, then aggregated).

Pair metrics (``mc``, CKA, distances, barriers) are first aggregated per replicate group
(mean, std and count over the seed pairs of the group) and then joined onto the cell of
that group; if several groups fall in one cell their means are averaged and their pair
counts summed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import Results

# Columns of runs that are identifiers or bookkeeping, never metrics.
NOT_METRICS = frozenset(
    {
        "variant_id",
        "group_id",
        "pack_id",
        "metrics_id",
        "seed",
        "status",
        "error",
        "metric_errors",
        "diverged_step",
        "device",
        "best_epoch",
        "pack_members",
        "pack_wall_time_s",
        "finished_at",
        "measured_from",
    }
)
PAIR_KEYS = ("group_id", "variant_a", "variant_b")


def cell_keys(results: Results, temperature: str, load: str) -> list[str]:
    """``[temperature, load]`` followed by the other non-seed axes the runs actually vary."""
    extra = [
        a
        for a in results.axes
        if a not in ("seed", temperature, load)
        and a in results.runs
        and results.runs[a].nunique(dropna=True) > 1
    ]
    return [temperature, load, *extra]


def metric_columns(frame: pd.DataFrame, exclude: frozenset[str] = NOT_METRICS) -> list[str]:
    """Numeric (or boolean) columns that are metrics: not knobs (``a.b``) nor identifiers."""
    cols = []
    for col in frame.columns:
        if col in exclude or "." in col:
            continue
        if pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col]):
            cols.append(col)
    # a metric's own spread column (roughness_std: over directions, of one model) would take the
    # name of that metric's spread over seeds: in cells, <metric>_std is always the seeds' spread
    return [c for c in cols if not (c.endswith("_std") and c[: -len("_std")] in cols)]


def with_gen_gap(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus ``gen_gap = train_acc - test_acc`` when both accuracies are present."""
    if {"train_acc", "test_acc"} <= set(runs.columns) and "gen_gap" not in runs:
        runs = runs.assign(gen_gap=runs["train_acc"] - runs["test_acc"])
    return runs


def _mean_std_n(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    values = frame[metrics].astype(float).replace([np.inf, -np.inf], np.nan)
    grouped = values.groupby([frame[k] for k in keys], dropna=False)
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    std.columns = [f"{c}_std" for c in std.columns]
    n.columns = [f"{c}_n" for c in n.columns]
    return pd.concat([mean, std, n], axis=1)


def aggregate_runs(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per cell: status counts, and mean/std/n over ok seeds of every run metric."""
    runs = with_gen_gap(runs)
    status = runs["status"] if "status" in runs else pd.Series("ok", index=runs.index)
    counts = (
        pd.DataFrame(
            {
                "n_runs": 1,
                "n_ok": status.eq("ok"),
                "n_diverged": status.eq("diverged"),
                "n_failed": status.eq("failed"),
            },
            index=runs.index,
        )
        .astype(int)
        .groupby([runs[k] for k in keys], dropna=False)
        .sum()
    )
    ok = runs[status.eq("ok")]
    metrics = metric_columns(runs)
    stats = _mean_std_n(ok, keys, metrics) if len(ok) and metrics else None
    cells = counts if stats is None else counts.join(stats, how="left")
    return cells.reset_index()


def aggregate_pairs(pairs: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Pair metrics per group (mean/std/n over seed pairs), then per cell of that group."""
    metrics = metric_columns(pairs, exclude=frozenset(PAIR_KEYS))
    per_group = _mean_std_n(pairs, ["group_id"], metrics).reset_index()
    group_cells = runs.drop_duplicates("group_id")[["group_id", *keys]]
    joined = per_group.merge(group_cells, on="group_id", how="inner")
    grouped = joined.groupby(keys, dropna=False)
    agg = {m: "mean" for m in metrics}
    agg.update({f"{m}_std": "mean" for m in metrics})
    agg.update({f"{m}_n": "sum" for m in metrics})
    out = grouped.agg(agg)
    out["n_groups"] = grouped.size()
    return out.reset_index()


def aggregate_cells(
    results: Results, temperature: str | None = None, load: str | None = None
) -> pd.DataFrame:
    """Cells of the (temperature, load) grid with run and pair metrics (see module docstring).

    Axes default to the manifest's ``analysis`` entry; the key columns are
    :func:`cell_keys`. Rows are sorted by the keys.
    """
    temperature, load = results.analysis_axes(temperature, load)
    keys = cell_keys(results, temperature, load)
    cells = aggregate_runs(results.runs, keys)
    if results.pairs is not None and len(results.pairs) and "group_id" in results.runs:
        pair_cells = aggregate_pairs(results.pairs, results.runs, keys)
        cells = cells.merge(pair_cells, on=keys, how="left", suffixes=("", "_pair"))
    cells = cells.sort_values(keys, kind="stable", ignore_index=True)
    cells.attrs.update(temperature=temperature, load=load, keys=keys)
    return cells
