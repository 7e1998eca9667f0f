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
    # (in percentage points), pooled over the cells of one local regime only. The fake's mc
    # noise is planted below that spread.
    root = write_results(
        tmp_path / "r",
        seeds=(0, 1),
        tables=("runs", "pairs"),
        diverged=(),
        mc_noise=0.05,
        rng_seed=rng_seed,
    )
    proxy = PhaseThresholds(mc_split="proxy")
    assert _phases(root) == PLANTED
    assert _phases(root, proxy) == PLANTED
    cells = aggregate_cells(load_results(root))
    resolved = resolve_thresholds(cells, proxy, num_classes=10)
    fitted = [
        PLANTED[(w, b)] not in ("I", "II")
        for w, b in zip(cells["model.width"], cells["optim.batch_size"])
    ]
    n, s = cells["train_acc_n"][fitted], cells["train_acc_std"][fitted]
    pooled = np.sqrt(((n - 1) * s**2).sum() / (n - 1).sum())
    assert "proxy" in resolved.mc_source["fitted"]
    assert resolved.mc_sd["fitted"] == pytest.approx(100 * pooled)


def _one_curve_cells(mc):
    """The issue's reproduction: two unfitted cells and four fitted ones, one curve each, whose
    training accuracy barely spreads between seeds (3e-4)."""
    n = len(mc)
    return pd.DataFrame(
        {
            "train_loss": [1.0, 0.9, 0.0015, 0.0013, 0.0025, 0.0022][:n],
            "train_acc": [0.6, 0.62, 1, 1, 1, 1][:n],
            "train_acc_std": [0.03, 0.03, 3e-4, 3e-4, 3e-4, 3e-4][:n],
            "train_acc_n": [5] * n,
            "hessian_trace": [5e3, 4e3, 80, 90, 130, 150][:n],
            "mc": mc,
            "mc_n": [1] * n,
            "cka_linear_softmax": [0.4, 0.4, 0.56, 0.6, 0.5, 0.45][:n],
        }
    )


def test_one_curve_per_cell_splits_log_mc_over_fitted_cells():
    # log10 |mc| of the fitted cells: -0.52, -0.10 | 0.70, 1.02. Otsu splits between -0.10
    # and 0.70 (sides 1.17 decades apart > 0.5), so the band is 10^0.30 = 2 points: the two
    # sub-point barriers are IV, the 5 and 10.5 point ones III.
    cells = _one_curve_cells([-20, -15, -0.3, -0.8, -5, -10.5])
    out = classify_phases(cells, None, 10)
    assert out.phase.tolist() == ["I", "I", "IV", "IV", "III", "III"]
    res = resolve_thresholds(cells, None, 10)
    assert res.mc_split_band["fitted"] == pytest.approx(10 ** ((np.log10(0.8) + np.log10(5)) / 2))
    assert "log10 |mc| split" in out.phase_reason[2]
    # The old proxy (100 x 3e-4 x 3 = 0.09 points) calls every barrier III.
    old = classify_phases(cells, PhaseThresholds(mc_split="proxy"), 10)
    assert old.phase.tolist() == ["I", "I", "III", "III", "III", "III"]


def test_one_mc_regime_falls_back_to_the_proxy():
    # Fitted |mc| 4, 5, 6, 7: Otsu sides 0.16 decades apart < 0.5, one mc regime; the proxy
    # band (0.09 points) decides and every barrier is III; the source says why.
    cells = _one_curve_cells([-20, -15, -4, -5, -6, -7])
    res = resolve_thresholds(cells, None, 10)
    assert "fitted" not in res.mc_split_band
    assert res.mc_source["fitted"].startswith("one mc regime")
    assert "proxy" in res.mc_source["fitted"]
    assert classify_phases(cells, None, 10).phase.tolist()[2:] == ["III"] * 4
    # The summary table says it in words a reader without the rule's code can follow.
    rule = dict(res.describe())["mc near 0 (fitted cells)"]
    assert rule.startswith("|mc| within the band; ")
    assert "the split's two groups of log10 |mc| are only 0.16 decades apart (< 0.5)" in rule
    assert "Otsu sides" not in rule and "s = " not in rule


def test_own_pairs_outrank_the_split():
    # A cell with mc_min_pairs pairs of its own uses its own spread even when others split.
    cells = _one_curve_cells([-20, -15, -0.3, -0.8, -5, -10.5])
    cells["mc_n"] = [1, 1, 1, 1, 1, 10]
    cells["mc_std"] = [np.nan] * 5 + [40.0]
    res = resolve_thresholds(cells, PhaseThresholds(mc_split="otsu"), 10)
    # mc_std present on one cell: the pooled seed spread needs n >= 2, here the 10-pair cell.
    out = classify_phases(cells, None, 10)
    assert "own 10 pairs" in out.phase_reason[5]
    assert out.phase[5].startswith("IV")  # 3 * 40 / sqrt(10) = 38 > 10.5
    assert res.mc_sd["fitted"] == pytest.approx(40.0)


