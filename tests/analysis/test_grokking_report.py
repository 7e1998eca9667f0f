"""The report's grokking section, on the planted grokking sweep written as Parquet."""

from __future__ import annotations

import re

import numpy as np

from analysis.grokking_figures import aligned, cell_phases, has_grokking, variant_phases
from analysis.load import load_results
from analysis.report import build_report

from .fake_grokking import write_grokking
from .fake_results import write_results


def test_grokking_section_drawn_for_grokking_curves_only(tmp_path):
    results = load_results(write_grokking(tmp_path / "grok"))
    assert has_grokking(results)
    page = build_report(results, tmp_path / "report").read_text()
    assert "Grokking phases" in page
    for name in ("grokking_phases.png", "grokking_accuracy.png", "grokking_aligned.png"):
        assert (tmp_path / "report" / name).is_file() and name in page
    # the demo-like sweep (no grokking runs) has no such section
    other = load_results(write_results(tmp_path / "fake"))
    assert not has_grokking(other)
    assert "Grokking phases" not in build_report(other, tmp_path / "r2").read_text()


def test_cell_phases_and_alignment_are_the_planted_ones(tmp_path):
    from .fake_grokking import TRAIN_STEP, test_step

    results = load_results(write_grokking(tmp_path / "grok"))
    keys = ["optim.weight_decay", "data.train_fraction"]
    cells = cell_phases(variant_phases(results), keys).set_index(keys)
    assert cells.loc[(0.0, 0.5), "grokking_phase"] == "memorisation"
    assert cells.loc[(10.0, 0.5), "grokking_phase"] == "confusion"
    assert cells.loc[(0.3, 0.3), "grokking_phase"] == "grokking"  # delay > 10 x 100 steps
    assert test_step(3.0, 0.7, 0) <= 10 * TRAIN_STEP
    assert cells.loc[(3.0, 0.7), "label"].startswith("comprehension")
    rows, cols = aligned(results)
    assert cols == ["param_norm"]  # no sharpness column in the planted trajectory
    # each generalised run's own crossing sits at relative step 1
    one = rows[rows["relative_step"] == 1.0]
    assert set(one["variant_id"]) == set(rows["variant_id"])
    assert not re.search("wd0.0|wd10.0", " ".join(rows["variant_id"]))


def test_pair_metrics_across_the_map_and_by_phase(tmp_path):
    from analysis.grokking_figures import pair_phase_table, pair_phases

    from .fake_grokking import PAIR_PLANT, UNCONVERGED, pair_phase

    results = load_results(write_grokking(tmp_path / "grok", pairs=True))
    keys = ["optim.weight_decay", "data.train_fraction"]
    rows, cols = pair_phases(results, keys)
    assert cols == ["l2_distance", "cka_linear_softmax", "barrier_error", "mc"]
    assert pair_phase(3.0, 0.5) == "mixed"  # seed 0 comprehends, seed 1 groks
    assert len(rows) == 5 * 4  # one pair per cell
    for _, r in rows.iterrows():
        assert r["pair_phase"] == pair_phase(r[keys[0]], r[keys[1]])
        assert r["l2_distance"] == PAIR_PLANT[r["pair_phase"]][0]
    table = pair_phase_table(results, keys).set_index("phase")
    assert list(table.index) == ["comprehension", "grokking", "memorisation", "confusion", "mixed"]
    for phase, (dist, cka, barrier, mc) in PAIR_PLANT.items():
        # means of equal values: equal up to float rounding of the sum
        got = table.loc[phase, ["l2_distance", "cka_linear_softmax", "barrier_error", "mc"]]
        assert np.allclose(got.to_numpy(dtype=float), [dist, cka, barrier, mc])
        # (mc: the unconverged curve's -99 is left out of memorisation's mean)
    assert pair_phase(*UNCONVERGED) == "memorisation"
    n_mem = int(table.loc["memorisation", "pairs"])
    assert table.loc["memorisation", "mc_curves_converged"] == n_mem - 1
    page = build_report(results, tmp_path / "report").read_text()
    for name in ("grokking_pairs_map.png", "grokking_pairs_phase.png"):
        assert (tmp_path / "report" / name).is_file() and name in page
    assert (tmp_path / "report" / "grokking_pairs.csv").is_file()


def test_no_pair_figures_without_pairs(tmp_path):
    results = load_results(write_grokking(tmp_path / "grok"))
    build_report(results, tmp_path / "report")
    assert not (tmp_path / "report" / "grokking_pairs_map.png").exists()
    assert not (tmp_path / "report" / "grokking_pairs.csv").exists()
