"""The phase classifier recovers phases planted in known cells, and states its rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.cells import aggregate_cells
from analysis.load import load_results
from analysis.phases import PhaseThresholds, classify_phases, otsu_split, resolve_thresholds

from .fake_results import PLANTED, write_results


def _phases(root, thresholds=None) -> dict[tuple[int, int], str]:
    results = load_results(root)
    cells = classify_phases(aggregate_cells(results), thresholds, results.num_classes())
    return {
        (int(w), int(b)): p
        for w, b, p in zip(cells["model.width"], cells["optim.batch_size"], cells["phase"])
    }


def test_recovers_every_planted_phase(results_dir):
    assert _phases(results_dir) == PLANTED


@pytest.mark.parametrize("rng_seed", [1, 2, 3])
def test_recovers_planted_phases_under_other_noise_draws(tmp_path, rng_seed):
    root = write_results(tmp_path / "r", tables=("runs", "pairs"), rng_seed=rng_seed)
    assert _phases(root) == PLANTED


@pytest.mark.parametrize("rng_seed", [0, 1, 2])
def test_two_seeds_use_training_error_spread_for_the_mc_band(tmp_path, rng_seed):
    # One pair per cell: mc has no seed-to-seed spread, so the training error's stands in
    # (in percentage points). The fake's mc noise is planted below that spread.
    root = write_results(
        tmp_path / "r",
        seeds=(0, 1),
        tables=("runs", "pairs"),
        diverged=(),
        mc_noise=0.05,
        rng_seed=rng_seed,
    )
    assert _phases(root) == PLANTED
    cells = aggregate_cells(load_results(root))
    resolved = resolve_thresholds(cells, num_classes=10)
    n, s = cells["train_acc_n"], cells["train_acc_std"]
    pooled = np.sqrt(((n - 1) * s**2).sum() / (n - 1).sum())
    assert "proxy" in resolved.mc_source and resolved.mc_sd == pytest.approx(100 * pooled)


def test_reason_names_the_values():
    cells = pd.DataFrame(
        {
            "n_ok": [3, 3],
            "train_loss": [0.01, 0.02],
            "hessian_trace": [10.0, 12.0],
            "mc": [0.001, -0.5],
            "mc_std": [0.01, 0.01],
            "mc_n": [3, 3],
            "cka_linear_softmax": [0.9, 0.4],
        }
    )
    out = classify_phases(cells, PhaseThresholds(cka_threshold=0.8), num_classes=10)
    assert list(out["phase"]) == ["IV-B", "III"]
    reason = out["phase_reason"][0]
    assert "train_loss 0.01 <= 0.23" in reason and "cka_linear_softmax 0.9 >= 0.8" in reason
    assert "mc 0.001 within" in reason


def test_missing_signals_give_coarse_phases_and_dead_cells_their_status():
    cells = pd.DataFrame(
        {
            "n_ok": [3, 3, 0, 0],
            "n_diverged": [0, 0, 3, 0],
            "train_loss": [0.01, 2.0, np.nan, np.nan],
        }
    )
    out = classify_phases(cells, num_classes=10)
    assert list(out["phase"]) == ["III/IV", "I/II", "diverged", "failed"]
    assert "mc not measured" in out["phase_reason"][0]


def test_disagreeing_local_signals_are_mixed_unless_a_rule_picks_one():
    cells = pd.DataFrame(
        {
            "n_ok": [3] * 4,
            "train_loss": [0.01, 0.01, 0.01, 2.0],
            "hessian_trace": [10.0, 12.0, 1e4, 1.2e4],
        }
    )
    assert list(classify_phases(cells, num_classes=10)["phase"]) == [
        "III/IV",
        "III/IV",
        "mixed",
        "I/II",
    ]
    by_loss = classify_phases(cells, PhaseThresholds(local_rule="loss"), num_classes=10)
    assert list(by_loss["phase"]) == ["III/IV", "III/IV", "III/IV", "I/II"]


def test_unimodal_hessian_is_not_split():
    # All within a factor of 1.5: Otsu's two sides are far less than half a decade apart.
    cells = pd.DataFrame(
        {"n_ok": [3] * 4, "train_loss": [0.01] * 4, "hessian_trace": [10.0, 11.0, 14.0, 15.0]}
    )
    resolved = resolve_thresholds(cells, num_classes=10)
    assert resolved.hessian_log10 is None and "one regime" in resolved.hessian_source
    assert set(classify_phases(cells, num_classes=10)["phase"]) == {"III/IV"}


def test_fixed_thresholds_override_the_sweep():
    cells = pd.DataFrame(
        {"n_ok": [3], "train_loss": [0.5], "mc": [-0.05], "mc_std": [0.0], "mc_n": [3]}
    )
    assert classify_phases(cells, PhaseThresholds(train_loss=1.0))["phase"][0] == "III"
    wide = PhaseThresholds(train_loss=1.0, mc_band=0.1)
    assert classify_phases(cells, wide)["phase"][0] == "IV"


def test_otsu_split_lands_in_the_gap():
    threshold, gap = otsu_split(np.array([1.0, 1.1, 0.9, 3.0, 3.2, 2.9]))
    assert 1.1 < threshold < 2.9 and gap == pytest.approx(2.0333, abs=1e-3)
    assert otsu_split(np.array([1.0, 1.0])) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mc_k": 0}, "mc_k must be finite and > 0, got 0"),
        ({"hessian": "trace"}, "hessian must be one of"),
        ({"local_rule": "vote"}, "local_rule must be one of"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
    ],
)
def test_invalid_thresholds_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhaseThresholds(**kwargs)


def _fitted_cells(cka: list[float], mc: list[float]) -> pd.DataFrame:
    n = len(cka)
    return pd.DataFrame(
        {
            "n_ok": [3] * n,
            "train_loss": [0.01] * n,
            "hessian_trace": [10.0] * n,
            "mc": mc,
            "mc_std": [0.1] * n,
            "mc_n": [3] * n,
            "cka_linear_softmax": cka,
            "cka_linear_softmax_std": [0.01] * n,
            "cka_linear_softmax_n": [3] * n,
        }
    )


def test_cka_of_one_regime_is_not_split():
    # every cell planted IV-B (CKA 0.90-0.93): Otsu would cut anyway; the gap guard says one
    # regime and the cells stay IV, with the reason
    cells = _fitted_cells([0.90, 0.91, 0.92, 0.93, 0.905, 0.915], [0.0] * 6)
    out = classify_phases(cells, num_classes=10)
    assert set(out["phase"]) == {"IV"}
    assert all("one regime" in r for r in out["phase_reason"])


def test_cka_split_is_taken_over_the_phase_iv_candidates_only():
    # III cells (mc far below the band) at CKA 0.5 and IV cells at 0.6 / 0.95: the split
    # falls between the IV cells' two regimes, not between III and IV
    cka = [0.5, 0.5, 0.5, 0.6, 0.61, 0.95, 0.96]
    mc = [-5.0, -5.0, -5.0, 0.0, 0.0, 0.0, 0.0]
    out = classify_phases(_fitted_cells(cka, mc), num_classes=10)
    assert list(out["phase"]) == ["III", "III", "III", "IV-A", "IV-A", "IV-B", "IV-B"]
    threshold = out.attrs["phase_thresholds"].cka_threshold
    assert 0.61 < threshold < 0.95
    only_a = classify_phases(_fitted_cells(cka[:5], mc[:5]), num_classes=10)
    assert list(only_a["phase"]) == ["III"] * 3 + ["IV", "IV"]  # 0.6 vs III's 0.5: no split


def test_loss_without_a_class_count_is_not_split_within_one_regime():
    cells = _fitted_cells([0.9] * 4, [0.0] * 4).assign(train_loss=[0.010, 0.012, 0.011, 0.013])
    resolved = resolve_thresholds(cells)
    assert resolved.train_loss is None and "one regime" in resolved.train_loss_source
