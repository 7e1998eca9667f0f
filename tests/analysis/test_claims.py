"""The literature checks: trend, effect size and verdict against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.claims import CLAIMS, Claim, Rule, evaluate, evaluate_all, main, markdown, untested
from analysis.load import Results, load_results

from .fake_results import write_results

UP = Claim("up", "rises with batch size", "ref", "optim.batch_size", "hessian_trace", +1)
DOWN = Claim("down", "falls with batch size", "ref", "optim.batch_size", "hessian_trace", -1)


def _results(runs: pd.DataFrame, axes: dict, pairs: pd.DataFrame | None = None) -> Results:
    return Results(path=Path("t"), manifest={"sweep": "t"}, runs=runs, pairs=pairs, axes=axes)


def _grid(means: dict[tuple[int, int], float], spread: float = 1.0) -> pd.DataFrame:
    """Two seeds per (width, batch size) at mean -/+ spread: sample sd = spread * sqrt(2)."""
    rows = []
    for (width, bs), m in means.items():
        for seed, sign in ((0, -1), (1, 1)):
            rows.append(
                {
                    "model.width": width,
                    "optim.batch_size": bs,
                    "seed": seed,
                    "status": "ok",
                    "hessian_trace": m + sign * spread,
                }
            )
    return pd.DataFrame(rows)


AXES = {"model.width": [8, 16], "optim.batch_size": [16, 64, 256], "seed": [0, 1]}
MEANS = {
    (8, 16): 10.0,
    (8, 64): 15.0,
    (8, 256): 20.0,  # width 8: +10 from end to end
    (16, 16): 4.0,
    (16, 64): 7.0,
    (16, 256): 10.0,  # width 16: +6
}


def test_monotone_trend_and_effect_size_are_exact():
    # Per group: se^2 = 2 * (sd^2 / n) = 2 * (2 / 2) = 2; two groups: se = 2; z = (10 + 6) / 2.
    v = evaluate(_results(_grid(MEANS), AXES), UP)
    assert (v.groups, v.samples, v.trend, v.z) == (2, 12, 1.0, 8.0)
    assert (v.low, v.high) == (7.0, 15.0)
    assert v.verdict == "reproduced"
    assert evaluate(_results(_grid(MEANS), AXES), DOWN).verdict == "contradicted"


def test_an_effect_within_the_seed_noise_is_inconclusive():
    # Same trend, seeds spread 10: se = 20, z = 0.8 < 2.
    v = evaluate(_results(_grid(MEANS, spread=10.0), AXES), UP)
    assert v.trend == 1.0 and v.z == pytest.approx(0.8)
    assert v.verdict == "inconclusive"
    assert v.note == "the effect (+0.8 SE) is within 2 seed standard errors of 0"
    assert evaluate(_results(_grid(MEANS, spread=10.0), AXES), UP, Rule(min_z=0.5)).verdict == (
        "reproduced"
    )


def test_a_non_monotone_trend_is_inconclusive():
    # Up from end to end, but the middle batch size is the highest in both groups: each
    # group's tau is 1/3 < 0.5, though the effect between the ends is the same as above.
    means = dict(MEANS) | {(8, 64): 25.0, (16, 64): 12.0}
    v = evaluate(_results(_grid(means), AXES), UP)
    assert v.trend == pytest.approx(1 / 3) and v.z == 8.0
    assert v.verdict == "inconclusive"
    assert v.note == "trend +0.33 is weaker than the rule's 0.5"


def test_an_inconclusive_verdict_without_seed_spread_says_so():
    # One seed per cell: the trend is perfect but there is nothing to measure the effect by.
    one_seed = _grid(MEANS, spread=0.0).query("seed == 0")
    v = evaluate(_results(one_seed, AXES | {"seed": [0]}), UP)
    assert v.trend == 1.0 and math.isnan(v.z) and v.verdict == "inconclusive"
    assert (
        v.note
        == "one sample (run or pair of seeds) per setting: no seed spread to tell the effect from noise"
    )


def test_groups_are_the_other_axes_and_diverged_runs_do_not_count():
    runs = _grid(MEANS)
    # A diverged run with a wild value would flip width 8's trend if it were counted.
    wild = runs.iloc[[0]].assign(seed=2, status="diverged", hessian_trace=1e9)
    v = evaluate(_results(pd.concat([runs, wild], ignore_index=True), AXES), UP)
    assert (v.samples, v.z) == (12, 8.0)


def test_divergence_counts_every_run_and_a_zero_variance_effect_is_infinite():
    runs = pd.DataFrame(
        {
            "optim.lr": [0.01, 0.01, 0.1, 0.1, 30.0, 30.0],
            "seed": [0, 1] * 3,
            "status": ["ok", "ok", "ok", "ok", "diverged", "diverged"],
        }
    )
    claim = Claim("d", "diverges", "ref", "optim.lr", "diverged", +1)
    v = evaluate(_results(runs, {"optim.lr": [0.01, 0.1, 30.0], "seed": [0, 1]}), claim)
    # tau-b of [0, 0, 1] against three learning rates: 2 concordant pairs / sqrt(3 * 2)
    assert (v.low, v.high, v.z) == (0.0, 1.0, math.inf)
    assert v.trend == pytest.approx(2 / math.sqrt(6))
    assert v.verdict == "reproduced"


def test_divergence_in_the_first_epoch_reads_the_epoch_end_from_the_curves():
    runs = pd.DataFrame(
        {
            "variant_id": ["a", "b", "c", "d"],
            "optim.lr": [0.1, 0.1, 100.0, 100.0],
            "seed": [0, 1, 0, 1],
            "status": ["ok", "ok", "diverged", "diverged"],
            "diverged_step": [np.nan, np.nan, 20.0, 21.0],  # the first epoch ends at step 20
        }
    )
    curves = pd.DataFrame(
        {"variant_id": list("abcd") * 2, "epoch": [0] * 4 + [1] * 4, "step": [0] * 4 + [20] * 4}
    )
    results = Results(
        path=Path("t"),
        manifest={},
        runs=runs,
        curves=curves,
        axes={"optim.lr": [0.1, 100.0], "seed": [0, 1]},
    )
    claim = next(c for c in CLAIMS if c.name == "lr_diverges")
    v = evaluate(results, claim)
    # at lr 100: one of two in the first epoch -> mean 0.5, sd sqrt(0.5), var/n 0.25
    assert (v.low, v.high, v.trend, v.z) == (0.0, 0.5, 1.0, 1.0)
    assert v.verdict == "inconclusive"
    no_curves = Results(path=Path("t"), manifest={}, runs=runs, axes=results.axes)
    assert evaluate(no_curves, claim) is None


def test_a_sweep_that_names_its_claims_is_tested_on_those_only():
    declared = Results(
        path=Path("t"), manifest={"analysis": {"claims": ["down"]}}, runs=_grid(MEANS), axes=AXES
    )
    assert list(evaluate_all([declared], claims=(UP, DOWN))["claim"]) == ["down"]


def test_pair_measures_join_through_the_replicate_group_and_booleans_are_ordered():
    runs = pd.DataFrame(
        {
            "model.skip": [False, False, True, True],
            "seed": [0, 1, 0, 1],
            "group_id": ["g0", "g0", "g1", "g1"],
            "status": "ok",
        }
    )
    pairs = pd.DataFrame({"group_id": ["g0", "g0", "g1", "g1"], "mc": [-3.0, -5.0, 1.0, 1.0]})
    claim = Claim("c", "skips connect", "ref", "model.skip", "mc", +1)
    v = evaluate(_results(runs, {"model.skip": [True, False], "seed": [0, 1]}, pairs), claim)
    # without skips: mean -4, sd sqrt(2), n 2 -> var/n 1; with: 1, sd 0 -> z = 5 / 1
    assert (v.low, v.high, v.trend, v.z, v.verdict) == (-4.0, 1.0, 1.0, 5.0, "reproduced")


def test_a_sweep_that_does_not_vary_the_knob_or_lacks_the_measure_tests_nothing():
    runs = _grid({(8, 16): 1.0, (16, 16): 2.0})
    assert evaluate(_results(runs, {"model.width": [8, 16], "seed": [0, 1]}), UP) is None
    missing = Claim("m", "x", "r", "optim.batch_size", "stiffness_between_cos", +1)
    assert evaluate(_results(_grid(MEANS), AXES), missing) is None
    table = evaluate_all([_results(_grid(MEANS), AXES)], claims=(UP, missing))
    assert list(table["claim"]) == ["up"]
    assert [c.name for c in untested(table, (UP, missing))] == ["m"]
    assert "**reproduced**" in markdown(table)


def test_the_command_prints_and_writes_the_verdicts(tmp_path, capsys):
    root = write_results(tmp_path / "fake", tables=("runs",))
    assert main([str(root), "--json", str(tmp_path / "claims.json")]) == 0
    verdicts = json.loads((tmp_path / "claims.json").read_text())["verdicts"]
    by_name = {v["claim"]: v for v in verdicts}
    # The planted map's batch-size claims are tested within each of its widths but width 4,
    # whose cells are all unfitted (phases I and II): 5 of the 16 cells are left out.
    assert by_name["small_batch_flatter_trace"]["groups"] == 3
    assert by_name["small_batch_flatter_trace"]["note"].startswith("5 of 16 cells not fitted")
    assert np.isfinite(by_name["small_batch_flatter_trace"]["trend"])
    out = capsys.readouterr().out
    assert "small-batch SGD reaches flatter minima" in out
    assert "not tested by these sweeps:" in out and "lr_stiffens_classes" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing-dir"], "does not exist"),
        (["{root}", "--min-trend", "0"], "--min-trend=0.0"),
        (["{root}", "--min-z", "nan"], "--min-z=nan"),
        (["{root}", "--json", "{root}"], "--json="),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    root = write_results(tmp_path / "fake", tables=("runs",))
    argv = [a.format(root=root) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (root / "claims.json").exists()


def test_a_sweep_that_names_an_unknown_claim_is_one_line_and_exit_2(tmp_path, capsys):
    analysis = {"temperature": "optim.batch_size", "load": "model.width", "claims": ["bogus"]}
    root = write_results(tmp_path / "fake", tables=("runs",), analysis=analysis)
    assert main([str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sweep.analysis.claims names unknown claim 'bogus'; allowed: small_batch" in err
    assert "\n" not in err


def test_one_sample_per_cell_borrows_the_pooled_spread_or_gives_no_z():
    # width 8 has two seeds per batch size (sd^2 = 2 each), width 16 only one: the pooled
    # variance 2 measures width 16's ends too. se^2 = 2 * (1/2 + 1/2 + 1 + 1) = 6.
    runs = _grid(MEANS)
    runs = runs[(runs["model.width"] == 8) | (runs["seed"] == 0)]
    v = evaluate(_results(runs, AXES), UP)
    assert v.z == pytest.approx((10 + 6) / math.sqrt(6))
    only_one = _results(runs[runs["seed"] == 0], AXES)
    assert math.isnan(evaluate(only_one, UP).z)
    assert evaluate(only_one, UP).verdict == "inconclusive"


def test_claims_about_minima_compare_fitted_models_only():
    # Batch sizes 16 and 64 fit (loss 1e-3); 256 and 1024 do not (loss 1.5) and sit at a low
    # curvature. Over every model the trace falls with batch size (tau (1 - 5) / 6 = -2/3:
    # contradicted); over the fitted ones it rises 2 -> 4 in both widths (reproduced).
    claim = next(c for c in CLAIMS if c.name == "small_batch_flatter_trace")
    means = {(w, b): h for w in (8, 16) for b, h in zip((16, 64, 256, 1024), (2, 4, 1, 0.5))}
    runs = _grid(means, spread=0.1)
    runs["train_loss"] = np.where(runs["optim.batch_size"] <= 64, 1e-3, 1.5)
    axes = {"model.width": [8, 16], "optim.batch_size": [16, 64, 256, 1024], "seed": [0, 1]}
    v = evaluate(_results(runs, axes), claim)
    assert v.verdict == "reproduced" and (v.low, v.high, v.trend) == (2.0, 4.0, 1.0)
    assert v.note.startswith("4 of 8 cells not fitted")
    every = evaluate(_results(runs, axes), Claim(**{**claim.__dict__, "fitted_only": False}))
    assert every.verdict == "contradicted" and every.trend == pytest.approx(-2 / 3)
    # Nothing fitted at two batch sizes: inconclusive, and the note says why.
    runs["train_loss"] = np.where(runs["optim.batch_size"] <= 16, 1e-3, 1.5)
    v = evaluate(_results(runs, axes), claim)
    assert v.verdict == "inconclusive" and "no group keeps two fitted values" in v.note
    assert "(6 of 8 cells not fitted" in markdown(pd.DataFrame([v.__dict__]))


def _grokking_verdicts(tmp_path, **kwargs) -> dict:
    from .fake_grokking import write_grokking

    results = load_results(write_grokking(tmp_path / "grok", **kwargs))
    table = evaluate_all([results], [c for c in CLAIMS if c.name.startswith("grokking")])
    return {row.claim: row for row in table.itertuples()}


def test_grokking_claims_on_a_planted_sweep(tmp_path):
    """Every grokking claim reproduced on the planted sweep (tests/analysis/fake_grokking.py),
    with trends and ends computed by hand."""
    from .fake_grokking import FRACTIONS, TRAIN_STEP, WEIGHT_DECAYS, test_step

    v = _grokking_verdicts(tmp_path)
    # generalised against weight decay, per fraction: 0.2 never (flat: tau 0); 0.3, 0.5, 0.7:
    # [0, 1, 1, 1] over wd 0, 0.3, 1, 3 (wd 10 is confusion: not counted), tau-b =
    # 3 / sqrt(6 * 3); mean over the 4 groups. Every seed agrees: infinite z.
    tau = 3 / math.sqrt(18) * 3 / 4
    for name in ("grokking_needs_weight_decay", "grokking_critical_fraction"):
        assert v[name].trend == pytest.approx(tau) and v[name].z == math.inf
        assert (v[name].low, v[name].high, v[name].verdict) == (0.0, 0.75, "reproduced")

    # the delay falls along both knobs in every group that generalises (tau -1)
    def delay(wd, f):
        return np.mean([test_step(wd, f, s) - TRAIN_STEP for s in (0, 1)])

    wds = [w for w in WEIGHT_DECAYS if 0 < w < 10]
    d = v["grokking_delay_falls_with_data"]
    assert (d.groups, d.trend, d.verdict) == (3, -1.0, "reproduced")
    assert d.low == pytest.approx(np.mean([delay(w, 0.3) for w in wds]))
    assert d.high == pytest.approx(np.mean([delay(w, FRACTIONS[-1]) for w in wds]))
    d = v["grokking_weight_decay_shortens_delay"]
    assert (d.groups, d.trend, d.verdict) == (3, -1.0, "reproduced")
    assert d.high == pytest.approx(np.mean([delay(3.0, f) for f in FRACTIONS[1:]]))
    # the norm falls at every step while test accuracy never falls: tau < 0 in every run
    n = v["grokking_weight_norm_falls"]
    assert n.knob == "" and n.samples == 40 and n.trend < -0.9 and n.verdict == "reproduced"


def test_grokking_claims_contradicted_inconclusive_or_untested(tmp_path):
    from .fake_grokking import TEST_INDEX

    # the norm rising with test accuracy contradicts the claim
    v = _grokking_verdicts(tmp_path / "a", norm_falls=False)
    assert v["grokking_weight_norm_falls"].verdict == "contradicted"
    # without a trajectory table the norm claim is not tested at all
    assert "grokking_weight_norm_falls" not in _grokking_verdicts(tmp_path / "b", trajectory=False)
    # generalising without weight decay too: no trend with weight decay, inconclusive
    plant = TEST_INDEX | {(0.0, f): TEST_INDEX[(0.3, f)] for f in (0.3, 0.5, 0.7)}
    v = _grokking_verdicts(tmp_path / "c", plant=plant)
    assert v["grokking_needs_weight_decay"].trend == 0.0
    assert v["grokking_needs_weight_decay"].verdict == "inconclusive"
