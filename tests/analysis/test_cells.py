"""Aggregation to cells: mean/std/n over ok seeds, status counts, pairs joined per group."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.cells import aggregate_cells
from analysis.load import load_results

from .fake_results import write_results


def _cell(cells, bs, width):
    row = cells[(cells["optim.batch_size"] == bs) & (cells["model.width"] == width)]
    assert len(row) == 1
    return row.iloc[0]


def test_one_row_per_cell_with_mean_std_n_over_seeds(results_dir):
    results = load_results(results_dir)
    cells = aggregate_cells(results)
    assert len(cells) == 16
    assert cells.attrs["keys"] == ["optim.batch_size", "model.width"]
    runs = results.runs
    seeds = runs[(runs["optim.batch_size"] == 64) & (runs["model.width"] == 16)]["test_acc"]
    cell = _cell(cells, 64, 16)
    assert cell["test_acc"] == pytest.approx(seeds.mean())
    assert cell["test_acc_std"] == pytest.approx(seeds.std(ddof=1))
    assert cell["test_acc_n"] == 3 and cell["n_ok"] == 3


def test_diverged_runs_are_counted_not_averaged(results_dir):
    # The fake sweep marks (width 8, batch 1024, seed 2) diverged with NaN metrics.
    cell = _cell(aggregate_cells(load_results(results_dir)), 1024, 8)
    assert (cell["n_runs"], cell["n_ok"], cell["n_diverged"]) == (3, 2, 1)
    assert cell["test_acc_n"] == 2 and np.isfinite(cell["test_acc"])


def test_gen_gap_is_train_minus_test_accuracy(results_dir):
    cells = aggregate_cells(load_results(results_dir))
    # Mean of differences equals difference of means when both have the same seeds.
    assert np.allclose(cells["gen_gap"], cells["train_acc"] - cells["test_acc"])


def test_pairs_are_aggregated_per_group_and_joined(results_dir):
    results = load_results(results_dir)
    cells = aggregate_cells(results)
    pairs = results.pairs[results.pairs["group_id"] == "g16-64-0.1"]
    cell = _cell(cells, 64, 16)
    assert cell["mc"] == pytest.approx(pairs["mc"].mean())
    assert cell["mc_std"] == pytest.approx(pairs["mc"].std(ddof=1))
    assert cell["mc_n"] == 3  # 3 seeds -> 3 pairs
    assert _cell(cells, 1024, 8)["mc_n"] == 1  # one seed diverged -> 1 pair


def test_extra_axes_stay_keys_and_axes_can_be_overridden(tmp_path):
    root = write_results(
        tmp_path / "r", lrs=(0.01, 0.1), tables=("runs", "pairs"), local_metrics=()
    )
    results = load_results(root)
    cells = aggregate_cells(results)
    assert cells.attrs["keys"] == ["optim.batch_size", "model.width", "optim.lr"]
    assert len(cells) == 32
    swapped = aggregate_cells(results, temperature="optim.lr", load="model.width")
    assert swapped.attrs["keys"] == ["optim.lr", "model.width", "optim.batch_size"]


def test_a_metrics_own_spread_column_does_not_collide_with_the_seed_spread():
    """``roughness_std`` (over directions, of one model) and the seeds' spread of ``roughness``
    would share a name in cells (they did: duplicate columns, and the report failed on them):
    in cells ``<metric>_std`` is always the seeds' spread."""
    import pandas as pd

    from analysis.cells import aggregate_runs

    runs = pd.DataFrame(
        {
            "model.width": [4, 4, 8, 8],
            "seed": [0, 1, 0, 1],
            "status": "ok",
            "roughness": [1.0, 3.0, 2.0, 2.0],
            "roughness_std": [0.5, 0.5, 0.1, 0.1],
        }
    )
    cells = aggregate_runs(runs, ["model.width"])
    assert cells.columns.is_unique
    assert cells["roughness_std"].tolist() == pytest.approx([np.sqrt(2.0), 0.0])
