"""``landscape-sweep status <dir>``: where a sweep stands, read from its directory alone.

Counts by status, failures grouped by error, throughput and ETA (from the manifest's planned
variants and the ``finished_at`` stamps of the runs rows since the latest command started),
the parts per table, anything quarantined or half-done, and who holds the lock. Reads only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sweeps.lock import ResultsLock, describe_holder
from sweeps.store import Store

RETRY_HINT = "run the sweep's command again with --retry-failed to retry them"


@dataclass
class SweepStatus:
    root: Path
    planned: int | None  # variants of the latest command's plan
    remaining: int | None  # of those, not recorded yet
    counts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    duplicates: int = 0
    rate_per_min: float | None = None
    session_start: datetime | None = None
    parts: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    unreadable: list[str] = field(default_factory=list)  # commits the next run quarantines
    journals: int = 0
    running: str | None = None  # who holds the lock, when someone does

    @property
    def eta_s(self) -> float | None:
        if not self.remaining or not self.rate_per_min:
            return None
        return 60.0 * self.remaining / self.rate_per_min


def _as_utc(t) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def sweep_status(root: Path | str) -> SweepStatus:
    store = Store(root)
    if not store.root.is_dir():
        raise FileNotFoundError(f"results directory {str(root)!r} does not exist")
    manifest = store.read_manifest() or {}
    unreadable = store.unreadable_commits()  # the next run moves these aside and reruns them
    rows, _ = store.read_column_values(
        "runs", ["variant_id", "status", "error", "finished_at"], skip_commits=set(unreadable)
    )
    latest = {r["variant_id"]: r for r in rows}
    planned_ids = manifest.get("variant_ids")
    planned = len(planned_ids) if planned_ids is not None else manifest.get("variants")
    if planned_ids is not None:
        remaining = len(set(planned_ids) - set(latest))
    else:
        remaining = max(0, planned - len(latest)) if planned is not None else None
    status = SweepStatus(root=store.root, planned=planned, remaining=remaining)
    status.counts = Counter(r["status"] for r in latest.values())
    status.errors = Counter(r["error"] for r in latest.values() if r["status"] == "failed")
    status.duplicates = len(rows) - len(latest)
    status.session_start = _as_utc(manifest.get("updated"))
    stamps = sorted(t for r in latest.values() if (t := _as_utc(r.get("finished_at"))) is not None)
    if status.session_start is not None:
        recent = [t for t in stamps if t >= status.session_start]
        span = (recent[-1] - status.session_start).total_seconds() if recent else 0.0
        if span > 0:
            status.rate_per_min = 60.0 * len(recent) / span
    status.parts = {t: len(store.parts(t)) for t in store.tables()}
    status.unreadable = [reason.split(":")[0] for _, reason in sorted(unreadable.items())]
    status.quarantined = len(store.quarantined())
    status.journals = len(store.pending_journals())
    lock = ResultsLock(store.root)
    if lock.is_held():
        status.running = describe_holder(lock.holder())
    return status


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(s: SweepStatus, max_errors: int = 10) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items())) or "nothing recorded"
    lines = [f"{s.root}: {sum(s.counts.values())} variants recorded ({counts})"]
    if s.planned is not None:
        lines.append(
            f"latest command planned {s.planned} variants; {s.remaining} of them still to run"
        )
    if s.errors:
        lines.append("failures by error:")
        for error, n in s.errors.most_common(max_errors):
            lines.append(f"  {n:6d}  {error}")
        if len(s.errors) > max_errors:
            lines.append(f"  ... and {len(s.errors) - max_errors} other errors")
        lines.append(f"failed: {s.counts['failed']}: {RETRY_HINT}")
    started = f" (since {s.session_start:%Y-%m-%d %H:%M:%S} UTC)" if s.session_start else ""
    if s.rate_per_min:
        lines.append(f"throughput: {s.rate_per_min:.1f} variants/min{started}")
    else:
        lines.append(f"throughput: no variant finished yet{started}")
    if s.running:
        eta = (
            _duration(s.eta_s)
            if s.eta_s is not None
            else ("done" if s.remaining == 0 else "unknown")
        )
        lines.append(f"running: {s.running}; ETA {eta}")
    else:
        left = f"; {s.remaining} to go: run the same command again to finish" if s.remaining else ""
        lines.append(f"running: no{left}")
    lines.append("parts: " + (", ".join(f"{t} {n}" for t, n in s.parts.items()) or "none"))
    if s.unreadable:
        lines.append(
            f"unreadable: {len(s.unreadable)} pack commits ({', '.join(s.unreadable[:3])}"
            f"{', ...' if len(s.unreadable) > 3 else ''}); their variants count as still to run: "
            "the next run moves them to quarantine/ and runs them again"
        )
    if s.quarantined:
        lines.append(
            f"quarantined: {s.quarantined} unreadable parts moved to quarantine/ (their variants run again)"
        )
    if s.journals:
        lines.append(
            f"interrupted: {s.journals} journaled operations; the next run or compact finishes them"
        )
    if s.duplicates:
        lines.append(
            f"duplicates: {s.duplicates} runs rows repeat a variant (should not happen; please report)"
        )
    return "\n".join(lines)


def end_of_sweep(plan, summary, command: str, max_errors: int = 3) -> list[str]:
    """The lines a finished command prints: counts, failures by error (and how to retry them),
    the best and the worst cell by test accuracy (mean over seeds), where the results are."""
    deaths = f"; {summary.worker_deaths} worker deaths survived" if summary.worker_deaths else ""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing new"
    lines = [
        f"ran {summary.ran} variants ({counts}) in {summary.wall_time_s:.1f} s; "
        f"{summary.skipped} skipped as already finished{deaths}"
    ]
    runs = _plan_runs(plan)
    if runs is not None:
        lines += _failure_lines(runs, command, max_errors) + _cell_lines(runs, plan)
    lines.append(f"results: {plan.results_dir}/  (runs, curves, ... as Parquet; manifest.json)")
    return lines


def _plan_runs(plan):
    """The runs rows of the plan's variants (knobs, status, error, test_acc), or None."""
    import pandas as pd

    ids = {v.variant_id for v in plan.variants}
    knobs = [k for k in plan.axes if k != "seed"]
    store = Store(plan.results_dir)
    rows, _ = store.read_column_values(
        "runs", ["variant_id", "status", "error", "test_acc", *knobs]
    )
    runs = pd.DataFrame(rows)
    if runs.empty:
        return None
    return runs[runs.variant_id.isin(ids)].drop_duplicates("variant_id", keep="last")