def test_an_unconverged_curve_has_an_unknown_mc():
    # The reproduction with the 10.5-point curve still improving (its loss fell 30% over its
    # last fifth > 10%): that cell is III/IV with a reason that says so, and its mc leaves the
    # split, which over log10 |mc| = -0.52, -0.10, 0.70 still falls between -0.10 and 0.70:
    # the same 2-point band as with the fourth curve.
    cells = _one_curve_cells([-20, -15, -0.3, -0.8, -5, -10.5])
    cells["bezier_improvement"] = [0.0, 0.02, -0.05, 0.05, 0.1, 0.3]
    out = classify_phases(cells, None, 10)
    assert out.phase.tolist() == ["I", "I", "IV", "IV", "III", "III/IV"]
    assert "had not converged" in out.phase_reason[5] and "30%" in out.phase_reason[5]
    res = out.attrs["phase_thresholds"]
    assert res.mc_split_band["fitted"] == pytest.approx(10 ** ((np.log10(0.8) + np.log10(5)) / 2))
    # improvement exactly at the tolerance converged; a looser tolerance accepts the curve
    assert classify_phases(cells, PhaseThresholds(mc_converge_tol=0.3), 10).phase[5] == "III"
    # an unfitted cell with an unconverged curve is I/II
    cells.loc[0, "bezier_improvement"] = 0.5
    assert classify_phases(cells, None, 10).phase[0] == "I/II"


def test_mc_split_option_is_checked():
    with pytest.raises(ValueError, match="mc_split"):
        PhaseThresholds(mc_split="median")


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


def test_disagreeing_local_signals_are_settled_by_the_larger_margin():
    # log10 loss -3, -3, 0, 0, -2, -1: Otsu cuts at -1.5 (sides -2.667 and -0.333, half gap
    # 7/6); log10 Hessian 1, 1, 3, 3, 3, 1: cut at 2, half gap 1. Cell 4 has a small loss by
    # 0.5 / (7/6) = 0.43 half gaps and a large Hessian by 1: the Hessian decides (unfitted);
    # cell 5 the mirror image (fitted).
    cells = pd.DataFrame(
        {
            "n_ok": [3] * 6,
            "train_loss": [1e-3, 1e-3, 1.0, 1.0, 1e-2, 1e-1],
            "hessian_trace": [10.0, 10.0, 1e3, 1e3, 1e3, 10.0],
        }
    )
    out = classify_phases(cells, num_classes=10)
    resolved = out.attrs["phase_thresholds"]
    assert resolved.train_loss == pytest.approx(10**-1.5)
    assert resolved.loss_half_gap == pytest.approx(7 / 6)
    assert resolved.hessian_log10 == pytest.approx(2.0) and resolved.hessian_half_gap == 1.0
    assert list(out["phase"]) == ["III/IV", "III/IV", "I/II", "I/II", "I/II", "III/IV"]
    assert "the hessian margin 1 > 0.43 decides" in out["phase_reason"][4]
    agree = classify_phases(cells, PhaseThresholds(local_rule="agree"), num_classes=10)
    assert list(agree["phase"])[4:] == ["mixed", "mixed"]
    by_loss = classify_phases(cells, PhaseThresholds(local_rule="loss"), num_classes=10)
    assert list(by_loss["phase"])[4:] == ["III/IV", "I/II"]
    # a stated line outranks a split: the given loss threshold 0.05 decides both cells
    stated = classify_phases(cells, PhaseThresholds(train_loss=0.05), num_classes=10)
    assert list(stated["phase"])[4:] == ["III/IV", "I/II"]
    assert "the loss's stated line decides" in stated["phase_reason"][4]


def test_issue_reproductions_classify_as_the_paper():
    # A phase II cell at a few hundredths of loss (0.12, under 0.1 ln 10 = 0.23), a fitted
    # cell near 1e-3, and a phase I cell.
    cells = pd.DataFrame(
        {"train_loss": [0.12, 0.0015, 1.0], "hessian_trace": [500, 40, 5000], "mc": [4.4, 0, -20]}
    )
    assert list(classify_phases(cells, None, 10)["phase"]) == ["II", "IV", "I"]
    # Unfitted cells spread by points, fitted ones by hundredths: the fitted cell with a
    # barrier of 5 points is III, whatever the unfitted cells' spread.
    cells = pd.DataFrame(
        {
            "train_loss": [1, 0.8, 0.002, 0.0013],
            "train_acc_std": [0.03, 0.03, 1e-4, 1e-4],
            "train_acc_n": [5] * 4,
            "hessian_trace": [5e3, 4e3, 120, 38],
            "mc": [-20, -15, -5, -0.3],
            "cka_linear_softmax": [0.4, 0.4, 0.5, 0.77],
        }
    )
    out = classify_phases(cells, None, 10)
    assert list(out["phase"])[:3] == ["I", "I", "III"]
    # With the proxy band (mc_split=proxy) the spread is pooled over the two cells of each
    # regime, in percentage points.
    out = classify_phases(cells, PhaseThresholds(mc_split="proxy"), 10)
    assert list(out["phase"])[:3] == ["I", "I", "III"]
    sd = out.attrs["phase_thresholds"].mc_sd
    assert sd["fitted"] == pytest.approx(0.01) and sd["unfitted"] == pytest.approx(3.0)


