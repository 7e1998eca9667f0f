"""Phase classifier: Yang et al.'s taxonomy (2021) as an explicit, stated rule.

The taxonomy (Yang et al. 2021, "Taxonomizing local versus global structure in neural network
loss landscapes", NeurIPS; their figure 1 and section 3) reads four signals per cell of the grid:

=====  =============  =================  ==================  =====
phase  training loss  Hessian            mode connectivity   CKA
=====  =============  =================  ==================  =====
I      high           large              negative (barrier)  -
II     high           large              positive            -
III    small          small              negative            -
IV-A   small          small              near 0              low
IV-B   small          small              near 0              high
=====  =============  =================  ==================  =====

Published code drew these boundaries by eye on heatmaps. Here each word is a threshold with a
stated default (all in :class:`PhaseThresholds`, resolved per sweep by
:func:`resolve_thresholds`), and each default's provenance is given with it:

1. **Training loss small**: relative to the sweep's own cells, as the Hessian is. Default
   (``loss_split=otsu``): Otsu's two-means split of log10 of the cell mean ``train_loss``.
   Provenance: with weight decay and no augmentation, CIFAR-10 models that are not fitted
   (train accuracy well below 100%) reach losses of a few hundredths while fitted ones sit
   near 1e-3, so no fixed line in loss units separates them on every task; a log scale,
   because losses span decades. Guard: if the two sides' means are less than
   ``loss_min_decades`` (0.5) apart, the sweep has one loss regime; it is then placed as a
   whole by the chance line ``loss_fraction * ln C`` (``ln C`` is the loss of the uniform
   predictor over ``C`` classes; the default 0.1 says "a tenth of chance"), or, without a
   class count, the loss is not used. ``loss_split=chance`` applies that line to every cell
   (this module's rule before the scale-free split).
2. **Hessian large**: the same split on log10 of the cell mean of ``hessian_trace`` (falling
   back to ``hessian_top_eig``). Otsu's threshold maximises the between-class variance of the
   two sides, so it lands in the gap between a sharp and a flat regime; if the sides' means
   are less than ``hessian_min_decades`` apart the sweep has one regime and the Hessian is
   not used (the reason says so). ``median`` is the alternative.
3. **Local regime** (``local_rule``): where loss and Hessian agree, fitted (III/IV) or
   unfitted (I/II). Where they disagree, the default ``nearest`` puts the cell in the regime
   it sits deeper in: each signal's *margin* is the distance of the cell's log10 value from
   its split in units of half the distance between that signal's two sides' means (a cell
   at its side's mean scores about 1), and the larger margin decides; this is the nearest
   regime centre when each signal is scaled by its own regime separation (two-means in the
   plane of the two standardised signals). A stated line (a given threshold, or the chance
   line of a one-regime loss) has no margin and outranks a split: within one loss regime a
   Hessian split is a temperature effect, not fitted against unfitted. Two stated lines
   that disagree, or equal margins, give ``mixed``. ``agree`` calls every disagreement
   ``mixed``; ``loss`` or ``hessian`` let one signal decide. A missing signal defers to
   the other.
4. **mc near 0**: ``|mc| <= k * s / sqrt(n_pairs)`` (``k = mc_k = 3``: a cell is called
   off zero only when three standard errors away, so few of a large grid's cells flip by
   chance; pairs of one group share models, so this standard error is optimistic and k = 3
   leaves room for that). ``s`` is the seed-to-seed spread of *comparable* cells, never of
   the whole sweep (unfitted cells spread by points, fitted ones by hundredths): the cell's
   own seed pairs when it has at least ``mc_min_pairs`` (10: five seeds, Yang's protocol) of
   them (``mc_std``), otherwise ``mc_std`` pooled over the cells of the same local regime
   (fitted cells for the III/IV decision). A spread from fewer pairs is itself too noisy to
   set a band: from 3 pairs (2 degrees of freedom) about one cell in five would get a band
   under half the true one. When no cell of the regime has two pairs (one curve per cell,
   Yang's protocol), there is no seed spread of mc at all, and the seed spread of the
   endpoints' training accuracy is not the noise of one curve's mc (fitted cells spread by
   hundredths of a point, so every barrier would be III). The band is then, as for the loss
   and the Hessian, Otsu's two-means split of log10 |mc| over the regime's cells
   (``mc_split=otsu``): ``|mc| <= 10^split`` is near 0, so connected cells and cells with a
   barrier are the two regimes of the fitted cells' barriers. With the same one-regime guard:
   if the two sides' means are closer than ``mc_min_decades`` (0.5) the barriers are one
   regime, and the proxy stands in: the seed-to-seed spread of the training error pooled over
   the same regime (mc is a difference of training errors along the curve, so its seed noise
   is of that size; the store keeps mc in percentage points and accuracies as fractions, so
   the proxy is ``100 * s(train_acc)``; ``mc_split=proxy`` always uses it). ``mc_floor`` is a lower
   bound on the band. Fitted cells: ``mc < -band`` -> III, else IV (a positive mc beyond the
   band means the curve beats its endpoints: connected). Unfitted cells: the sign of mc
   decides, ``< 0`` -> I, ``>= 0`` -> II (the table has no "near 0" row for high loss).
   **A curve that did not converge** measures under-training, not the landscape (a curve
   between a network and its own hidden-unit permutation, the same function, read mc -8.2
   after 200 steps and -0.8 after 8,000). The pairs table records each curve's mean
   training loss over the fifth of its steps before the last fifth and over the last fifth
   (``bezier_loss_prev``, ``bezier_loss_last``) and the relative improvement
   ``bezier_improvement = (prev - last) / prev``; a cell whose mean improvement exceeds
   ``mc_converge_tol`` (0.1: the means over steps of the demo's converged curves, whose t
   is drawn anew each step, differ by about 0.1 either way) has an unknown mc: the coarse
   ``III/IV`` or ``I/II``, with a reason that says so, and its mc takes no part in the
   band's split. Not measured (older results, curves under 5 steps): no evidence, mc stands.
5. **CKA high** (IV-A vs IV-B): ``cka_linear_softmax`` (Yang's plotted value; falling back to
   logits, then features) at or above Otsu's split of the CKA values of the phase-IV
   candidates (fitted cells with mc not below the band): the other phases' CKA says nothing
   about where IV-A and IV-B part. If the two sides' means are closer than ``cka_min_gap``
   or than ``mc_k`` standard errors of a cell mean (the candidates' pooled seed-pair spread
   of CKA), the candidates are one regime and stay ``IV`` (the reason says so).

Cells without a finished run are ``diverged`` (any diverged seed) or ``failed``. When
pairs were not measured the phase is the coarse ``I/II`` or ``III/IV``; without CKA, ``IV``.
Every cell's ``phase_reason`` names the values and thresholds that decided it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

PHASES = ("I", "II", "III", "IV-A", "IV-B")
COARSE = ("I/II", "III/IV", "IV")
OTHER = ("mixed", "unknown", "diverged", "failed")
PHASE_ORDER = PHASES + COARSE + OTHER
# What each phase says about a cell, for readers of a figure (the taxonomy's table above).
PHASE_MEANING = {
    "I": "not fitted, sharp, barrier between seeds",
    "II": "not fitted, sharp, seeds connected",
    "III": "fitted, flat, barrier between seeds",
    "IV-A": "fitted, flat, seeds connected, dissimilar outputs",
    "IV-B": "fitted, flat, seeds connected, similar outputs",
    "I/II": "not fitted, sharp; no mode-connectivity signal",
    "III/IV": "fitted, flat; no mode-connectivity signal",
    "IV": "fitted, flat, seeds connected; no CKA signal",
    "mixed": "training loss and Hessian disagree",
    "unknown": "a signal the rule needs is missing",
    "diverged": "training diverged",
    "failed": "no run of the cell finished",
}
HESSIAN_METRICS = ("hessian_trace", "hessian_top_eig")
CKA_METRICS = ("cka_linear_softmax", "cka_linear_logits", "cka_linear_features")
SPLITS = ("otsu", "median")
LOSS_SPLITS = ("otsu", "chance")
MC_SPLITS = ("otsu", "proxy")
# mc is stored in training-error percentage points, accuracies as fractions.
MC_PER_ACCURACY = 100.0
LOCAL_RULES = ("nearest", "agree", "loss", "hessian")
REGIMES = ("fitted", "unfitted")


def _knob(default: object, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose help text and choices live next to its default (used by the CLI)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class PhaseThresholds:
    """Settings of the phase rule; ``None`` means "derive from the sweep" (module docstring)."""

    loss_split: str = _knob(
        "otsu",
        "small training loss: Otsu split of log10 train_loss across the sweep, or the chance "
        "line loss_fraction * ln(num_classes) for every cell",
        LOSS_SPLITS,
    )
    loss_fraction: float = _knob(
        0.1, "chance line: train_loss <= loss_fraction * ln(num_classes) (one loss regime)"
    )
    num_classes: int | None = _knob(None, "number of classes C (default: from the data set)")
    train_loss: float | None = _knob(None, "absolute small-loss threshold; overrides the split")
    loss_min_decades: float = _knob(
        0.5, "log10 train_loss Otsu sides closer than this: one loss regime"
    )
    hessian: str = _knob(
        "hessian_trace", "Hessian metric (falls back to the other when absent)", HESSIAN_METRICS
    )
    hessian_split: str = _knob(
        "otsu", "how 'large' is split on log10 Hessian across the sweep", SPLITS
    )
    hessian_threshold: float | None = _knob(
        None, "absolute Hessian threshold (metric units); overrides the split"
    )
    hessian_min_decades: float = _knob(
        0.5, "Otsu sides closer than this many decades: one regime, Hessian unused"
    )
    local_rule: str = _knob(
        "nearest",
        "loss vs Hessian disagreement: the larger margin decides (nearest), mixed (agree), "
        "or one signal decides",
        LOCAL_RULES,
    )
    mc_k: float = _knob(3.0, "mc near 0: |mc| <= mc_k standard errors of the cell mean")
    mc_min_pairs: int = _knob(
        10, "a cell with this many seed pairs uses its own mc spread (else its regime's pooled)"
    )
    mc_band: float | None = _knob(None, "absolute half-width of the mc near-0 band; overrides mc_k")
    mc_floor: float = _knob(0.0, "lower bound on the mc band half-width")
    mc_split: str = _knob(
        "otsu",
        "band when cells have no mc seed spread: Otsu split of log10 |mc| over the regime's "
        "cells (otsu), or 100 x the pooled seed spread of training accuracy (proxy)",
        MC_SPLITS,
    )
    mc_min_decades: float = _knob(
        0.5, "log10 |mc| Otsu sides closer than this: one mc regime, the proxy band is used"
    )
    mc_converge_tol: float = _knob(
        0.1,
        "a curve whose mean training loss fell by more than this fraction over its last fifth "
        "of steps did not converge: its mc is unknown",
    )
    cka: str = _knob(
        "cka_linear_softmax", "CKA metric for IV-A/IV-B (falls back to the others)", CKA_METRICS
    )
    cka_split: str = _knob("otsu", "how 'high' CKA is split across the sweep", SPLITS)
    cka_threshold: float | None = _knob(
        None, "absolute CKA threshold for IV-B; overrides the split"
    )
    cka_min_gap: float = _knob(
        0.05, "CKA Otsu sides closer than this (and than mc_k pooled SEs): one regime, phase IV"
    )

    def __post_init__(self) -> None:
        fin = math.isfinite
        _check(0 < self.loss_fraction <= 1, "loss_fraction", self.loss_fraction, "in (0, 1]")
        _check(fin(self.mc_k) and self.mc_k > 0, "mc_k", self.mc_k, "finite and > 0")
        _check(fin(self.mc_floor) and self.mc_floor >= 0, "mc_floor", self.mc_floor, "finite, >= 0")
        _check(self.mc_min_pairs >= 2, "mc_min_pairs", self.mc_min_pairs, ">= 2")
        _check(self.mc_split in MC_SPLITS, "mc_split", self.mc_split, f"one of {MC_SPLITS}")
        for name in (
            "hessian_min_decades",
            "loss_min_decades",
            "mc_min_decades",
            "cka_min_gap",
            "mc_converge_tol",
        ):
            value = getattr(self, name)
            _check(fin(value) and value >= 0, name, value, "finite and >= 0")
        _check(
            self.hessian in HESSIAN_METRICS, "hessian", self.hessian, f"one of {HESSIAN_METRICS}"
        )
        _check(self.cka in CKA_METRICS, "cka", self.cka, f"one of {CKA_METRICS}")
        _check(
            self.hessian_split in SPLITS, "hessian_split", self.hessian_split, f"one of {SPLITS}"
        )
        _check(
            self.loss_split in LOSS_SPLITS, "loss_split", self.loss_split, f"one of {LOSS_SPLITS}"
        )
        _check(self.cka_split in SPLITS, "cka_split", self.cka_split, f"one of {SPLITS}")
        _check(
            self.local_rule in LOCAL_RULES, "local_rule", self.local_rule, f"one of {LOCAL_RULES}"
        )
        for name in ("train_loss", "hessian_threshold", "mc_band"):
            value = getattr(self, name)
            _check(
                value is None or fin(value) and value > 0, name, value, "finite and > 0, or None"
            )
        cka = self.cka_threshold
        _check(cka is None or 0 <= cka <= 1, "cka_threshold", cka, "in [0, 1] or None")
        n = self.num_classes
        _check(n is None or n >= 2, "num_classes", n, ">= 2 or None")


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"phase threshold {name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class ResolvedThresholds:
    """The numbers one sweep's cells were classified with, and where each came from.

    ``*_half_gap`` is half the distance (in decades) between the two sides' means of a
    split, the unit of a cell's margin (module docstring, step 3); None for a stated line.
    ``mc_sd`` maps each local regime to the pooled seed-to-seed spread of mc (percentage
    points) that cells with fewer than ``mc_min_pairs`` pairs use, ``mc_source`` to where
    it came from.
    """

    train_loss: float | None
    train_loss_source: str
    hessian_metric: str | None
    hessian_log10: float | None  # threshold on log10 of the Hessian metric; None: not used
    hessian_source: str
    mc_sd: dict[str, float | None]
    mc_source: dict[str, str]
    cka_metric: str | None
    cka_threshold: float | None
    cka_source: str
    loss_half_gap: float | None = None
    hessian_half_gap: float | None = None
    # regime -> half-width of the mc band from the split of log10 |mc| (cells without own pairs)
    mc_split_band: dict[str, float] = field(default_factory=dict)

    def describe(self) -> list[tuple[str, str]]:
        """(signal, rule) rows for a summary table."""
        rows = []
        if self.train_loss is not None:
            rows.append(
                (
                    "training loss small",
                    f"train_loss <= {self.train_loss:.4g} ({self.train_loss_source})",
                )
            )
        elif self.train_loss_source != "no training loss":
            rows.append(("training loss small", f"not used ({self.train_loss_source})"))
        if self.hessian_metric is not None:
            rule = (
                f"log10 {self.hessian_metric} > {self.hessian_log10:.3g}"
                if self.hessian_log10 is not None
                else "not used"
            )
            rows.append(("Hessian large", f"{rule} ({self.hessian_source})"))
        for regime in REGIMES:
            if regime in self.mc_source:
                sd = self.mc_sd.get(regime)
                spread = (
                    "no spread" if sd is None else f"seed spread of mc {sd:.3g} percentage points"
                )
                if regime in self.mc_split_band:
                    spread = f"band +-{self.mc_split_band[regime]:.3g} percentage points"
                rows.append(
                    (
                        f"mc near 0 ({regime} cells)",
                        f"|mc| within the band; {spread} ({self.mc_source[regime]})",
                    )
                )
        if self.cka_threshold is not None:
            rows.append(
                ("CKA high", f"{self.cka_metric} >= {self.cka_threshold:.3g} ({self.cka_source})")
            )
        elif self.cka_metric is not None:
            rows.append(("CKA high", f"not used ({self.cka_source})"))
        return rows


def otsu_split(values: np.ndarray) -> tuple[float, float] | None:
    """Otsu's threshold of 1-D ``values`` and the gap between the two sides' means.

    The threshold is the midpoint between the two adjacent sorted values at the split that
    maximises the between-class variance ``w0 * w1 * (m0 - m1)^2``. ``None`` for fewer than
    two distinct values.
    """
    x = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    if len(np.unique(x)) < 2:
        return None
    best, best_i = -1.0, 0
    for i in range(1, len(x)):
        if x[i] == x[i - 1]:
            continue
        lo, hi = x[:i], x[i:]
        score = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if score > best:
            best, best_i = score, i
    lo, hi = x[:best_i], x[best_i:]
    return (x[best_i - 1] + x[best_i]) / 2, hi.mean() - lo.mean()


def _finite(cells: pd.DataFrame, col: str) -> np.ndarray:
    if col not in cells:
        return np.array([])
    v = pd.to_numeric(cells[col], errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _positive_log10(cells: pd.DataFrame, col: str) -> np.ndarray:
    values = _finite(cells, col)
    return np.log10(values[values > 0])


def _present(cells: pd.DataFrame, preferred: str, options: tuple[str, ...]) -> str | None:
    order = [preferred, *[o for o in options if o != preferred]]
    return next((c for c in order if len(_finite(cells, c))), None)


def _split(values: np.ndarray, how: str) -> float | None:
    if how == "median":
        return float(np.median(values)) if len(values) else None
    split = otsu_split(values)
    return None if split is None else float(split[0])


def _half_gap(values: np.ndarray, threshold: float) -> float | None:
    """Half the distance between the means of the values above and at-or-below ``threshold``."""
    lo, hi = values[values <= threshold], values[values > threshold]
    return float(hi.mean() - lo.mean()) / 2 if len(lo) and len(hi) else None


def _resolve_loss(cells: pd.DataFrame, thr: PhaseThresholds, num_classes: int | None):
    """(threshold, half gap in decades or None for a stated line, source)."""
    if thr.train_loss is not None:
        return thr.train_loss, None, "given"
    c = thr.num_classes or num_classes
    chance = None if c is None else thr.loss_fraction * math.log(c)
    line = f"chance line {thr.loss_fraction:g} x ln({c}) classes"
    if thr.loss_split == "chance" and chance is not None:
        return chance, None, line
    logs = _positive_log10(cells, "train_loss")
    split = otsu_split(logs)
    if split is None and not len(logs):
        return None, None, "no training loss"
    if split is not None and split[1] >= thr.loss_min_decades:
        half = _half_gap(logs, split[0])
        return (
            float(10 ** split[0]),
            half,
            f"Otsu split of log10 into two groups whose means are {split[1]:.2g} decades apart",
        )
    gap = 0.0 if split is None else split[1]
    why = f"one regime: the split's two groups are only {gap:.2g} decades apart (< {thr.loss_min_decades:g})"
    if chance is None:
        return None, None, f"{why}, number of classes unknown: loss unused"
    return chance, None, f"{why}, placed by the {line}"


def small_loss_threshold(
    cells: pd.DataFrame, thresholds: PhaseThresholds | None = None, num_classes: int | None = None
) -> tuple[float | None, str]:
    """Step 1 alone: the training loss at or below which a cell counts as fitted, and its
    source (None when the loss cannot tell: not measured, or one regime and no class count)."""
    loss, _, source = _resolve_loss(cells, thresholds or PhaseThresholds(), num_classes)
    return loss, source


def _resolve_hessian(cells: pd.DataFrame, thr: PhaseThresholds):
    """(metric, log10 threshold, half gap in decades or None for a stated line, source)."""
    metric = _present(cells, thr.hessian, HESSIAN_METRICS)
    if metric is None:
        return None, None, None, "not measured"
    if thr.hessian_threshold is not None:
        return metric, math.log10(thr.hessian_threshold), None, "given"
    logs = _positive_log10(cells, metric)
    if thr.hessian_split == "median":
        cut = _split(logs, "median")
        half = None if cut is None else _half_gap(logs, cut)
        return metric, cut, half, "median of the sweep's log10 values"
    split = otsu_split(logs)
    if split is None or split[1] < thr.hessian_min_decades:
        gap = 0.0 if split is None else split[1]
        why = f"one regime: the split's two groups are only {gap:.2g} decades apart (< {thr.hessian_min_decades:g})"
        return metric, None, None, why
    half = _half_gap(logs, split[0])
    return (
        metric,
        float(split[0]),
        half,
        f"Otsu split of log10 into two groups whose means are {split[1]:.2g} decades apart",
    )


def _pooled_sd(cells: pd.DataFrame, col: str) -> float | None:
    if f"{col}_std" not in cells or f"{col}_n" not in cells:
        return None
    n = pd.to_numeric(cells[f"{col}_n"], errors="coerce")
    s = pd.to_numeric(cells[f"{col}_std"], errors="coerce")
    ok = (n >= 2) & s.notna()
    dof = (n[ok] - 1).sum()
    return float(np.sqrt(((n[ok] - 1) * s[ok] ** 2).sum() / dof)) if dof > 0 else None


def _split_mc(same: pd.DataFrame, thr: PhaseThresholds, where: str):
    """Band from Otsu's split of log10 |mc| over ``same`` (one curve per cell): None when the
    sides' means are closer than ``mc_min_decades`` (one mc regime) or there is no split."""
    mc = np.abs(_finite(same, "mc"))
    split = otsu_split(np.log10(mc[mc > 0]))
    if split is None or split[1] < thr.mc_min_decades:
        gap = 0.0 if split is None else split[1]
        return (
            None,
            f"one mc regime: the split's two groups of log10 |mc| are only {gap:.2g} decades apart (< {thr.mc_min_decades:g})",
        )
    return (
        float(10 ** split[0]),
        f"Otsu split of log10 |mc| over {where}, into two groups whose means are {split[1]:.2g} decades apart",
    )


