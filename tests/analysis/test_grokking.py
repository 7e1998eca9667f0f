"""The grokking phase rule recovers the phase of synthetic accuracy curves, noisy ones too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.grokking import GrokkingThresholds, first_held_crossing, grokking_phases

STEPS = np.unique(np.round(np.logspace(0, 4, 40)))  # log-spaced evaluations, 1 .. 10^4


def _sigmoid(steps, at, width=0.15):
    """An accuracy rising from 0 to 1 around step ``at`` (log-step width ``width`` decades)."""
    return 1 / (1 + np.exp(-(np.log10(steps) - np.log10(at)) / width))


def _curve(vid, train_at, test_at, steps=STEPS, noise=0.0, seed=0, spike=None):
    rng = np.random.default_rng(seed)
    tr = _sigmoid(steps, train_at) if train_at else np.full(len(steps), 0.3)
    te = _sigmoid(steps, test_at) if test_at else np.full(len(steps), 0.05)
    tr = np.clip(tr + noise * rng.standard_normal(len(steps)), 0, 1)
    te = np.clip(te + noise * rng.standard_normal(len(steps)), 0, 1)
    if spike is not None:
        te[spike] = 1.0
    return pd.DataFrame({"variant_id": vid, "step": steps, "train_acc": tr, "test_acc": te})


def _phases(*curves, thresholds=None):
    out = grokking_phases(pd.concat(curves, ignore_index=True), thresholds)
    return dict(zip(out["variant_id"], out["grokking_phase"])), out


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_each_phase_is_recovered(noise):
    # Train crosses 0.9 near step 10 * 10^(0.15 ln 9) = 14; test: same time (comprehension),
    # 100x later (grokking), never (memorisation); train never (confusion).
    phases, out = _phases(
        _curve("comp", 10, 12, noise=noise),
        _curve("grok", 10, 1000, noise=noise, seed=1),
        _curve("memo", 10, None, noise=noise, seed=2),
        _curve("conf", None, None, noise=noise, seed=3),
    )
    assert phases == {
        "comp": "comprehension",
        "grok": "grokking",
        "memo": "memorisation",
        "conf": "confusion",
    }
    grok = out.set_index("variant_id").loc["grok"]
    assert grok["delay"] == grok["test_step"] - grok["train_step"]
    assert 900 < grok["delay"] < 3000
    assert np.isnan(out.set_index("variant_id").loc["memo", "test_step"])


def test_a_spike_is_not_a_crossing():
    # One evaluation of test accuracy 1.0 inside a memorising run: it does not hold.
    phases, out = _phases(_curve("memo", 10, None, spike=20))
    assert phases == {"memo": "memorisation"}
    assert first_held_crossing(np.arange(5.0), np.array([0, 1, 0, 1, 1]), 0.9, 1) == 1.0
    assert first_held_crossing(np.arange(5.0), np.array([0, 1, 0, 1, 1]), 0.9, 3) == 3.0
    assert first_held_crossing(np.arange(3.0), np.array([0, 1, 0]), 0.9, 3) is None


def test_too_short_budget_is_undecided():
    # Train fits near step 14, the run stops at 50 (< 10 x 14): test could still rise.
    short = STEPS[STEPS <= 50]
    phases, out = _phases(_curve("short", 10, None, steps=short))
    assert phases == {"short": "undecided"}
    assert "budget ended" in out["grokking_reason"][0]
    # A run cut short beside full ones is undecided rather than confusion.
    phases, _ = _phases(_curve("full", 10, 12), _curve("cut", None, None, steps=short))
    assert phases == {"full": "comprehension", "cut": "undecided"}


def test_delay_factor_and_thresholds_are_options():
    curves = _curve("g", 10, 1000)
    phases, _ = _phases(curves, thresholds=GrokkingThresholds(delay_factor=1000))
    assert phases == {"g": "comprehension"}
    with pytest.raises(ValueError, match="train_threshold"):
        GrokkingThresholds(train_threshold=1.5)
    with pytest.raises(ValueError, match="hold"):
        GrokkingThresholds(hold=0)


def test_epoch_column_when_no_step():
    curves = _curve("c", 10, 12).rename(columns={"step": "epoch"})
    out = grokking_phases(curves)
    assert out.attrs["step_column"] == "epoch" and out["grokking_phase"][0] == "comprehension"
