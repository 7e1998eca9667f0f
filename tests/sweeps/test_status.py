"""``landscape-sweep status`` and ``landscape-sweep compact`` on a results directory."""

from datetime import datetime, timedelta, timezone

import pandas as pd

from analysis.load import read_table
from landscape.run import metrics_id
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