def _resolve_mc(cells: pd.DataFrame, regimes: pd.Series, thr: PhaseThresholds):
    """Per local regime, the pooled seed-to-seed spread of mc (or the split band) and its source.

    Pooled over the cells of one regime only: unfitted cells spread by points and fitted ones
    by hundredths, so a band pooled over both would hide the fitted cells' barriers. Where no
    cell of the regime has two pairs, the band is Otsu's split of log10 |mc| over the regime's
    cells (module docstring, step 4), with the proxy only for one mc regime.
    """
    sds: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    bands: dict[str, float] = {}
    if not len(_finite(cells, "mc")):
        return sds, sources, bands
    for regime in REGIMES:
        same = cells[regimes == regime]
        if not len(same):
            continue
        where = f"the {len(same)} {regime} cells"
        if thr.mc_band is not None:
            sds[regime], sources[regime] = None, f"given band {thr.mc_band:g}"
            continue
        if (sd := _pooled_sd(same, "mc")) is not None:
            own = f"a cell's own pairs when >= {thr.mc_min_pairs}"
            sds[regime], sources[regime] = sd, f"{own}, else seed pairs pooled over {where}"
            continue
        why = ""
        if thr.mc_split == "otsu":
            band, why = _split_mc(same, thr, where)
            if band is not None:
                sds[regime], sources[regime], bands[regime] = None, why, band
                continue
            why = f"{why}; "
        if (sd := _pooled_sd(same, "train_acc")) is not None:
            sds[regime] = MC_PER_ACCURACY * sd
            sources[regime] = f"{why}proxy: seed spread of training error in %, pooled over {where}"
        else:
            sds[regime], sources[regime] = (
                None,
                f"{why}no seed spread: band = mc_floor {thr.mc_floor:g}",
            )
    return sds, sources, bands


