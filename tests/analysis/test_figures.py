"""Every figure is drawn when its data exists and left out (None) when it does not."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis.cells import aggregate_cells
from analysis.correlations import correlation_table, small_sample_warnings
from analysis.curves import (
    curve_axis,
    plot_lr_range,
    plot_training_curves,
    variant_labels,
    variant_order,
)
from analysis.heatmap import metric_heatmap
from analysis.load import load_results
from analysis.phase_diagram import (
    phase_regions,
    plot_phase_diagram,
    plot_phase_panels,
    present_panels,
)
from analysis.phases import classify_phases
from analysis.surfaces import (
    SPECTRUM_DECADES,
    plot_paths,
    plot_spectra,
    plot_stiffness,
    plot_surface_1d,
    plot_surface_2d,
)

from .fake_results import write_results

KEYS = ["optim.batch_size", "model.width"]


def _figures(results):
    labels = variant_labels(results.runs, KEYS)
    s = results.surfaces
    return {
        "curves": plot_training_curves(results),
        "lr_range": plot_lr_range(results),
        "surface_1d": plot_surface_1d(s, labels),
        "surface_2d": plot_surface_2d(s, labels, log=True),
        "surface_3d": plot_surface_2d(s, labels, three_d=True, max_variants=1),
        "mli": plot_paths(s, "mli", labels),
        "interpolation": plot_paths(s, "interpolation", labels),
        "bezier": plot_paths(s, "bezier", labels),
        "stiffness": plot_stiffness(results.stiffness, labels),
        "spectra": plot_spectra(results.spectra, labels),
    }


def test_every_present_table_gets_its_figure(results_dir):
    figures = _figures(load_results(results_dir))
    missing = [name for name, fig in figures.items() if fig is None]
    assert not missing
    plt.close("all")


def test_absent_tables_get_no_figure(minimal_dir):
    figures = _figures(load_results(minimal_dir))
    assert [name for name, fig in figures.items() if fig is not None] == ["curves"]


def test_curves_overlay_learning_rate_when_swept(tmp_path, results_dir):
    assert curve_axis(load_results(results_dir)) == "optim.batch_size"
    root = write_results(
        tmp_path / "r", lrs=(0.01, 0.1), tables=("runs", "curves"), local_metrics=()
    )
    results = load_results(root)
    assert curve_axis(results) == "optim.lr"
    fig = plot_training_curves(results)
    (legend,) = fig.legends  # beside the panels, not over the curves
    assert [t.get_text() for t in legend.get_texts()] == ["0.01", "0.1"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "train_loss (nats)"
    plt.close("all")


def test_phase_panels_leave_out_unmeasured_metrics(results_dir, minimal_dir):
    results = load_results(results_dir)
    full = aggregate_cells(results)
    assert [p.name for p in present_panels(full, results.columns)] == [
        "train_loss",
        "hessian_trace",
        "hessian_top_eig",
        "mc",
        "cka_linear_softmax",
        "l2_distance",
    ]
    minimal = load_results(minimal_dir)
    bare = classify_phases(aggregate_cells(minimal), num_classes=10)
    assert [p.name for p in present_panels(bare, minimal.columns)] == ["train_loss"]
    fig = plot_phase_panels(bare, *KEYS, columns=minimal.columns)
    assert sum(ax.get_visible() for ax in fig.axes) == 2  # one panel and its colorbar
    plt.close("all")


def test_phase_diagram_labels_each_region_once(results_dir):
    results = load_results(results_dir)
    cells = classify_phases(aggregate_cells(results), num_classes=results.num_classes())
    ax = plot_phase_diagram(cells, *KEYS)
    labels = [t.get_text() for t in ax.texts if t.get_text() in {"I", "II", "III", "IV-A", "IV-B"}]
    # Planted map: I, II, IV-A and IV-B are one region each; III is two (left band, right column).
    assert sorted(labels) == sorted(["I", "II", "III", "III", "IV-A", "IV-B"])
    # A reader is told what each region means, once per phase present, below the map.
    legend = [t.get_text() for t in ax.texts if "\n" in t.get_text()]
    assert legend == [
        "I: not fitted, sharp, barrier between seeds\n"
        "II: not fitted, sharp, seeds connected\n"
        "III: fitted, flat, barrier between seeds\n"
        "IV-A: fitted, flat, seeds connected, dissimilar outputs\n"
        "IV-B: fitted, flat, seeds connected, similar outputs"
    ]
    plt.close("all")


def test_phase_regions_are_four_connected():
    labels = pd.DataFrame([["a", "b"], ["b", "a"]])
    assert sorted(len(cells) for _, cells in phase_regions(labels)) == [1, 1, 1, 1]


def test_unknown_path_kind_is_named():
    with pytest.raises(ValueError, match="'2d'"):
        plot_paths(None, "2d", {})


def _colour_bar_label(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_colour_bars_name_their_units(results_dir):
    """Units, log scale and the diverging centre come from the results' catalogue."""
    results = load_results(results_dir)
    cells = aggregate_cells(results)
    for metric, label in (
        ("mc", "mc (percentage points)"),
        ("barrier_loss", "barrier_loss (nats)"),
        ("barrier_error", "barrier_error (percentage points)"),
        ("train_loss", "log10 train_loss (nats)"),
        ("test_acc", "test_acc (fraction)"),
        ("hessian_trace", "log10 hessian_trace (nats / weight^2)"),
        ("hessian_top_eig", "log10 hessian_top_eig (nats / weight^2)"),
        ("l2_distance", "log10 l2_distance (weight units)"),
    ):
        ax = metric_heatmap(cells, metric, *KEYS, shown=results.columns[metric])
        assert _colour_bar_label(ax.figure) == [label]
        # The title is the catalogue's label, never the raw column name.
        title = results.columns[metric].label + (" (log10)" if "log10" in label else "")
        assert ax.get_title() == title
        assert _colour_bar_label(metric_heatmap(cells, metric, *KEYS).figure) == [metric]
    classified = classify_phases(cells, num_classes=10)
    panels = plot_phase_panels(classified, *KEYS, columns=results.columns)
    bars = _colour_bar_label(panels)
    assert "mc (percentage points)" in bars and "log10 train_loss (nats)" in bars
    assert plot_phase_panels(classified, *KEYS) is None  # nothing declares a phase signal
    plt.close("all")


