"""``landscape-claims <dir> [<dir> ...]``: does a sweep reproduce the literature's qualitative results?

Each :class:`Claim` is one published qualitative result (one a correct system must
reproduce) stated as a direction: a measure rises (``+1``) or
falls (``-1``) as one knob grows. A sweep *tests* a claim when its runs vary that knob and
carry that measure; the presets in ``conf/sweep/literature_*.yaml`` (and the demo, for the
batch-size claim) are built to test them on a laptop.

The rule, stated so it can be argued with (defaults in :class:`Rule`):

1. Runs are grouped by every other knob the sweep varies (the seed aside), so a claim
   about batch size is tested within each width, never across widths.
2. Within a group, the seeds at each value of the knob give a mean, a sample standard
   deviation and a count (runs with ``status == "ok"`` only, except for the measure
   ``diverged``, which counts every run). Pair measures (``mc``, CKA, barriers) take every
   seed pair of the replicate group as a sample.
3. The **trend** of a group is Kendall's tau-b between the knob's values and those means;
   the claim's trend is the mean over groups.
4. The **effect** of a group is the difference between the means at the knob's largest and
   smallest value; the claim's effect size is
   ``z = sum(differences) / sqrt(s^2 * sum(1/n_high + 1/n_low))``, where ``s^2`` is the
   seed-to-seed variance pooled over every (group, knob value) cell with two or more samples
   (the residual variance of a one-way layout) and ``n`` are the ends' sample counts. With
   one sample per cell everywhere there is no spread to measure by: z is NaN. A zero pooled
   variance (every seed agreeing, e.g. all diverging at one end and none at the other) gives
   an infinite z of the difference's sign.
5. A claim about minima (``fitted_only``: the Hessian, sharpness and roughness claims)
   compares fitted models only: Keskar et al. and Li et al. compare trained minima, and an
   unfitted model's curvature says nothing about the minimum it did not reach. Cells (one
   setting of every knob but the seed) whose mean training loss is above the phase
   classifier's small-loss threshold (step 1 of :mod:`analysis.phases`, decided by the loss
   alone, never by the Hessian the claim is about) are left out, and the verdict's note says
   how many. If no group keeps two values of the knob, the verdict is **inconclusive** and
   the note says why.
6. **reproduced** when ``direction * trend >= rule.min_trend`` and
   ``direction * z >= rule.min_z``; **contradicted** when both hold with the opposite sign;
   otherwise **inconclusive** (the seeds cannot tell the effect from noise, or the trend is
   not monotone).
7. **Grokking** measures, per ok run, from :func:`analysis.grokking.grokking_phases` on its
   curves: ``generalised`` is 1 for comprehension or grokking, 0 for memorisation, and
   missing (not counted) for confusion (a model that does not fit its training set neither
   memorises nor generalises) and when the budget ended undecided; ``grokking_delay``
   is the steps from the training to the test crossing (runs that did not generalise have
   none: confusion ends the claim that weight decay shortens the delay, rather than
   counting as a short one); ``norm_test_tau`` is Kendall's tau between the weight norm
   (``param_norm`` in the trajectory table) and test accuracy over the steps where both were
   measured (at least 3). A claim without a knob (``knob=None``, e.g. "the weight norm falls
   as test accuracy rises") is a one-sample test over runs: trend is the mean of the
   measure, ``z`` its mean over its standard error, with the same thresholds.

``--json PATH`` writes the table as JSON too. Bad input (a missing directory, no runs
table) prints one line and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Results, ResultsError, load_results
from analysis.oneline import OneLineParser

# Measures computed here from the runs (and curves) tables, over every run, not only ok ones.
DERIVED = ("diverged", "diverged_first_epoch")
# Measures of each ok run read from its accuracy curves by analysis.grokking (rule step 7).
GROKKING = ("generalised", "grokking_delay", "norm_test_tau")


@dataclass(frozen=True)
class Claim:
    """A published qualitative result: ``measure`` moves in ``direction`` as ``knob`` grows."""

    name: str
    statement: str
    reference: str
    knob: str | None  # None: a one-sample claim about the measure's sign (rule step 7)
    measure: str
    direction: int  # +1: the measure grows with the knob; -1: it falls
    # compare fitted models only (a claim about minima; rule step 5)
    fitted_only: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "small_batch_flatter_trace",
        "small-batch SGD reaches flatter minima: Hessian trace grows with batch size",
        "Keskar et al. 2017; Yang et al. 2021",
        "optim.batch_size",
        "hessian_trace",
        +1,
        fitted_only=True,
    ),
    Claim(
        "small_batch_flatter_top_eig",
        "small-batch SGD reaches flatter minima: top Hessian eigenvalue grows with batch size",
        "Keskar et al. 2017; Yang et al. 2021",
        "optim.batch_size",
        "hessian_top_eig",
        +1,
        fitted_only=True,
    ),
    Claim(
        "skips_flatter_top_eig",
        "removing skip connections makes the minimum sharper (top Hessian eigenvalue)",
        "Li et al. 2018",
        "model.skip",
        "hessian_top_eig",
        -1,
        fitted_only=True,
    ),
    Claim(
        "skips_flatter_trace",
        "removing skip connections makes the minimum sharper (Hessian trace)",
        "Li et al. 2018",
        "model.skip",
        "hessian_trace",
        -1,
        fitted_only=True,
    ),
    Claim(
        "skips_smoother_surface",
        "removing skip connections makes the surface more chaotic (roughness index)",
        "Li et al. 2018; roughness after Wu et al. 2021",
        "model.skip",
        "roughness",
        -1,
        fitted_only=True,
    ),
    Claim(
        "noise_lowers_test_acc",
        "more label noise lowers test accuracy",
        "Yang et al. 2021",
        "data.label_noise",
        "test_acc",
        -1,
    ),
    Claim(
        "noise_breaks_connectivity",
        "more label noise makes small models poorly connected (Bezier mc falls)",
        "Yang et al. 2021",
        "data.label_noise",
        "mc",
        -1,
    ),
    Claim(
        "width_connects",
        "wider models are better connected (Bezier mc rises towards 0 with width)",
        "Yang et al. 2021",
        "model.width",
        "mc",
        +1,
    ),
    Claim(
        "data_raises_test_acc",
        "less data lowers test accuracy",
        "Yang et al. 2021",
        "data.subset",
        "test_acc",
        +1,
    ),
    Claim(
        "data_connects",
        "less data makes small models poorly connected (Bezier mc rises with data)",
        "Yang et al. 2021",
        "data.subset",
        "mc",
        +1,
    ),
    Claim(
        "lr_stiffens_classes",
        "higher learning rates make stiffness between classes higher",
        "Fort et al. 2019",
        "optim.lr",
        "stiffness_between_cos",
        +1,
    ),
    Claim(
        "grokking_needs_weight_decay",
        "without weight decay the model memorises where weight decay makes it generalise",
        "Power et al. 2022; Liu et al. 2022",
        "optim.weight_decay",
        "generalised",
        +1,
    ),
    Claim(
        "grokking_delay_falls_with_data",
        "the delay of generalisation grows as the training fraction falls",
        "Power et al. 2022; Liu et al. 2022",
        "data.train_fraction",
        "grokking_delay",
        -1,
    ),
    Claim(
        "grokking_critical_fraction",
        "below a critical training fraction there is no generalisation within the budget",
        "Power et al. 2022; Liu et al. 2022",
        "data.train_fraction",
        "generalised",
        +1,
    ),
    Claim(
        "grokking_weight_decay_shortens_delay",
        "more weight decay shortens the delay of generalisation (until confusion)",
        "Liu et al. 2022",
        "optim.weight_decay",
        "grokking_delay",
        -1,
    ),
    Claim(
        "grokking_weight_norm_falls",
        "the weight norm falls as test accuracy rises (tau < 0 along training)",
        "Liu et al. 2022; Nanda et al. 2023",
        None,
        "norm_test_tau",
        -1,
    ),
    Claim(
        "lr_diverges",
        "too high a learning rate diverges (NaN within the first epoch): a row, not a crash",
        "Yang et al. 2021",
        "optim.lr",
        "diverged_first_epoch",
        +1,
    ),
)
CLAIM_NAMES = tuple(c.name for c in CLAIMS)


@dataclass(frozen=True)
class Rule:
    """Thresholds of the verdict (see the module docstring)."""

    min_trend: float = 0.5  # mean Kendall tau, signed by the claim's direction
    min_z: float = 2.0  # effect between the knob's ends in standard errors


@dataclass(frozen=True)
class Verdict:
    """One claim tested on one sweep."""

    claim: str
    sweep: str
    knob: str  # "" for a one-sample claim
    measure: str
    direction: int
    groups: int
    samples: int
    trend: float
    z: float
    low: float  # mean of the measure at the knob's smallest value, over groups
    high: float  # ... and at its largest
    verdict: str
    statement: str
    reference: str
    note: str = ""  # what was left out and why (fitted_only claims)


def _samples(results: Results, claim: Claim) -> pd.DataFrame | None:
    """``(knob, value, <other knobs>)`` rows, one per seed (or seed pair), or None if untestable."""
    runs = results.runs
    if claim.knob not in runs or runs[claim.knob].nunique(dropna=True) < 2:
        return None
    others = [a for a in results.axes if a not in ("seed", claim.knob) and a in runs]
    if claim.measure in GROKKING:
        ok = results.ok_runs
        value = _grokking_measure(results, claim.measure)
        if value is None or "variant_id" not in ok:
            return None
        frame = ok[[claim.knob, *others]].assign(value=ok["variant_id"].map(value).to_numpy())
    elif claim.measure in DERIVED:
        value = _diverged(results, first_epoch=claim.measure == "diverged_first_epoch")
        if value is None:
            return None
        frame = runs[[claim.knob, *others]].assign(value=value)
    elif claim.measure in runs:
        ok = results.ok_runs
        frame = ok[[claim.knob, *others]].assign(value=pd.to_numeric(ok[claim.measure]))
    elif results.pairs is not None and claim.measure in results.pairs and "group_id" in runs:
        knobs = runs.drop_duplicates("group_id")[["group_id", claim.knob, *others]]
        frame = results.pairs[["group_id", claim.measure]].merge(knobs, on="group_id")
        frame = frame.rename(columns={claim.measure: "value"}).drop(columns="group_id")
    else:
        return None
    frame = frame.assign(value=frame["value"].astype(float).replace([np.inf, -np.inf], np.nan))
    frame = frame.dropna(subset=["value"])
    frame.attrs["others"] = others
    return frame if frame[claim.knob].nunique() >= 2 else None


def _grokking_measure(results: Results, measure: str) -> pd.Series | None:
    """``measure`` (one of :data:`GROKKING`) by variant_id, or None when the curves (and for
    ``norm_test_tau`` the trajectory's ``param_norm``) are missing (rule step 7)."""
    from analysis.correlations import kendall_tau
    from analysis.grokking import grokking_phases

    curves = results.curves
    if curves is None or not {"variant_id", "train_acc", "test_acc"} <= set(curves.columns):
        return None
    if measure in ("generalised", "grokking_delay"):
        phases = grokking_phases(curves).set_index("variant_id")
        if measure == "grokking_delay":
            return phases["delay"]
        told = {"comprehension": 1.0, "grokking": 1.0, "memorisation": 0.0}
        return phases["grokking_phase"].map(told).astype(float)
    traj = results.trajectory
    if traj is None or "param_norm" not in traj or "step" not in traj or "step" not in curves:
        return None
    both = traj[["variant_id", "step", "param_norm"]].merge(
        curves[["variant_id", "step", "test_acc"]], on=["variant_id", "step"]
    )
    both = both.dropna()
    taus = {}
    for vid, g in both.groupby("variant_id"):
        if len(g) >= 3:
            taus[vid] = kendall_tau(g["param_norm"].to_numpy(float), g["test_acc"].to_numpy(float))
    return pd.Series(taus, dtype=float)


def _one_sample(results: Results, claim: Claim, rule: Rule) -> Verdict | None:
    """A claim without a knob: the sign of the measure's mean over ok runs (rule step 7)."""
    value = _grokking_measure(results, claim.measure)
    if value is None or "variant_id" not in results.ok_runs:
        return None
    x = results.ok_runs["variant_id"].map(value).astype(float).dropna().to_numpy()
    if not len(x):
        return None
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    z = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean and se == 0 else math.nan)
    note = f"mean over {len(x)} runs" + ("" if len(x) > 1 else "; one run: no standard error")
    verdict, note = _decide(claim.direction * mean, claim.direction * z, rule, note)
    return _verdict(results, claim, len(x), verdict, note, 1, mean, z, [mean], [mean])