def _resolve_cka(cells: pd.DataFrame, thr: PhaseThresholds, candidates: pd.DataFrame):
    """CKA's threshold, split over the phase-IV candidates only (fitted, mc near 0): IV-A and
    IV-B are two regimes of those cells, and phase I-III cells' CKA says nothing about where
    they part. Otsu's split needs its two sides' means at least ``cka_min_gap`` apart and at
    least ``mc_k`` standard errors of a cell's mean (pooled seed-pair spread); otherwise the
    candidates are one regime and stay ``IV``."""
    metric = _present(cells, thr.cka, CKA_METRICS)
    if metric is None:
        return None, None, "not measured"
    if thr.cka_threshold is not None:
        return metric, thr.cka_threshold, "given"
    values = _finite(candidates, metric)
    if thr.cka_split == "median":
        return metric, _split(values, "median"), "median over the phase-IV candidates"
    split = otsu_split(values)
    sd = _pooled_sd(candidates, metric)
    n = pd.to_numeric(candidates.get(f"{metric}_n"), errors="coerce")
    se = sd / math.sqrt(max(float(n.mean()), 1.0)) if sd is not None and n is not None else 0.0
    need = max(thr.cka_min_gap, thr.mc_k * se)
    if split is None or split[1] < need:
        gap = 0.0 if split is None else split[1]
        why = f"one regime: the split's two groups of the {len(values)} phase-IV candidates are only {gap:.2g} apart (< {need:.2g})"
        return metric, None, why
    return (
        metric,
        float(split[0]),
        f"Otsu split over the {len(values)} phase-IV candidates into two groups whose means are {split[1]:.2g} apart",
    )


