"""``landscape-sweep status`` and ``landscape-sweep compact`` on a results directory."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from analysis.load import read_table
from landscape.run import metrics_id
from landscape.variant import ConfigError
from sweeps.cli import main
from sweeps.lock import ResultsLock
from sweeps.manifest import build_manifest
from sweeps.status import sweep_status
from sweeps.store import Store
from tests.sweeps.conftest import tiny_plan


def _half_done(tmp_path):
    """8 planned variants: 4 recorded over the last minute (3 ok, 1 failed), 4 to go."""
    plan = tiny_plan(tmp_path)
    store = Store(plan.results_dir)
    ids = [v.variant_id for v in plan.variants]
    manifest = build_manifest(plan, None, ids, [])
    start = datetime.now(timezone.utc) - timedelta(seconds=60)
    manifest["updated"] = start.isoformat()
    store.write_manifest(manifest)
    mid = metrics_id(plan.metrics)
    for k, vid in enumerate(ids[:4]):
        failed = k == 3
        row = {
            "variant_id": vid,
            "status": "failed" if failed else "ok",
            "metrics_id": mid,
            "error": "RuntimeError: boom" if failed else None,
            "finished_at": start + timedelta(seconds=15 * (k + 1)),
        }
        store.write_pack(
            {"runs": [row], "curves": [{"variant_id": vid, "epoch": 0, "train_loss": 1.0}]}
        )
    return plan


def test_status_counts_failures_throughput_and_eta(tmp_path, capsys):
    plan = _half_done(tmp_path)
    s = sweep_status(plan.results_dir)
    assert s.counts == {"ok": 3, "failed": 1} and s.remaining == 4 and s.planned == 8
    assert s.errors == {"RuntimeError: boom": 1}
    assert abs(s.rate_per_min - 4.0) < 1e-6  # 4 variants in the 60 s since the command started
    assert s.running is None
    with ResultsLock(plan.results_dir):
        assert main(["status", str(plan.results_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 variants recorded (1 failed, 3 ok)" in out
    assert "latest command planned 8 variants; 4 of them still to run" in out
    assert "     1  RuntimeError: boom" in out
    assert "throughput: 4.0 variants/min" in out
    assert f"running: pid {__import__('os').getpid()} on " in out and "ETA 60 s" in out
    assert "parts: runs 4, curves 4" in out


def test_compact_merges_parts_with_identical_rows(tmp_path, capsys):
    plan = _half_done(tmp_path)
    runs_before = (
        read_table(plan.results_dir / "runs").sort_values("variant_id").reset_index(drop=True)
    )
    curves_before = (
        read_table(plan.results_dir / "curves").sort_values("variant_id").reset_index(drop=True)
    )
    assert main(["compact", str(plan.results_dir)]) == 0
    assert (
        "compacted 4 pack commits into 1 (runs 4 -> 1, curves 4 -> 1 parts)"
        in capsys.readouterr().out
    )
    runs_after = (
        read_table(plan.results_dir / "runs").sort_values("variant_id").reset_index(drop=True)
    )
    curves_after = (
        read_table(plan.results_dir / "curves").sort_values("variant_id").reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(runs_before, runs_after)
    pd.testing.assert_frame_equal(curves_before, curves_after)
    assert sweep_status(plan.results_dir).counts == {
        "ok": 3,
        "failed": 1,
    }  # throughput stamps kept too


def test_compact_is_refused_while_a_sweep_holds_the_directory(tmp_path, capsys):
    plan = _half_done(tmp_path)
    with ResultsLock(plan.results_dir):
        assert main(["compact", str(plan.results_dir)]) == 2
    assert "is in use by another landscape-sweep" in capsys.readouterr().err
    assert len(Store(plan.results_dir).parts("runs")) == 4


def test_status_of_a_directory_that_is_no_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a sweep's results directory" in err[0]


def test_a_bad_argument_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["compact", str(tmp_path), "--max-rows", "many"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "landscape-sweep: error: compact: argument --max-rows"
    )
    assert list(tmp_path.iterdir()) == []


def test_status_says_how_to_retry_failed_variants(tmp_path, capsys):
    plan = _half_done(tmp_path)
    assert main(["status", str(plan.results_dir)]) == 0
    out = capsys.readouterr().out
    assert "failed: 1: run the sweep's command again with --retry-failed to retry them" in out


def test_status_counts_the_variants_of_an_unreadable_part_as_still_to_run(tmp_path, capsys):
    """The next run quarantines a commit with a damaged part and runs its variants again."""
    plan = _half_done(tmp_path)
    store = Store(plan.results_dir)
    curves = store.parts("curves")[0]
    curves.write_bytes(curves.read_bytes()[:40])  # truncated
    s = sweep_status(plan.results_dir)
    assert s.remaining == 5 and sum(s.counts.values()) == 3
    assert main(["status", str(plan.results_dir)]) == 0
    out = capsys.readouterr().out
    assert "5 of them still to run" in out
    assert f"unreadable: 1 pack commits (curves/{curves.name})" in out


def test_a_truncated_manifest_is_one_line_for_status_and_for_the_sweep(tmp_path, capsys):
    from sweeps.runner import run_sweep

    plan = _half_done(tmp_path)
    manifest = plan.results_dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    assert main(["status", str(plan.results_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "manifest.json is damaged (truncated or not JSON" in err and "move it aside" in err
    with pytest.raises(ConfigError, match="manifest.json is damaged"):
        run_sweep(plan, progress=False, log=lambda line: None)


def test_the_end_of_sweep_summary_counts_failures_and_names_the_best_and_worst_cells(tmp_path):
    from sweeps.runner import SweepSummary
    from sweeps.status import end_of_sweep

    plan = tiny_plan(tmp_path)  # model.width 4..7 x seed 0, 1
    store = Store(plan.results_dir)
    for v in plan.variants:
        failed = v.model.width == 7 and v.seed == 1
        row = {
            "variant_id": v.variant_id,
            "model.width": v.model.width,
            "seed": v.seed,
            "status": "failed" if failed else "ok",
            "error": "RuntimeError: Found no NVIDIA driver" if failed else None,
            "test_acc": None if failed else 0.5 + 0.1 * (v.model.width - 4) + 0.01 * v.seed,
        }
        store.write_pack({"runs": [row]})
    summary = SweepSummary(total=8, skipped=0, ran=8, counts={"ok": 7, "failed": 1}, to_run=8)
    lines = end_of_sweep(plan, summary, "landscape-sweep model.width=4,5,6,7")
    text = "\n".join(lines)
    assert "ran 8 variants (1 failed, 7 ok)" in lines[0]
    assert "1 variants failed, by error:\n       1  RuntimeError: Found no NVIDIA driver" in text
    assert "retry them: landscape-sweep model.width=4,5,6,7 --retry-failed" in text
    assert "best cell:  model.width=7: test_acc 0.800 (mean of 1)" in text
    assert "worst cell: model.width=4: test_acc 0.505 (mean of 2)" in text
    assert lines[-1].startswith(f"results: {plan.results_dir}/")


def test_a_rerun_over_failed_rows_says_how_to_retry_them(tmp_path):
    """Nothing to run (every variant recorded, one failed): no Ray, one line with the hint."""
    from sweeps.runner import run_sweep

    plan = tiny_plan(tmp_path)
    store = Store(plan.results_dir)
    mid = metrics_id(plan.metrics)
    for k, v in enumerate(plan.variants):
        status = "failed" if k == 0 else "ok"
        store.write_pack(
            {"runs": [{"variant_id": v.variant_id, "status": status, "metrics_id": mid}]}
        )
    logs: list[str] = []
    run_sweep(plan, progress=False, log=logs.append)
    assert (
        "sweep demo: 8 variants, 8 already finished (skipped), 0 to run; "
        "1 of them failed: --retry-failed runs them again"
    ) in logs
