"""Heatmaps: numeric ordering of axis labels, log colour, PNG output."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.heatmap import (
    format_value,
    format_values,
    grid,
    is_geometric,
    metric_heatmap,
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


def _labels_frame(long: bool) -> pd.DataFrame:
    """A 9 x 3 grid; long x labels overlap when horizontal (seaborn's own check rotates them),
    short ones do not."""
    xs = [f"a rather long label {i}" if long else 2**i for i in range(9)]
    return pd.DataFrame(
        [{"x": x, "y": y, "m": float(i * 3 + y)} for i, x in enumerate(xs) for y in range(3)]
    )


def test_skipping_seaborns_overlap_draw_changes_no_pixel(results_dir, tmp_path, monkeypatch):
    """The heatmap and the multi-panel phase figure are byte-identical PNGs with seaborn's
    overlap draw skipped (draw_grid sets both label rotations after it) and with it run; the
    figures are deterministic (Agg, no dates in the PNG), so any difference is a change."""
    import contextlib

    from analysis import heatmap
    from analysis.cells import aggregate_cells
    from analysis.phase_diagram import plot_phase_panels
    from analysis.phases import classify_phases

    results = load_results(results_dir)
    t, load = results.analysis_axes()
    cells = classify_phases(aggregate_cells(results, t, load), num_classes=results.num_classes())

    def draw(name: str) -> list[bytes]:
        pngs = [
            heatmap.save_heatmap(_labels_frame(long), "m", "x", "y", tmp_path / f"{name}{long}.png")
            for long in (False, True)
        ]
        fig = plot_phase_panels(cells, t, load, columns=results.columns)
        pngs.append(heatmap.save_figure(fig, tmp_path / f"{name}_panels.png"))
        return [p.read_bytes() for p in pngs]

    skipped = draw("skipped")
    monkeypatch.setattr(heatmap, "no_overlap_draw", contextlib.nullcontext)
    assert draw("drawn") == skipped


def test_seaborns_overlap_draw_is_skipped_in_draw_grid(monkeypatch):
    """What the skip buys (a third of each heatmap's time) holds only while seaborn's helper
    is the one replaced: a seaborn that renamed it fails here."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    import seaborn.matrix

    calls = []
    drawn = seaborn.matrix._draw_figure
    monkeypatch.setattr(seaborn.matrix, "_draw_figure", lambda fig: calls.append(drawn(fig)))
    frame = _labels_frame(long=True)
    metric_heatmap(frame, "m", "x", "y")
    assert calls == []
    sns.heatmap(grid(frame, "m", "x", "y"), ax=plt.subplots()[1])
    assert len(calls) == 1
    plt.close("all")