def _yang_like_grid() -> tuple[pd.DataFrame, list[str]]:
    """Width x batch cells shaped like a CIFAR-10 ResNet18 grid with weight decay and no
    augmentation: unfitted cells (I, II) at a few hundredths of training loss, all under
    0.1 ln 10; fitted cells near 1e-3 with a tight seed spread; five seeds (10 pairs)."""
    #        loss,   Hessian, mc,   s(mc), CKA,  s(train acc)
    spec = {
        "I": (0.08, 3000.0, -12.0, 3.0, 0.30, 0.02),
        "II": (0.04, 1500.0, 6.0, 2.0, 0.40, 0.02),
        "III": (0.002, 150.0, -4.0, 0.3, 0.50, 2e-4),
        "IV-A": (0.0012, 60.0, -0.02, 0.05, 0.60, 1e-4),
        "IV-B": (0.0009, 40.0, 0.02, 0.05, 0.92, 1e-4),
    }
    planted = ["I", "I", "II", "III", "III", "IV-A", "IV-A", "IV-B", "IV-B", "II", "I", "IV-B"]
    rows = []
    for i, phase in enumerate(planted):
        loss, h, mc, s_mc, cka, s_acc = spec[phase]
        wiggle = 1 + 0.05 * ((i % 3) - 1)  # +-5%: cells of one phase are not identical
        rows.append(
            {
                "n_ok": 5,
                "train_loss": loss * wiggle,
                "train_acc_std": s_acc,
                "train_acc_n": 5,
                "hessian_trace": h * wiggle,
                "mc": mc * wiggle,
                "mc_std": s_mc,
                "mc_n": 10,
                "cka_linear_softmax": cka,
                "cka_linear_softmax_std": 0.02,
                "cka_linear_softmax_n": 10,
            }
        )
    return pd.DataFrame(rows), planted


def test_yang_like_grid_classifies_as_planted():
    cells, planted = _yang_like_grid()
    out = classify_phases(cells, num_classes=10)
    assert list(out["phase"]) == planted
    # The fixed chance line (0.1 ln 10 = 0.23) calls the unfitted cells fitted: the Hessian
    # disagrees and, under the agree rule, they were all mixed.
    chance = PhaseThresholds(loss_split="chance", local_rule="agree")
    old = classify_phases(cells, chance, num_classes=10)
    unfitted = [p in ("I", "II") for p in planted]
    assert set(old["phase"][unfitted]) == {"mixed"}


def test_a_cell_with_enough_pairs_uses_its_own_spread():
    # 10 pairs, s = 0.3: band 3 * 0.3 / sqrt(10) = 0.2846
    cells = pd.DataFrame(
        {
            "n_ok": [5, 5],
            "train_loss": [1e-3, 1e-3],
            "mc": [-0.28, -0.29],
            "mc_std": [0.3, 0.3],
            "mc_n": [10, 10],
        }
    )
    out = classify_phases(cells, num_classes=10)
    assert list(out["phase"]) == ["IV", "III"]
    assert "+-0.28 (own 10 pairs)" in out["phase_reason"][0]
    few = cells.assign(mc_n=[9, 9])  # below mc_min_pairs: the pooled spread, same here
    assert "pooled over fitted cells" in classify_phases(few, num_classes=10)["phase_reason"][0]


def test_one_loss_regime_is_placed_by_the_chance_line():
    cells = pd.DataFrame({"n_ok": [3] * 3, "train_loss": [0.5, 0.6, 0.55]})
    resolved = resolve_thresholds(cells, num_classes=10)
    assert resolved.train_loss == pytest.approx(0.1 * np.log(10))
    assert "one regime" in resolved.train_loss_source
    assert "chance line" in resolved.train_loss_source
    assert set(classify_phases(cells, num_classes=10)["phase"]) == {"I/II"}


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
        ({"loss_split": "line"}, "loss_split must be one of"),
        ({"mc_min_pairs": 1}, "mc_min_pairs must be >= 2, got 1"),
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