def test_results_before_the_catalogue_declared_columns_are_drawn_plainly(tmp_path):
    """Without the catalogue's columns every aggregated measurement gets a plain heatmap."""
    from analysis.report import heatmap_columns

    old = load_results(write_results(tmp_path / "old", tables=("runs", "pairs"), catalogue=False))
    assert old.columns == {}
    drawn = heatmap_columns(old, aggregate_cells(old))
    names = [c.name for c in drawn]
    assert {"test_acc", "train_loss", "gen_gap", "hessian_trace", "mc"} <= set(names)
    assert all(c.unit is None and not c.log for c in drawn)
    assert not {"n_ok", "n_runs", "model.width"} & set(names)
    plt.close("all")


def test_the_report_draws_the_catalogues_columns_in_their_order(results_dir):
    from analysis.report import heatmap_columns

    results = load_results(results_dir)
    names = [c.name for c in heatmap_columns(results, aggregate_cells(results))]
    assert names[:6] == ["test_acc", "train_acc", "gen_gap", "train_loss", "test_loss",
                         "hessian_trace"]  # fmt: skip
    assert names.index("mc") < names.index("cka_linear_softmax") < names.index("barrier_error")
    assert "hessian_trace_se" not in names  # no place in the report


def test_phase_diagram_numbers_are_dark_on_light_cells_and_white_on_dark(results_dir):
    cells = classify_phases(aggregate_cells(load_results(results_dir)), num_classes=10)
    ax = plot_phase_diagram(cells, *KEYS)
    numbers = {t.get_text(): t.get_color() for t in ax.texts if t.get_fontsize() == 7}
    best, worst = f"{cells['test_acc'].max():.2f}", f"{cells['test_acc'].min():.2f}"
    # viridis: yellow (light) at the top of the scale, purple (dark) at the bottom
    assert numbers[best] == ".15" and numbers[worst] == "w"
    plt.close("all")


def _grid_paths() -> tuple[pd.DataFrame, pd.DataFrame]:
    """MLI paths of a 5 batch sizes x 4 widths x 2 seeds sweep, like the demo's."""
    runs, rows = [], []
    for b in (16, 32, 64, 128, 256):
        for w in (8, 16, 32, 64):
            for seed in (0, 1):
                vid = f"v{b}-{w}-{seed}"
                runs.append(
                    {"variant_id": vid, "optim.batch_size": b, "model.width": w, "seed": seed}
                )
                for a in (0.0, 0.5, 1.0):
                    rows.append({"variant_id": vid, "kind": "mli", "alpha": a, "loss": 1 - a})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def test_path_figures_honour_max_variants_spread_over_the_grid():
    runs, surfaces = _grid_paths()
    labels, order = variant_labels(runs, KEYS), variant_order(runs, KEYS)
    fig = plot_paths(surfaces, "mli", labels, max_variants=4, order=order)
    drawn = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    # 20 cells in grid order (batch size, then width); np.linspace(0, 19, 4) rounds to cells
    # 0, 6, 13, 19; one seed each (the smallest). In string order they were all batch 128.
    assert drawn == [
        "batch_size=16, width=8, seed=0",
        "batch_size=32, width=32, seed=0",
        "batch_size=128, width=16, seed=0",
        "batch_size=256, width=64, seed=0",
    ]
    assert "(4 of 40, spread over the grid)" in fig._suptitle.get_text()
    two = plot_paths(surfaces, "mli", labels, max_variants=2, order=order)
    assert len(two.axes[0].lines) == 2
    plt.close("all")


def test_spectra_show_six_decades_below_the_peak(results_dir):
    results = load_results(results_dir)
    fig = plot_spectra(results.spectra, variant_labels(results.runs, KEYS))
    peak = max(line.get_ydata().max() for line in fig.axes[0].lines)
    assert fig.axes[0].get_ylim()[0] == pytest.approx(peak * 10.0**-SPECTRUM_DECADES)
    plt.close("all")


def test_kendall_tau_from_two_cells_is_flagged():
    cells = pd.DataFrame(
        {
            "optim.batch_size": [16, 64],
            "model.width": [8, 8],
            "hessian_trace": [1.0, 2.0],
            "test_acc": [0.9, 0.8],
        }
    )
    table = correlation_table(cells, KEYS)
    assert set(table["tau"]) == {-1.0}  # two cells: -1 or +1 whatever the measure
    warnings = small_sample_warnings(table, cells, KEYS)
    assert warnings[0].startswith("Some taus come from only 2 cells")
    assert any("optim.batch_size takes 2 values" in w for w in warnings)