def resolve_thresholds(
    cells: pd.DataFrame, thresholds: PhaseThresholds | None = None, num_classes: int | None = None
) -> ResolvedThresholds:
    """Turn :class:`PhaseThresholds` into numbers for these cells (see module docstring)."""
    thr = thresholds or PhaseThresholds()
    ok = cells[cells["n_ok"] > 0] if "n_ok" in cells else cells
    loss, loss_half, loss_src = _resolve_loss(ok, thr, num_classes)
    h_metric, h_log, h_half, h_src = _resolve_hessian(ok, thr)
    res = ResolvedThresholds(
        loss, loss_src, h_metric, h_log, h_src, {}, {}, None, None, "not measured",
        loss_half_gap=loss_half, hessian_half_gap=h_half,
    )  # fmt: skip
    regimes = pd.Series(
        [_local_regime(row, res, thr.local_rule)[0] for _, row in ok.iterrows()], index=ok.index
    )
    converged = pd.Series(
        [_unconverged(row, thr) is None for _, row in ok.iterrows()], index=ok.index
    )
    mc_sd, mc_src, mc_bands = _resolve_mc(ok[converged], regimes[converged], thr)
    res = dataclasses.replace(res, mc_sd=mc_sd, mc_source=mc_src, mc_split_band=mc_bands)
    candidates = ok[[_is_iv_candidate(row, res, thr) for _, row in ok.iterrows()]]
    c_metric, c_thr, c_src = _resolve_cka(ok, thr, candidates)
    return dataclasses.replace(res, cka_metric=c_metric, cka_threshold=c_thr, cka_source=c_src)


