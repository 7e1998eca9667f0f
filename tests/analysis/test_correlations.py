"""Kendall tau against an independent reference, and Jiang et al.'s granulated score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.cells import aggregate_cells
from analysis.correlations import correlation_table, granulated_taus, kendall_tau, plot_correlations
from analysis.load import load_results


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        pytest.param([1, 2, 3, 4], [1, 2, 3, 4], 1.0, id="monotone"),
        pytest.param([1, 2, 3, 4], [4, 3, 2, 1], -1.0, id="reversed"),
        # 6 pairs: 5 concordant, 1 discordant -> (5 - 1) / 6
        pytest.param([1, 2, 3, 4], [1, 2, 4, 3], 4 / 6, id="one swap"),
        # tau-b with a tie in x: the 5 untied pairs concord, S = 5; untied 5 (x), 6 (y)
        pytest.param([1, 1, 2, 3], [1, 2, 3, 4], 5 / np.sqrt(30), id="ties"),
        pytest.param([1, np.nan, 2, 3], [1, 5, 2, 3], 1.0, id="nan dropped"),
        pytest.param([1, 1, 1], [1, 2, 3], np.nan, id="constant"),
    ],
)
def test_kendall_tau_b(x, y, expected):
    got = kendall_tau(x, y)
    assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected)


def test_kendall_tau_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40), rng.normal(size=40)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_granulated_tau_isolates_each_knob():
    # m tracks the target along knob a only; along b the target moves and m does not.
    grid = pd.DataFrame([(a, b) for a in (1, 2, 3) for b in (1, 2)], columns=["a", "b"])
    grid["target"] = grid["a"] + 10 * grid["b"]
    grid["m"] = grid["a"] - 0.1 * grid["b"] * (grid["a"] == 2)
    psi = granulated_taus(grid, "m", "target", ["a", "b"])
    assert psi["a"] == pytest.approx(1.0)  # within each b, m ranks like the target
    # within a=1 and a=3 m is constant (NaN, skipped); within a=2 m falls as target rises
    assert psi["b"] == pytest.approx(-1.0)


def test_table_covers_every_measure_for_both_targets(results_dir):
    results = load_results(results_dir)
    cells = aggregate_cells(results)
    # a bookkeeping column the catalogue does not declare is no measure
    cells["pack_peak_bytes"] = np.arange(len(cells), dtype=float)
    table = correlation_table(cells, cells.attrs["keys"], columns=results.columns)
    assert set(table["target"]) == {"test_acc", "gen_gap"}
    measures = set(table["measure"])
    assert {"hessian_trace", "mc", "cka_linear_softmax", "train_loss"} <= measures
    assert not measures & {"test_acc", "gen_gap", "test_loss", "n_ok", "pack_peak_bytes"}
    assert not measures & {"hessian_trace_se", "wall_time_s"}
    # results without declared columns: every numeric column but keys, counts, old bookkeeping
    old = set(correlation_table(cells, cells.attrs["keys"])["measure"])
    assert measures <= old and "pack_peak_bytes" in old and "n_ok" not in old
    assert {"tau[optim.batch_size]", "tau[model.width]", "Psi"} <= set(table.columns)
    # Planted: sharper cells generalise worse.
    row = table[(table["measure"] == "hessian_trace") & (table["target"] == "test_acc")].iloc[0]
    assert row["tau"] < -0.5
    assert plot_correlations(table) is not None


def test_kendall_tau_of_thousands_of_cells_takes_milliseconds_and_gives_a_p_value():
    """scipy's O(n log n) tau, not all n^2 pairs in memory (6,000 cells: 18 million pairs)."""
    import time

    from scipy import stats

    from analysis.correlations import kendall_tau_test

    rng = np.random.default_rng(0)
    x = rng.normal(size=6000)
    y = x + rng.normal(size=6000)
    t0 = time.perf_counter()
    tau, p = kendall_tau_test(x, y)
    assert time.perf_counter() - t0 < 0.2
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic) and 0 < tau < 1
    assert p < 1e-100
