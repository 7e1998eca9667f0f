"""Measurements during training: each figure is drawn when its table exists and not
otherwise, the numbers behind them are the planted ones, and the report gains a section
without changing the figures of a results directory that has none of these tables."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from analysis.lca import lca_totals, plot_lca
from analysis.load import load_results
from analysis.pca_path import plot_pca_path
from analysis.reparam import reparam_summary
from analysis.report import build_report
from analysis.stiffness import (
    final_stiffness,
    plot_stiffness_distance,
    plot_stiffness_stages,
)
from analysis.training import at_end, plot_trajectory, representative_cell, trajectory_metrics
from analysis.weights import largest_layer, plot_weight_histograms, plot_weight_norms, rebin

from .fake_results import TRAINING_TABLES, write_results

# Four corner cells, two seeds, two learning rates: small enough to build two reports.
CORNERS = {(4, 16): "I", (4, 1024): "II", (32, 16): "IV-B", (32, 1024): "III"}
SMALL = {
    "phases": CORNERS,
    "seeds": (0, 1),
    "lrs": (0.02, 0.1),
    "local_metrics": ("hessian_trace",),
    "diverged": (),
}
# Stiffness gains rows over training and by distance; surfaces (absent otherwise) gets the
# pca plane, which must add no figure of its own kind.
REPORTED = ("runs", "stiffness")
TRAINING_FIGURES = {
    "trajectory_sharpness.png",
    "trajectory_hessian_trace.png",
    "trajectory_stiffness_between_cos.png",
    "stiffness_stages.png",
    "stiffness_distance.png",
    "pca_path.png",
    "lca.png",
    "weight_histograms.png",
    "weight_norms.png",
}


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(
        tmp_path_factory.mktemp("training") / "fake", tables=(*REPORTED, *TRAINING_TABLES), **SMALL
    )


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sweep without the tables measured during training."""
    return write_results(tmp_path_factory.mktemp("plain") / "fake", tables=REPORTED, **SMALL)


def _figures(results) -> dict[str, plt.Figure | None]:
    figures = {
        f"trajectory_{m}": plot_trajectory(results, m) for m in ("sharpness", "hessian_trace")
    }
    figures["stiffness_stages"] = plot_stiffness_stages(results)
    figures["stiffness_distance"] = plot_stiffness_distance(results)
    figures["pca_path"] = plot_pca_path(results)
    figures["lca"] = plot_lca(results)
    figures["weight_histograms"] = plot_weight_histograms(results, by="optim.batch_size")
    figures["weight_norms"] = plot_weight_norms(results, by="optim.batch_size")
    return figures


# --- loading and figures present / absent --------------------------------------------------
def test_training_tables_load(training_dir):
    results = load_results(training_dir)
    assert set(TRAINING_TABLES) <= set(results.tables())
    assert results.tables()["path"] is results.pca_path  # Results.path is the directory
    assert results.path == training_dir
    first = results.params.iloc[0]
    assert len(first["hist_counts"]) == 20 and len(first["hist_edges"]) == 21


def test_every_training_table_gets_its_figure(training_dir):
    figures = _figures(load_results(training_dir))
    assert [name for name, fig in figures.items() if fig is None] == []
    plt.close("all")


def test_absent_tables_get_no_figure(plain_dir):
    results = load_results(plain_dir)
    assert not set(TRAINING_TABLES) & set(results.tables())
    assert [name for name, fig in _figures(results).items() if fig is not None] == []
    assert trajectory_metrics(results.trajectory) == []
    assert reparam_summary(results.reparam) is None


def test_absent_columns_get_no_figure(training_dir):
    results = load_results(training_dir)
    trajectory = results.trajectory.drop(columns=["sharpness", "two_over_lr"])
    stiffness = results.stiffness.drop(columns=["step", "distance_bin_lo", "distance_bin_hi"])
    params = results.params.drop(columns=["hist_counts", "hist_edges"])
    bare = dataclasses.replace(
        results, trajectory=trajectory, stiffness=stiffness, params=params, surfaces=None
    )
    assert trajectory_metrics(trajectory) == ["hessian_trace", "stiffness_between_cos"]
    assert plot_trajectory(bare, "sharpness") is None
    assert plot_stiffness_stages(bare) is None and plot_stiffness_distance(bare) is None
    assert plot_weight_histograms(bare, by="optim.batch_size") is None
    assert plot_weight_norms(bare, by="optim.batch_size") is not None  # norms are still there
    fig = plot_pca_path(bare)  # no pca surface: the path alone, no contours
    assert fig is not None and not fig.axes[0].collections
    plt.close("all")