def _is_iv_candidate(row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds) -> bool:
    """Fitted with mc within its band: a cell the CKA decides between IV-A and IV-B."""
    regime, _ = _local_regime(row, res, thr.local_rule)
    mc = _value(row, "mc") if _unconverged(row, thr) is None else None
    return regime == "fitted" and mc is not None and mc >= -_mc_band(row, res, thr, regime)[0]


def _unconverged(row: pd.Series, thr: PhaseThresholds) -> str | None:
    """Why the cell's Bezier curves had not converged (module docstring, step 4), or None:
    their mean relative improvement of the training loss over the last fifth of their steps
    (``bezier_improvement``) above ``mc_converge_tol``. Not measured: None (no evidence)."""
    improvement = _value(row, "bezier_improvement")
    if improvement is None or improvement <= thr.mc_converge_tol:
        return None
    return (
        f"mc unknown: its curve had not converged (training loss fell {100 * improvement:.3g}% "
        f"over its last fifth of steps > mc_converge_tol {100 * thr.mc_converge_tol:g}%)"
    )


def _value(row: pd.Series, col: str | None) -> float | None:
    if col is None or col not in row.index:
        return None
    v = pd.to_numeric(row[col], errors="coerce")
    return float(v) if pd.notna(v) and np.isfinite(v) else None


