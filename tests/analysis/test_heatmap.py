"""Heatmaps: numeric ordering of axis labels, log colour, PNG output."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.heatmap import (
    format_value,
    format_values,
    grid,
    is_geometric,
    save_heatmap,
    sort_values,
)
from analysis.load import load_results


def test_axis_values_sort_numerically_not_as_text():
    assert sort_values([256, 16, 1024, 64]) == [16, 64, 256, 1024]
    assert [format_value(v) for v in sort_values([1e-4, 0.1, 1e-2])] == ["1e-04", "0.01", "0.1"]
    assert format_value(16.0) == "16"


def test_geometric_grids_are_recognised():
    assert is_geometric([16, 64, 256, 1024])
    assert is_geometric([1e-4, 1e-3, 1e-2, 1e-1])
    assert not is_geometric([0.0, 0.2, 0.4, 0.8])
    assert not is_geometric([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def test_grid_is_mean_over_seeds_with_largest_load_on_top():
    frame = pd.DataFrame(
        {
            "x": [256, 16, 16, 256],
            "y": [4, 4, 32, 32],
            "seed": [0, 0, 0, 0],
            "m": [1.0, 2.0, 3.0, 5.0],
        }
    )
    frame = pd.concat([frame, frame.assign(seed=1, m=frame["m"] + 1)])
    table = grid(frame, "m", "x", "y")
    assert list(table.columns) == ["16", "256"] and list(table.index) == ["32", "4"]
    # cell (x=256, y=32): seeds 5 and 6 -> 5.5
    assert table.loc["32", "256"] == pytest.approx(5.5)


def test_save_heatmap_writes_png(results_dir, tmp_path):
    runs = load_results(results_dir).ok_runs
    path = save_heatmap(
        runs, "hessian_trace", "optim.batch_size", "model.width", tmp_path / "h.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_metric_is_named(results_dir):
    from analysis.heatmap import metric_heatmap

    with pytest.raises(ValueError, match="'nope'"):
        metric_heatmap(load_results(results_dir).runs, "nope", "optim.batch_size", "model.width")


def test_close_values_get_distinct_labels():
    assert format_values([2e-4, 2.4e-4, 1e-3]) == ["2.0e-04", "2.4e-04", "0.001"]
    assert format_values([0.1, 0.1004, 16]) == ["0.1", "0.1004", "16"]
    assert format_values([0.1, 0.2]) == ["0.1", "0.2"]  # no more digits than needed
    assert format_values([0.1, 0.1]) == ["0.1", "0.1"]