# --- metrics against step ------------------------------------------------------------------
def test_sharpness_has_two_over_lr_dashed_in_its_colour(training_dir):
    fig = plot_trajectory(load_results(training_dir), "sharpness")
    ax = fig.axes[0]
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(solid) == len(dashed) == 4 * 2 * 2  # cells x lrs x seeds
    # The fake's lr is constant, so each threshold is flat at 2 / lr: 100 and 20.
    assert sorted({float(ln.get_ydata()[0]) for ln in dashed}) == [20.0, 100.0]
    for line, threshold in zip(solid, dashed):  # drawn in pairs, one colour per learning rate
        assert to_rgb(line.get_color()) == to_rgb(threshold.get_color())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0.02", "0.1", "2 / lr"]
    assert ax.get_xscale() == "linear"  # every 20 steps: not log-spaced
    plt.close("all")


def test_sharpness_is_drawn_against_the_optimisers_own_threshold_when_recorded(training_dir):
    results = load_results(training_dir)
    t = results.trajectory
    results = dataclasses.replace(  # SGD with momentum 0.9
        results, trajectory=t.assign(stability_threshold=2 * (1 + 0.9) / t["lr"])
    )
    ax = plot_trajectory(results, "sharpness").axes[0]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert sorted({float(ln.get_ydata()[0]) for ln in dashed}) == pytest.approx([38.0, 190.0])
    assert ax.get_legend().get_texts()[-1].get_text().startswith("stability threshold")
    plt.close("all")


def test_log_spaced_steps_get_a_log_axis(training_dir):
    fig = plot_trajectory(load_results(training_dir), "hessian_trace", by="model.width")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and "log scale" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["4", "32"]
    plt.close("all")


def test_at_end_prefers_rows_without_step_else_the_last_step():
    table = pd.DataFrame(
        {
            "variant_id": ["a", "a", "a", "b", "b"],
            "step": [0, 10, None, 0, 10],
            "x": [1, 2, 3, 4, 5],
        }
    )
    assert at_end(table)["x"].tolist() == [3, 5]
    assert at_end(table.drop(columns="step"))["x"].tolist() == [1, 2, 3, 4, 5]


def test_representative_cell_is_the_first_variant_and_its_other_seeds(training_dir):
    results = load_results(training_dir)
    ids, title = representative_cell(results, results.lca["variant_id"].unique())
    assert ids == ["v4-16-0.02-0", "v4-16-0.02-1"]
    assert title == "width=4, batch_size=16, lr=0.02 (mean over 2 seeds)"
    ids, _ = representative_cell(results, ids, variant="v4-16-0.02-1")
    assert len(ids) == 2
    with pytest.raises(ValueError, match="'nope'"):
        representative_cell(results, ids, variant="nope")


# --- stiffness -----------------------------------------------------------------------------
def test_stiffness_stages_one_panel_per_step(training_dir):
    results = load_results(training_dir)
    fig = plot_stiffness_stages(results)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "step 0, epoch 0",
        "step 6, epoch 0.12",
        "step 34, epoch 0.68",
        "step 200, epoch 4",
    ]
    # every panel the same width: the colour bar has its own column, not the last panel's room
    panels = [ax for ax in fig.axes if ax.get_title()]
    widths = [ax.get_position().width for ax in panels]
    assert max(widths) == pytest.approx(min(widths), rel=1e-6)
    assert fig.axes[-1].get_ylabel() == "s_cos (cosine, -1 to 1)"
    fig = plot_stiffness_stages(results, max_stages=3)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()][::2] == [
        "step 0, epoch 0",
        "step 200, epoch 4",
    ]
    plt.close("all")


def test_final_stiffness_leaves_out_steps_and_distance_rows(training_dir):
    final = final_stiffness(load_results(training_dir).stiffness)
    assert final["step"].isna().all() and final["distance_bin_lo"].isna().all()
    assert final["class_a"].dtype == np.int64  # labels 0..3, not 0.0..3.0
    diagonal = final[final["class_a"] == final["class_b"]]
    assert np.allclose(diagonal["s_cos"], 0.6)  # the fake's end-of-training matrix


def test_stiffness_falls_with_distance_slower_at_larger_lr(training_dir):
    fig = plot_stiffness_distance(load_results(training_dir))
    small_lr, large_lr = (line.get_ydata() for line in fig.axes[0].lines[:2])
    assert np.all(np.diff(small_lr) < 0) and np.all(large_lr > small_lr)
    plt.close("all")


# --- PCA path, LCA, weights, reparametrisation ---------------------------------------------
def test_pca_path_over_its_contours_with_start_and_end(training_dir):
    fig = plot_pca_path(load_results(training_dir), max_variants=2)
    # the axes say how much of the path's variance each direction explains (planted 0.9, 0.08)
    panels = [ax for ax in fig.axes if ax.get_xlabel().startswith("1st PCA direction")]
    assert len(panels) == 2
    assert panels[0].get_xlabel() == "1st PCA direction (90% of the path's variance)"
    assert panels[0].get_ylabel() == "2nd PCA direction (8% of the path's variance)"
    texts = [t.get_text() for t in panels[0].texts]
    assert texts == ["start (step 0)", "end (step 200)"]
    assert panels[0].collections  # the contours
    path = panels[0].lines[0]
    assert (path.get_xdata()[-1], path.get_ydata()[-1]) == (0.0, 0.0)  # ends at the final point
    plt.close("all")