@dataclass(frozen=True)
class _Vote:
    """One local signal's reading of a cell: small (fitted side) or not, and its margin."""

    name: str
    small: bool
    margin: float | None  # distance from the split in half gaps; None: a stated line
    reason: str


def _vote(
    name: str, text: str, log_value: float, log_cut: float, cut: str, half: float | None, words
) -> _Vote:
    """``text`` (the value) against ``cut`` (the threshold), both also given in log10."""
    small = log_value <= log_cut
    margin = abs(log_value - log_cut) / half if half else None
    why = words[0] if small else words[1]
    if margin is not None:
        why += f", margin {margin:.2g}"
    return _Vote(name, small, margin, f"{text} {'<=' if small else '>'} {cut} ({why})")


def _votes(row: pd.Series, res: ResolvedThresholds) -> list[_Vote]:
    votes = []
    loss = _value(row, "train_loss")
    if loss is not None and loss > 0 and res.train_loss is not None:
        votes.append(
            _vote(
                "loss",
                f"train_loss {loss:.3g}",
                math.log10(loss),
                math.log10(res.train_loss),
                f"{res.train_loss:.3g}",
                res.loss_half_gap,
                ("small", "high"),
            )
        )
    h = _value(row, res.hessian_metric)
    if h is not None and h > 0 and res.hessian_log10 is not None:
        votes.append(
            _vote(
                "hessian",
                f"log10 {res.hessian_metric} {math.log10(h):.3g}",
                math.log10(h),
                res.hessian_log10,
                f"{res.hessian_log10:.3g}",
                res.hessian_half_gap,
                ("small", "large"),
            )
        )
    return votes