def _failure_lines(runs, command: str, max_errors: int) -> list[str]:
    failed = runs[runs.status == "failed"]
    if failed.empty:
        return []
    lines = [f"{len(failed)} variants failed, by error:"]
    errors = failed.error.fillna("(no error text)").value_counts()
    for error, n in errors.head(max_errors).items():
        lines.append(f"  {n:6d}  {str(error)[:160]}")
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} other errors (landscape-sweep status)")
    lines.append(f"retry them: {command} --retry-failed")
    return lines


def _cell_lines(runs, plan) -> list[str]:
    """Best and worst cell (the axes but the seed) by mean test accuracy over its seeds."""
    knobs = [k for k in plan.axes if k != "seed" and k in runs.columns]
    ok = runs[runs.status == "ok"]
    if "test_acc" not in ok.columns or ok.test_acc.isna().all() or not knobs:
        return []
    cells = ok.groupby(knobs, dropna=False).test_acc.agg(["mean", "count"]).dropna()
    if len(cells) < 2:
        return []

    def cell(key) -> str:
        key = key if isinstance(key, tuple) else (key,)
        where = " ".join(f"{k}={v}" for k, v in zip(knobs, key))
        row = cells.loc[key if len(key) > 1 else key[0]]
        return f"{where}: test_acc {row['mean']:.3f} (mean of {int(row['count'])})"

    return [
        f"best cell:  {cell(cells['mean'].idxmax())}",
        f"worst cell: {cell(cells['mean'].idxmin())}",
    ]
