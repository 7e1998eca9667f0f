"""Phase classifier: Yang et al.'s taxonomy (2021) as an explicit, stated rule.

The taxonomy (SCIENCE.md, "Phases") reads four signals per cell of the grid:

=====  =============  =================  ==================  =====
phase  training loss  Hessian            mode connectivity   CKA
=====  =============  =================  ==================  =====
I      high           large              negative (barrier)  -
II     high           large              positive            -
III    small          small              negative            -
IV-A   small          small              near 0              low
IV-B   small          small              near 0              high
=====  =============  =================  ==================  =====

Published code drew these boundaries by eye. Here each word is a threshold with a
principled default (all in :class:`PhaseThresholds`, resolved per sweep by
:func:`resolve_thresholds`):

1. **Training loss small**: cell mean ``train_loss <= loss_fraction * ln(C)``. ``ln C`` is
   the loss of the uniform predictor over ``C`` classes (chance), so the default 0.1 says
   "fitted to a tenth of chance-level loss". ``C`` comes from the data set; without it,
   a two-means (Otsu) split of log10 training loss across the sweep is used.
2. **Hessian large**: relative to the sweep's own distribution, on log10 of the cell mean
   of ``hessian_trace`` (falling back to ``hessian_top_eig``). Default: Otsu's split
   (the threshold that maximises the between-class variance of the two sides, i.e. 1-D
   two-means), which lands in the gap between a sharp and a flat regime. If the two sides'
   means are less than ``hessian_min_decades`` apart the sweep has one regime only and
   the Hessian is not used to split (the reason says so). ``median`` is the alternative.
3. **Local regime** (``local_rule``): ``agree`` (default) needs loss and Hessian to agree:
   small loss and small Hessian -> fitted (III/IV), high loss and large Hessian ->
   unfitted (I/II), disagreement -> ``mixed`` (not in the table, so not forced into it).
   ``loss`` or ``hessian`` let one signal decide. A missing signal defers to the other.
4. **mc near 0**: ``|mc| <= k * SE`` with ``SE = s / sqrt(n_pairs)`` for the cell's pair
   count and ``s`` the seed-to-seed standard deviation of mc pooled over every cell with
   two or more pairs (``k = mc_k = 3``: a cell is called off zero only when three standard
   errors away, so few of a large grid's cells flip by chance). Pairs of one group share
   models, so this SE is optimistic; k = 3 leaves room for that. With one pair per cell
   (two seeds) ``s`` is the pooled seed-to-seed standard deviation of the training error
   (mc is a difference of training errors along the curve, so its seed noise is of that
   size). The store keeps mc in percentage points and accuracies as fractions, so the
   proxy is ``100 * s(train_acc)``. ``mc_floor`` is a lower bound on the band.
   Fitted cells: ``mc < -band`` -> III, else IV (a positive mc beyond the band means the
   curve beats its endpoints: connected). Unfitted cells: the sign of mc decides, ``< 0``
   -> I, ``>= 0`` -> II (the table has no "near 0" row for high loss).
5. **CKA high** (IV-A vs IV-B): ``cka_linear_softmax`` (Yang's plotted value; falling back to
   logits, then features) at or above Otsu's split of the CKA values of the phase-IV
   candidates (fitted cells with mc not below the band): the other phases' CKA says nothing
   about where IV-A and IV-B part. If the two sides' means are closer than ``cka_min_gap``
   or than ``mc_k`` standard errors of a cell mean (pooled seed-pair spread of CKA), the
   candidates are one regime and stay ``IV`` (the reason says so). The loss fallback of
   step 1 (no class count) has the same guard, ``loss_min_decades``.

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
HESSIAN_METRICS = ("hessian_trace", "hessian_top_eig")
CKA_METRICS = ("cka_linear_softmax", "cka_linear_logits", "cka_linear_features")
SPLITS = ("otsu", "median")
# mc is stored in training-error percentage points, accuracies as fractions.
MC_PER_ACCURACY = 100.0
LOCAL_RULES = ("agree", "loss", "hessian")


def _knob(default: object, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose help text and choices live next to its default (used by the CLI)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class PhaseThresholds:
    """Settings of the phase rule; ``None`` means "derive from the sweep" (module docstring)."""

    loss_fraction: float = _knob(
        0.1, "small training loss: train_loss <= loss_fraction * ln(num_classes)"
    )
    num_classes: int | None = _knob(None, "number of classes C (default: from the data set)")
    train_loss: float | None = _knob(None, "absolute small-loss threshold; overrides loss_fraction")
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
        "agree", "which local signal decides: both must agree, or loss, or hessian", LOCAL_RULES
    )
    mc_k: float = _knob(3.0, "mc near 0: |mc| <= mc_k standard errors of the cell mean")
    mc_band: float | None = _knob(None, "absolute half-width of the mc near-0 band; overrides mc_k")
    mc_floor: float = _knob(0.0, "lower bound on the mc band half-width")
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
    loss_min_decades: float = _knob(
        0.5, "without a class count: log10 train_loss Otsu sides closer than this: loss unused"
    )

    def __post_init__(self) -> None:
        fin = math.isfinite
        _check(0 < self.loss_fraction <= 1, "loss_fraction", self.loss_fraction, "in (0, 1]")
        _check(fin(self.mc_k) and self.mc_k > 0, "mc_k", self.mc_k, "finite and > 0")
        _check(fin(self.mc_floor) and self.mc_floor >= 0, "mc_floor", self.mc_floor, "finite, >= 0")
        for name in ("hessian_min_decades", "loss_min_decades", "cka_min_gap"):
            value = getattr(self, name)
            _check(fin(value) and value >= 0, name, value, "finite and >= 0")
        _check(
            self.hessian in HESSIAN_METRICS, "hessian", self.hessian, f"one of {HESSIAN_METRICS}"
        )
        _check(self.cka in CKA_METRICS, "cka", self.cka, f"one of {CKA_METRICS}")
        _check(
            self.hessian_split in SPLITS, "hessian_split", self.hessian_split, f"one of {SPLITS}"
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
    """The numbers one sweep's cells were classified with, and where each came from."""

    train_loss: float | None
    train_loss_source: str
    hessian_metric: str | None
    hessian_log10: float | None  # threshold on log10 of the Hessian metric; None: not used
    hessian_source: str
    mc_sd: float | None  # seed-to-seed standard deviation of mc behind the noise band
    mc_source: str
    cka_metric: str | None
    cka_threshold: float | None
    cka_source: str

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
        if self.mc_sd is not None:
            rows.append(
                ("mc near 0", f"|mc| <= band, seed-to-seed s = {self.mc_sd:.3g} ({self.mc_source})")
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


def _present(cells: pd.DataFrame, preferred: str, options: tuple[str, ...]) -> str | None:
    order = [preferred, *[o for o in options if o != preferred]]
    return next((c for c in order if len(_finite(cells, c))), None)


def _split(values: np.ndarray, how: str) -> float | None:
    if how == "median":
        return float(np.median(values)) if len(values) else None
    split = otsu_split(values)
    return None if split is None else float(split[0])


def _resolve_loss(cells: pd.DataFrame, thr: PhaseThresholds, num_classes: int | None):
    if thr.train_loss is not None:
        return thr.train_loss, "given"
    c = thr.num_classes or num_classes
    if c is not None:
        return thr.loss_fraction * math.log(c), f"{thr.loss_fraction:g} x ln({c}) classes"
    loss = _finite(cells, "train_loss")
    split = otsu_split(np.log10(loss[loss > 0])) if len(loss) else None
    if split is None:
        return None, "no training loss"
    if split[1] < thr.loss_min_decades:
        why = f"one regime: log10 train_loss Otsu sides {split[1]:.2g} < {thr.loss_min_decades:g} decades apart"
        return None, f"{why} (number of classes unknown): loss unused"
    return float(10 ** split[0]), "Otsu split of log10 train_loss (number of classes unknown)"


def _resolve_hessian(cells: pd.DataFrame, thr: PhaseThresholds):
    metric = _present(cells, thr.hessian, HESSIAN_METRICS)
    if metric is None:
        return None, None, "not measured"
    if thr.hessian_threshold is not None:
        return metric, math.log10(thr.hessian_threshold), "given"
    values = _finite(cells, metric)
    logs = np.log10(values[values > 0])
    if thr.hessian_split == "median":
        return metric, _split(logs, "median"), "median of the sweep's log10 values"
    split = otsu_split(logs)
    if split is None or split[1] < thr.hessian_min_decades:
        gap = 0.0 if split is None else split[1]
        why = f"one regime: Otsu sides {gap:.2g} < {thr.hessian_min_decades:g} decades apart"
        return metric, None, why
    return metric, float(split[0]), f"Otsu split, sides {split[1]:.2g} decades apart"


def _pooled_sd(cells: pd.DataFrame, col: str) -> float | None:
    if f"{col}_std" not in cells or f"{col}_n" not in cells:
        return None
    n = pd.to_numeric(cells[f"{col}_n"], errors="coerce")
    s = pd.to_numeric(cells[f"{col}_std"], errors="coerce")
    ok = (n >= 2) & s.notna()
    dof = (n[ok] - 1).sum()
    return float(np.sqrt(((n[ok] - 1) * s[ok] ** 2).sum() / dof)) if dof > 0 else None


def _resolve_mc(cells: pd.DataFrame, thr: PhaseThresholds):
    if not len(_finite(cells, "mc")):
        return None, "not measured"
    if thr.mc_band is not None:
        return thr.mc_band, "given band"
    sd = _pooled_sd(cells, "mc")
    if sd is not None:
        return (
            sd,
            f"pooled over seed pairs, band = max({thr.mc_k:g} s / sqrt(pairs), {thr.mc_floor:g})",
        )
    sd = _pooled_sd(cells, "train_acc")
    if sd is not None:
        sd = MC_PER_ACCURACY * sd
        return sd, "proxy: pooled seed-to-seed s of training error in % (one pair per cell)"
    return thr.mc_floor, "no seed spread available: band = mc_floor"


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
        why = f"one regime: Otsu sides of the {len(values)} phase-IV candidates {gap:.2g} < {need:.2g} apart"
        return metric, None, why
    return (
        metric,
        float(split[0]),
        f"Otsu split over the {len(values)} phase-IV candidates, sides {split[1]:.2g} apart",
    )


def resolve_thresholds(
    cells: pd.DataFrame, thresholds: PhaseThresholds | None = None, num_classes: int | None = None
) -> ResolvedThresholds:
    """Turn :class:`PhaseThresholds` into numbers for these cells (see module docstring)."""
    thr = thresholds or PhaseThresholds()
    ok = cells[cells["n_ok"] > 0] if "n_ok" in cells else cells
    loss, loss_src = _resolve_loss(ok, thr, num_classes)
    h_metric, h_log, h_src = _resolve_hessian(ok, thr)
    mc_sd, mc_src = _resolve_mc(ok, thr)
    res = ResolvedThresholds(
        loss, loss_src, h_metric, h_log, h_src, mc_sd, mc_src, None, None, "not measured"
    )
    candidates = ok[[_is_iv_candidate(row, res, thr) for _, row in ok.iterrows()]]
    c_metric, c_thr, c_src = _resolve_cka(ok, thr, candidates)
    return dataclasses.replace(res, cka_metric=c_metric, cka_threshold=c_thr, cka_source=c_src)


def _is_iv_candidate(row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds) -> bool:
    """Fitted with mc within its band: a cell the CKA decides between IV-A and IV-B."""
    regime, _ = _local_regime(row, res, thr.local_rule)
    mc = _value(row, "mc")
    return regime == "fitted" and mc is not None and mc >= -_mc_band(row, res, thr)


def _value(row: pd.Series, col: str | None) -> float | None:
    if col is None or col not in row.index:
        return None
    v = pd.to_numeric(row[col], errors="coerce")
    return float(v) if pd.notna(v) and np.isfinite(v) else None


def _local_regime(
    row: pd.Series, res: ResolvedThresholds, rule: str
) -> tuple[str | None, list[str]]:
    """'fitted', 'unfitted', 'mixed' or None (no signal), and the reasons."""
    reasons, votes = [], {}
    loss = _value(row, "train_loss")
    if loss is not None and res.train_loss is not None:
        small = loss <= res.train_loss
        votes["loss"] = small
        reasons.append(
            f"train_loss {loss:.3g} {'<=' if small else '>'} {res.train_loss:.3g} ({'small' if small else 'high'})"
        )
    h = _value(row, res.hessian_metric)
    if h is not None and h > 0 and res.hessian_log10 is not None:
        small = math.log10(h) <= res.hessian_log10
        votes["hessian"] = small
        cmp = "<=" if small else ">"
        reasons.append(
            f"log10 {res.hessian_metric} {math.log10(h):.3g} {cmp} {res.hessian_log10:.3g} ({'small' if small else 'large'})"
        )
    if not votes:
        return None, reasons or ["no training loss or Hessian"]
    if rule in votes:
        fitted = votes[rule]
    elif len(set(votes.values())) > 1:
        return "mixed", [*reasons, "loss and Hessian disagree"]
    else:
        fitted = next(iter(votes.values()))
    return ("fitted" if fitted else "unfitted"), reasons


def _mc_band(row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds) -> float:
    if thr.mc_band is not None:
        return thr.mc_band
    n = _value(row, "mc_n") or 1.0
    return max(thr.mc_k * (res.mc_sd or 0.0) / math.sqrt(n), thr.mc_floor)


def classify_cell(row: pd.Series, res: ResolvedThresholds, thr: PhaseThresholds) -> tuple[str, str]:
    """(phase, reason) of one cell row from :func:`analysis.cells.aggregate_cells`."""
    if _value(row, "n_ok") == 0:
        phase = "diverged" if (_value(row, "n_diverged") or 0) > 0 else "failed"
        return phase, f"no finished run ({phase})"
    regime, reasons = _local_regime(row, res, thr.local_rule)
    if regime in (None, "mixed"):
        return ("unknown" if regime is None else "mixed"), "; ".join(reasons)
    mc = _value(row, "mc")
    if mc is None:
        return ("III/IV" if regime == "fitted" else "I/II"), "; ".join(
            [*reasons, "mc not measured"]
        )
    band = _mc_band(row, res, thr)
    where = "below" if mc < -band else "above" if mc > band else "within"
    reasons.append(f"mc {mc:.3g} {where} +-{band:.2g}")
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
    types = {"num_classes": int}
    out = []
    for f in fields(PhaseThresholds):
        kind = types.get(f.name, str if isinstance(f.default, str) else float)
        out.append((f.name, kind, f.default, f.metadata["help"], f.metadata["choices"]))
    return out
