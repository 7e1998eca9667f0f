"""Every figure is drawn when its data exists and left out (None) when it does not."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis.cells import aggregate_cells
from analysis.curves import curve_axis, plot_lr_range, plot_training_curves, variant_labels
from analysis.load import load_results
from analysis.phase_diagram import (
    phase_regions,
    plot_phase_diagram,
    plot_phase_panels,
    present_panels,
)
from analysis.phases import classify_phases
from analysis.surfaces import (
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
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0.01", "0.1"]
    plt.close("all")


def test_phase_panels_leave_out_unmeasured_metrics(results_dir, minimal_dir):
    full = aggregate_cells(load_results(results_dir))
    assert [p[0] for p in present_panels(full)] == [
        "train_loss",
        "hessian_trace",
        "hessian_top_eig",
        "mc",
        "cka_linear_softmax",
        "l2_distance",
    ]
    bare = classify_phases(aggregate_cells(load_results(minimal_dir)), num_classes=10)
    assert [p[0] for p in present_panels(bare)] == ["train_loss"]
    fig = plot_phase_panels(bare, *KEYS)
    assert sum(ax.get_visible() for ax in fig.axes) == 2  # one panel and its colorbar
    plt.close("all")


def test_phase_diagram_labels_each_region_once(results_dir):
    results = load_results(results_dir)
    cells = classify_phases(aggregate_cells(results), num_classes=results.num_classes())
    ax = plot_phase_diagram(cells, *KEYS)
    labels = [t.get_text() for t in ax.texts if t.get_text() in {"I", "II", "III", "IV-A", "IV-B"}]
    # Planted map: I, II, IV-A and IV-B are one region each; III is two (left band, right column).
    assert sorted(labels) == sorted(["I", "II", "III", "III", "IV-A", "IV-B"])
    plt.close("all")


def test_phase_regions_are_four_connected():
    labels = pd.DataFrame([["a", "b"], ["b", "a"]])
    assert sorted(len(cells) for _, cells in phase_regions(labels)) == [1, 1, 1, 1]


def test_unknown_path_kind_is_named():
    with pytest.raises(ValueError, match="'2d'"):
        plot_paths(None, "2d", {})
