"""The phase of learning of each variant from its accuracy curves: comprehension, grokking,
memorisation or confusion.

Liu et al. (2022, "Towards understanding grokking", arXiv 2205.10343) map learning on
algorithmic tasks into four phases, read from when training and validation accuracy cross a
line (90%) within step budgets. Their budgets are fixed numbers of steps for their runs; this
rule states its own, relative to each run:

1. **Crossing**: the step at which an accuracy first reaches its threshold (``train_threshold``
   and ``test_threshold``, 0.9 as in Liu et al.) *and holds*: the accuracy stays at or above
   the threshold for ``hold`` (3) consecutive evaluations, or for every evaluation left when
   fewer remain and at least one does. One spike over the line is not a crossing: on
   log-spaced evaluations three points span a good part of a decade of steps.
2. **Phase** from the training crossing ``t_train``, the test crossing ``t_test`` and the last
   evaluated step ``T`` (the budget):

   - train never crosses: **confusion** (the model does not fit its training set within the
     budget);
   - both cross and ``t_test <= delay_factor * t_train``: **comprehension** (they rise
     together; ``delay_factor`` = 10, one decade of steps, the span between the step budgets
     Liu et al. read their phases against);
   - both cross and ``t_test > delay_factor * t_train``: **grokking** (test accuracy rises
     long after training accuracy);
   - train crosses, test does not, and ``T >= delay_factor * t_train``: **memorisation** (test
     accuracy has had a decade of steps after fitting to rise and has not, within the budget);
   - train crosses, test does not, ``T < delay_factor * t_train``: **undecided**: the budget
     ended before comprehension could be told from memorisation or grokking.

   A variant whose last step is below ``min_budget`` (default: the largest last step of all
   variants, so a run cut short is not compared with full ones) is **undecided** unless it
   is already comprehension or grokking (a crossing seen is seen).
3. ``delay = t_test - t_train`` (steps) when both cross.

``grokking_reason`` names the values that decided each variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

GROKKING_PHASES = ("comprehension", "grokking", "memorisation", "confusion", "undecided")
STEP_COLUMNS = ("step", "epoch")
COLUMNS = (
    "variant_id",
    "grokking_phase",
    "train_step",
    "test_step",
    "delay",
    "last_step",
    "grokking_reason",
)


@dataclass(frozen=True)
class GrokkingThresholds:
    """Settings of the grokking phase rule (module docstring)."""

    train_threshold: float = 0.9
    test_threshold: float = 0.9
    hold: int = 3
    delay_factor: float = 10.0
    min_budget: float | None = None

    def __post_init__(self) -> None:
        for name in ("train_threshold", "test_threshold"):
            value = getattr(self, name)
            _check(0 < value <= 1, name, value, "in (0, 1]")
        _check(self.hold >= 1, "hold", self.hold, ">= 1")
        f = self.delay_factor
        _check(math.isfinite(f) and f >= 1, "delay_factor", f, "finite and >= 1")
        b = self.min_budget
        _check(b is None or math.isfinite(b) and b >= 0, "min_budget", b, ">= 0 or None")


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"grokking threshold {name} must be {allowed}, got {value!r}")


def first_held_crossing(steps: np.ndarray, acc: np.ndarray, threshold: float, hold: int):
    """The first step from which ``acc`` stays >= ``threshold`` for ``hold`` evaluations (or
    every remaining one when fewer remain); None when it never does. ``steps`` ascending."""
    above = np.asarray(acc, dtype=float) >= threshold
    n = len(above)
    for i in range(n):
        if above[i : min(i + hold, n)].all() and above[i]:
            return float(steps[i])
    return None


def _step_column(curves: pd.DataFrame) -> str:
    for col in STEP_COLUMNS:
        if col in curves and pd.to_numeric(curves[col], errors="coerce").notna().any():
            return col
    raise ValueError(f"curves need one of the columns {STEP_COLUMNS}, got {list(curves.columns)}")


def grokking_phases(
    curves: pd.DataFrame, thresholds: GrokkingThresholds | None = None
) -> pd.DataFrame:
    """One row per ``variant_id``: its grokking phase, crossings, delay and reason."""
    thr = thresholds or GrokkingThresholds()
    for col in ("variant_id", "train_acc", "test_acc"):
        if col not in curves:
            raise ValueError(f"curves need the column {col!r}, got {list(curves.columns)}")
    step_col = _step_column(curves)
    df = curves[["variant_id", step_col, "train_acc", "test_acc"]].copy()
    df[step_col] = pd.to_numeric(df[step_col], errors="coerce")
    df = df.dropna(subset=[step_col]).sort_values(["variant_id", step_col], kind="stable")
    lasts = df.groupby("variant_id")[step_col].max()
    budget = thr.min_budget if thr.min_budget is not None else (lasts.max() if len(lasts) else 0)
    rows = []
    for vid, g in df.groupby("variant_id", sort=True):
        steps = g[step_col].to_numpy(dtype=float)
        ok_tr = g["train_acc"].notna().to_numpy()
        ok_te = g["test_acc"].notna().to_numpy()
        t_tr = first_held_crossing(
            steps[ok_tr], g["train_acc"].to_numpy(float)[ok_tr], thr.train_threshold, thr.hold
        )
        t_te = first_held_crossing(
            steps[ok_te], g["test_acc"].to_numpy(float)[ok_te], thr.test_threshold, thr.hold
        )
        last = float(steps.max())
        phase, why = _decide(t_tr, t_te, last, float(budget), thr, step_col)
        delay = t_te - t_tr if t_tr is not None and t_te is not None else None
        rows.append((vid, phase, t_tr, t_te, delay, last, why))
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("train_step", "test_step", "delay", "last_step"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out.attrs["grokking_thresholds"] = thr
    out.attrs["step_column"] = step_col
    return out


def _decide(t_tr, t_te, last, budget, thr: GrokkingThresholds, unit: str) -> tuple[str, str]:
    f, tr, te = thr.delay_factor, thr.train_threshold, thr.test_threshold
    if t_tr is not None and t_te is not None:
        ratio = t_te / t_tr if t_tr > 0 else math.inf
        where = f"train >= {tr:g} at {unit} {t_tr:g}, test >= {te:g} at {t_te:g}"
        if t_te <= f * t_tr:
            return "comprehension", f"{where}: within {f:g}x"
        return "grokking", f"{where}: {ratio:.3g}x later (> {f:g}x)"
    if last < budget:
        return "undecided", f"budget ended: last {unit} {last:g} < {budget:g} before a decision"
    if t_tr is None:
        return "confusion", f"train never held >= {tr:g} by {unit} {last:g}"
    if last >= f * t_tr:
        return "memorisation", (
            f"train >= {tr:g} at {unit} {t_tr:g}, test never held >= {te:g} by {last:g} (>= {f:g}x)"
        )
    return "undecided", (
        f"budget ended: train >= {tr:g} at {unit} {t_tr:g}, test not yet, last {last:g} "
        f"< {f:g}x {t_tr:g}"
    )