def _settle(votes: list[_Vote], rule: str) -> tuple[_Vote | None, str]:
    """The vote that decides when loss and Hessian disagree (None: mixed), and why."""
    if rule == "agree":
        return None, "loss and Hessian disagree"
    a, b = votes
    if a.margin is None and b.margin is None:
        return None, "loss and Hessian disagree, both stated lines"
    if a.margin is None or b.margin is None:
        line = a if a.margin is None else b
        return line, f"loss and Hessian disagree: the {line.name}'s stated line decides"
    if a.margin == b.margin:
        return None, "loss and Hessian disagree by equal margins"
    win, lose = (a, b) if a.margin > b.margin else (b, a)
    why = f"loss and Hessian disagree: the {win.name} margin {win.margin:.2g} > {lose.margin:.2g} decides"
    return win, why


def _local_regime(
    row: pd.Series, res: ResolvedThresholds, rule: str
) -> tuple[str | None, list[str]]:
    """'fitted', 'unfitted', 'mixed' or None (no signal), and the reasons."""
    votes = _votes(row, res)
    reasons = [v.reason for v in votes]
    if not votes:
        return None, ["no training loss or Hessian"]
    chosen = next((v for v in votes if v.name == rule), None)
    if chosen is None and len({v.small for v in votes}) > 1:
        chosen, why = _settle(votes, rule)
        reasons.append(why)
        if chosen is None:
            return "mixed", reasons
    chosen = chosen or votes[0]
    return ("fitted" if chosen.small else "unfitted"), reasons