def _diverged(results: Results, first_epoch: bool) -> pd.Series | None:
    """1.0 for a run with status ``diverged`` (and, with ``first_epoch``, whose
    ``diverged_step`` is at most the step that ends its first epoch in ``curves``), else 0.0.
    None when ``first_epoch`` needs a first epoch that the curves table does not give."""
    runs = results.runs
    if "status" not in runs:
        return pd.Series(0.0, index=runs.index)
    diverged = runs["status"].eq("diverged")
    if not first_epoch:
        return diverged.astype(float)
    curves = results.curves
    if curves is None or not {"variant_id", "epoch", "step"} <= set(curves.columns):
        return None
    first = curves[curves["epoch"] == 1].drop_duplicates("variant_id")
    end = runs["variant_id"].map(first.set_index("variant_id")["step"])
    if end[diverged].isna().any():
        return None
    step = pd.to_numeric(runs.get("diverged_step"), errors="coerce")
    return (diverged & (step <= end)).astype(float)


def _fitted_only(results: Results, claim: Claim, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """``frame`` restricted to the cells whose mean training loss is small (rule step 5),
    and a note on what was left out."""
    from analysis.cells import aggregate_runs
    from analysis.phases import small_loss_threshold

    others = frame.attrs["others"]
    keys = [claim.knob, *others]
    if "train_loss" not in results.runs:
        return frame, "training loss not measured: every model compared"
    cells = aggregate_runs(results.runs, keys)
    cells = cells[cells["n_ok"] > 0] if "n_ok" in cells else cells
    line, source = small_loss_threshold(cells, None, results.num_classes())
    if line is None:
        return frame, f"fitted models not told apart ({source}): every model compared"
    fitted = pd.to_numeric(cells["train_loss"], errors="coerce") <= line
    if fitted.all():
        return frame, ""
    kept = frame.merge(cells.loc[fitted, keys], on=keys, how="inner")
    kept.attrs["others"] = others
    out = int((~fitted).sum())
    note = (
        f"{out} of {len(cells)} cells not fitted (mean train_loss > {line:.3g}; {source}): left out"
    )
    return kept, note


def _knob_order(values: pd.Series) -> np.ndarray:
    """Numbers for a knob's values (booleans as 0/1), so Kendall's tau can rank them."""
    return values.astype(float).to_numpy()


def evaluate(results: Results, claim: Claim, rule: Rule | None = None) -> Verdict | None:
    """The verdict of ``claim`` on ``results``, or None when the sweep does not test it."""
    from analysis.correlations import kendall_tau  # (matplotlib: only when a claim is evaluated)

    rule = rule or Rule()
    if claim.knob is None:
        return _one_sample(results, claim, rule)
    frame = _samples(results, claim)
    if frame is None:
        return None
    note = ""
    if claim.fitted_only:
        frame, note = _fitted_only(results, claim, frame)
    others = frame.attrs["others"]
    groups = frame.groupby(others, dropna=False) if others else [(None, frame)]
    trends, ends, lows, highs = [], [], [], []
    cells = []  # (sum of squared deviations, degrees of freedom) of every (group, knob value)
    for _, group in groups:
        stats = group.groupby(claim.knob)["value"].agg(["mean", "var", "count"]).reset_index()
        cells += [(v * (n - 1), n - 1) for v, n in zip(stats["var"], stats["count"]) if n > 1]
        if len(stats) < 2:
            continue
        order = _knob_order(stats[claim.knob])
        stats = stats.iloc[np.argsort(order, kind="stable")]
        tau = kendall_tau(np.sort(order), stats["mean"])
        # A flat measure (every mean equal) is no trend at all, not an undefined one.
        trends.append(0.0 if np.isnan(tau) and stats["mean"].nunique() == 1 else tau)
        lo, hi = stats.iloc[0], stats.iloc[-1]
        ends.append((hi["mean"] - lo["mean"], 1 / hi["count"] + 1 / lo["count"]))
        lows.append(lo["mean"])
        highs.append(hi["mean"])
    if not ends:
        if not note:
            return None
        why = f"{note}; no group keeps two fitted values of {claim.knob}"
        return _verdict(results, claim, len(frame), "inconclusive", why)
    trend = float(np.nanmean(trends)) if np.isfinite(trends).any() else float("nan")
    total = float(sum(d for d, _ in ends))
    dof = sum(f for _, f in cells)
    if dof == 0:  # one sample per cell everywhere: no seed spread to measure the effect by
        z = float("nan")
    else:
        pooled = sum(ss for ss, _ in cells) / dof
        se = math.sqrt(pooled * sum(w for _, w in ends))
        z = total / se if se > 0 else (math.copysign(math.inf, total) if total else 0.0)
    verdict, note = _decide(claim.direction * trend, claim.direction * z, rule, note)
    return _verdict(results, claim, len(frame), verdict, note, len(ends), trend, z, lows, highs)


def _decide(signed_trend: float, signed_z: float, rule: Rule, note: str) -> tuple[str, str]:
    """The verdict from a trend and its z, both signed so that the claim's direction is
    positive; an inconclusive verdict's note gains its reason."""
    if signed_trend >= rule.min_trend and signed_z >= rule.min_z:
        return "reproduced", note
    if signed_trend <= -rule.min_trend and signed_z <= -rule.min_z:
        return "contradicted", note
    why = _why_inconclusive(signed_trend, signed_z, rule)
    return "inconclusive", "; ".join(x for x in (note, why) if x)


def _why_inconclusive(trend: float, z: float, rule: Rule) -> str:
    """Why a trend ``trend`` and an effect of ``z`` standard errors (both signed so that the
    claim's direction is positive) neither reproduce nor contradict the claim."""
    if math.isnan(z):
        return "one sample (run or pair of seeds) per setting: no seed spread to tell the effect from noise"
    if math.isnan(trend):
        return "no trend could be measured (every group's measure is undefined)"
    if trend * z < 0:
        return f"the trend ({trend:+.2g}) and the effect between the ends ({z:+.2g} SE) disagree"
    if abs(trend) < rule.min_trend:
        return f"trend {trend:+.2g} is weaker than the rule's {rule.min_trend:g}"
    return f"the effect ({z:+.2g} SE) is within {rule.min_z:g} seed standard errors of 0"


def _verdict(
    results: Results,
    claim: Claim,
    samples: int,
    verdict: str,
    note: str,
    groups: int = 0,
    trend: float = math.nan,
    z: float = math.nan,
    lows: Sequence[float] = (),
    highs: Sequence[float] = (),
) -> Verdict:
    return Verdict(
        claim=claim.name,
        sweep=results.name,
        knob=claim.knob or "",
        measure=claim.measure,
        direction=claim.direction,
        groups=groups,
        samples=samples,
        trend=trend,
        z=z,
        low=float(np.mean(lows)) if len(lows) else math.nan,
        high=float(np.mean(highs)) if len(highs) else math.nan,
        verdict=verdict,
        statement=claim.statement,
        reference=claim.reference,
        note=note,
    )


def declared(results: Results) -> tuple[str, ...] | None:
    """The claims a sweep's preset says it tests (``sweep.analysis.claims``), or None."""
    names = (results.manifest.get("analysis") or {}).get("claims")
    return tuple(names) if names else None


def check_declared(results: Results) -> None:
    """Raise ResultsError (one line) when a sweep's preset names a claim that does not exist:
    a misspelt name would test nothing."""
    unknown = [n for n in declared(results) or () if n not in CLAIM_NAMES]
    if unknown:
        raise ResultsError(
            f"{results.path}: sweep.analysis.claims names unknown claim {unknown[0]!r}; "
            f"allowed: {', '.join(CLAIM_NAMES)}"
        )


def evaluate_all(
    results: Sequence[Results], claims: Sequence[Claim] = CLAIMS, rule: Rule | None = None
) -> pd.DataFrame:
    """Every claim that some sweep tests, on every sweep that tests it: one row per verdict.

    A sweep whose manifest names its claims (``sweep.analysis.claims`` in its preset) is
    tested on those only: a learning-rate sweep built for stiffness says nothing about
    divergence if none of its rates was meant to diverge.
    """
    chosen = [(r, declared(r)) for r in results]
    rows = [
        asdict(v)
        for claim in claims
        for r, names in chosen
        if (names is None or claim.name in names) and (v := evaluate(r, claim, rule)) is not None
    ]
    columns = list(Verdict.__dataclass_fields__)
    return pd.DataFrame(rows, columns=columns)


def untested(table: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> list[Claim]:
    """The claims no sweep in ``table`` tests."""
    tested = set(table["claim"]) if len(table) else set()
    return [c for c in claims if c.name not in tested]


def _number(x: float) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def markdown(table: pd.DataFrame) -> str:
    """The verdicts as a Markdown table (what the README shows)."""
    lines = [
        "| claim | sweep | knob | measure | expected | low -> high | trend (tau) | z | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        expected = "rises" if row.direction > 0 else "falls"
        lines.append(
            f"| {row.statement} ({row.reference}) | {row.sweep} | `{row.knob}` | "
            f"`{row.measure}` | {expected} | {_number(row.low)} -> {_number(row.high)} | "
            f"{_number(row.trend)} | {_number(row.z)} | **{row.verdict}**"
            + (f" ({row.note})" if row.note else "")
            + " |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="landscape-claims",
        description="Test a sweep's results against the literature's qualitative results.",
    )
    p.add_argument("dirs", nargs="+", type=Path, help="results directories (results/<sweep>)")
    p.add_argument("--json", type=Path, default=None, help="also write the verdicts as JSON here")
    p.add_argument("--min-trend", type=float, default=Rule.min_trend, help="see the rule")
    p.add_argument("--min-z", type=float, default=Rule.min_z, help="see the rule")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not 0 < args.min_trend <= 1:
            raise ResultsError(f"--min-trend={args.min_trend}: allowed is a number in (0, 1]")
        if not (math.isfinite(args.min_z) and args.min_z > 0):
            raise ResultsError(f"--min-z={args.min_z}: allowed is a finite number > 0")
        if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
            raise ResultsError(
                f"--json={args.json}: allowed is a file path in an existing directory"
            )
        results = [load_results(d) for d in args.dirs]
        for r in results:
            check_declared(r)
    except ResultsError as err:
        print(f"landscape-claims: {err}", file=sys.stderr)
        return 2
    table = evaluate_all(results, rule=Rule(args.min_trend, args.min_z))
    print(markdown(table) if len(table) else "no sweep given tests any claim")
    missing = untested(table)
    if missing:
        print("\nnot tested by these sweeps: " + ", ".join(c.name for c in missing))
    if args.json is not None:
        rows = [
            {k: _number(v) if isinstance(v, float) and math.isinf(v) else v for k, v in r.items()}
            for r in table.to_dict(orient="records")
        ]
        args.json.write_text(json.dumps({"verdicts": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