def test_lca_bars_are_the_planted_totals(training_dir):
    results = load_results(training_dir)
    fig = plot_lca(results)
    bars = fig.axes[0].patches
    totals = lca_totals(results.lca)
    cell = totals[totals["variant_id"].isin(["v4-16-0.02-0", "v4-16-0.02-1"])]
    expected = cell.groupby("layer", sort=False)["allocation"].mean()
    assert [b.get_width() for b in bars] == pytest.approx(expected.tolist())
    # The first layers lowered the loss (blue), the head raised it (red).
    assert [b.get_facecolor()[:3] == to_rgb("tab:blue") for b in bars] == [True, True, False]
    plt.close("all")


def test_rebin_keeps_counts():
    counts, edges = [3, 1, 4], [0.0, 1.0, 2.0, 3.0]
    assert rebin(counts, edges, np.array(edges)).tolist() == [3.0, 1.0, 4.0]
    assert rebin(counts, edges, np.array([-1.0, 0.5, 4.0])).tolist() == [1.5, 6.5]
    assert rebin(counts, edges, np.linspace(-2, 5, 30)).sum() == pytest.approx(8)


def test_weight_histograms_of_the_largest_layer_per_batch_size(training_dir):
    results = load_results(training_dir)
    assert largest_layer(results.params) == "body.0.weight"  # 64 x width entries
    fig = plot_weight_histograms(results, by="optim.batch_size")
    ax = fig.axes[0]
    assert "body.0.weight" in ax.get_title()
    densities = [p.get_data()[0] for p in ax.patches[::2]]  # a line and a fill per batch size
    assert len(densities) == 2
    widths = np.diff(ax.patches[0].get_data()[1])
    assert [float(np.sum(d * widths)) for d in densities] == pytest.approx([1, 1])
    # Planted: the end-of-training weights spread wider at batch size 16 than at 1024.
    assert densities[0].max() < densities[1].max()
    plt.close("all")


def test_weight_norms_one_panel_per_tensor(training_dir):
    fig = plot_weight_norms(load_results(training_dir), by="optim.batch_size", hue="model.width")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:2] == ["body.0.weight", "body.0.bias"] and len(titles) == 6
    assert fig.axes[0].get_xscale() == "linear"  # two batch sizes are no geometric grid
    plt.close("all")


def test_reparam_summary_marks_invariant_measures(training_dir):
    summary = reparam_summary(load_results(training_dir).reparam)
    assert summary["metric"].tolist() == [
        "hessian_trace",
        "hessian_top_eig",
        "adaptive_sharpness_avg",
    ]
    assert summary["invariant"].tolist() == [False, False, True]
    assert (summary["variants"] == 16).all()
    assert (summary["ratio_min"] <= summary["ratio_mean"]).all()
    assert (summary["ratio_mean"] <= summary["ratio_max"]).all()
    loose = reparam_summary(load_results(training_dir).reparam, tolerance=10)
    assert loose["invariant"].all()
    with pytest.raises(ValueError, match="-1"):
        reparam_summary(load_results(training_dir).reparam, tolerance=-1)


# --- the report ----------------------------------------------------------------------------
def _pngs(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.png")}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """index.html of reports with and without the tables measured during training (one
    learning rate: fewer phase diagrams to draw)."""
    kwargs = {**SMALL, "lrs": (0.1,)}
    pages = []
    for name, tables in (("with", (*REPORTED, *TRAINING_TABLES)), ("without", REPORTED)):
        root = write_results(tmp_path_factory.mktemp(name) / "fake", tables=tables, **kwargs)
        pages.append(build_report(load_results(root), root / "report"))
    return pages[0], pages[1]


def test_report_gains_a_section_and_nothing_else_changes(reports):
    training, plain = reports
    assert _pngs(training.parent) - _pngs(plain.parent) == TRAINING_FIGURES
    assert _pngs(plain.parent) <= _pngs(training.parent)
    assert "stiffness.png" in _pngs(plain.parent)  # the end-of-training matrices, in both
    assert not {"surface_1d.png", "surface_2d.png"} & _pngs(training.parent)  # pca rows only
    h2 = re.findall(r"<h2[^>]*>(.*?)</h2>", training.read_text())
    assert "During training" in h2
    assert "During training" not in plain.read_text()


def test_report_has_the_reparametrisation_table(reports):
    training, plain = reports
    html = training.read_text()
    assert "Reparametrisation probe" in html
    assert re.findall(r"<tr class='invariant'><td>(\w+)</td>", html) == ["adaptive_sharpness_avg"]
    assert pd.read_csv(training.parent / "reparam.csv")["invariant"].tolist() == [
        False,
        False,
        True,
    ]
    assert not (plain.parent / "reparam.csv").exists()