def _mc_band(
    row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds, regime: str | None
) -> tuple[float, str]:
    """Half-width of the cell's mc near-0 band and whose spread it used."""
    if thr.mc_band is not None:
        return thr.mc_band, "given"
    n = _value(row, "mc_n") or 1.0
    own = _value(row, "mc_std")
    if own is not None and n >= thr.mc_min_pairs:
        sd, whose = own, f"own {n:g} pairs"
    elif (band := res.mc_split_band.get(regime or "")) is not None:
        return max(band, thr.mc_floor), f"log10 |mc| split over {regime} cells"
    else:
        sd, whose = res.mc_sd.get(regime or ""), f"pooled over {regime} cells"
    if sd is None:
        return thr.mc_floor, "mc_floor"
    return max(thr.mc_k * sd / math.sqrt(n), thr.mc_floor), whose


def classify_cell(row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds) -> tuple[str, str]:
    """(phase, reason) of one cell row from :func:`analysis.cells.aggregate_cells`."""
    if _value(row, "n_ok") == 0:
        phase = "diverged" if (_value(row, "n_diverged") or 0) > 0 else "failed"
        return phase, f"no finished run ({phase})"
    regime, reasons = _local_regime(row, res, thr.local_rule)
    if regime in (None, "mixed"):
        return ("unknown" if regime is None else "mixed"), "; ".join(reasons)
    mc = _value(row, "mc")
    if mc is None or (why := _unconverged(row, thr)) is not None:
        return ("III/IV" if regime == "fitted" else "I/II"), "; ".join(
            [*reasons, "mc not measured" if mc is None else why]
        )
    band, whose = _mc_band(row, res, thr, regime)
    where = "below" if mc < -band else "above" if mc > band else "within"
    reasons.append(f"mc {mc:.3g} {where} +-{band:.2g} ({whose})")
    if regime == "unfitted":
        return ("I" if mc < 0 else "II"), "; ".join(reasons)
    if mc < -band:
        return "III", "; ".join(reasons)
    cka = _value(row, res.cka_metric)
    if cka is None or res.cka_metric is None:
        return "IV", "; ".join([*reasons, "CKA not measured"])
    if res.cka_threshold is None:
        return "IV", "; ".join([*reasons, f"CKA {res.cka_source}"])
    high = cka >= res.cka_threshold
    reasons.append(
        f"{res.cka_metric} {cka:.3g} {'>=' if high else '<'} {res.cka_threshold:.3g} ({'high' if high else 'low'})"
    )
    return ("IV-B" if high else "IV-A"), "; ".join(reasons)


def classify_phases(
    cells: pd.DataFrame, thresholds: PhaseThresholds | None = None, num_classes: int | None = None
) -> pd.DataFrame:
    """``cells`` plus ``phase`` and ``phase_reason`` columns (rule in the module docstring).

    The resolved thresholds are kept in ``.attrs["phase_thresholds"]`` of the result.
    """
    thr = thresholds or PhaseThresholds()
    res = resolve_thresholds(cells, thr, num_classes)
    labelled = [classify_cell(row, res, thr) for _, row in cells.iterrows()]
    out = cells.copy()
    out["phase"] = [p for p, _ in labelled]
    out["phase_reason"] = [r for _, r in labelled]
    out.attrs["phase_thresholds"] = res
    return out


def threshold_options() -> list[tuple[str, type, object, str, tuple[str, ...] | None]]:
    """(name, type, default, help, choices) of every :class:`PhaseThresholds` field, for a CLI."""
    types = {"num_classes": int, "mc_min_pairs": int}
    out = []
    for f in fields(PhaseThresholds):
        kind = types.get(f.name, str if isinstance(f.default, str) else float)
        out.append((f.name, kind, f.default, f.metadata["help"], f.metadata["choices"]))
    return out
