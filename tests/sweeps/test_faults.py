"""Faults on real Ray, with real processes killed by real signals. Every test ends by checking
the exact set of variant ids in the store: none missing, none twice."""

import dataclasses
import os
import signal
import threading

import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

from sweeps.runner import run_sweep
from sweeps.store import Store
from tests.sweeps import fault_workers
from tests.sweeps.conftest import assert_exactly_once, tiny_plan, wait_for
from tests.sweeps.fault_workers import FaultyWorker

# Ray workers get the class by value: they need not import the tests package.
ray.cloudpickle.register_pickle_by_value(fault_workers)


def _in_thread(fn):
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _held(signals, out):
    """The pid file of a worker holding its pack; the sweep's own error if it stopped first."""
    if "error" in out:
        raise out["error"]
    return next(signals.glob("hold-*"), None)


@pytest.mark.slow
def test_worker_killed_mid_pack_reruns_the_pack(local_ray, tmp_path):
    plan = tiny_plan(tmp_path)
    signals = tmp_path / "signals"
    signals.mkdir()
    logs: list[str] = []
    thread, out = _in_thread(
        lambda: run_sweep(
            plan,
            progress=False,
            log=logs.append,
            worker_cls=FaultyWorker,
            worker_kwargs={"signal_dir": str(signals), "hold_width": 6},
        )
    )
    hold = wait_for(lambda: _held(signals, out), 120, "a worker to start the held pack")
    pid = int(hold.name.split("-")[1])
    (signals / "killed").touch()
    os.kill(pid, signal.SIGKILL)
    thread.join(300)
    assert "error" not in out, out.get("error")
    summary = out["result"]
    runs = assert_exactly_once(plan)
    assert set(runs.status) == {"ok"}
    assert summary.worker_deaths == 1 and summary.ran == 8
    assert any(f"pid {pid}" in line and "died" in line for line in logs), logs
    assert any("it runs again" in line for line in logs), logs


@pytest.mark.slow
def test_pack_that_kills_its_worker_every_time_is_recorded_failed_and_retried_later(
    local_ray, tmp_path
):
    plan = tiny_plan(tmp_path)
    # one worker, two packs deep: the packs queued behind the poisoned one must not pay for it
    plan.ray = dataclasses.replace(plan.ray, max_pack_attempts=2, num_workers=1)
    signals = tmp_path / "signals"
    signals.mkdir()
    summary = run_sweep(
        plan,
        progress=False,
        log=lambda line: None,
        worker_cls=FaultyWorker,
        worker_kwargs={"signal_dir": str(signals), "poison_width": 5},
    )
    assert len(list(signals.glob("poisoned-*"))) == 2  # two attempts, two different processes
    runs = assert_exactly_once(plan).set_index("variant_id")
    failed = runs[runs.status == "failed"]
    assert set(failed["model.width"]) == {5} and len(failed) == 2
    assert failed.error.str.startswith("worker died 2 times running this pack: ").all()
    assert set(runs[runs["model.width"] != 5].status) == {"ok"}  # the sweep went on
    assert summary.counts == {"ok": 6, "failed": 2}

    # the same command skips everything; --retry-failed runs the failed ones again, and their
    # old rows are replaced, not duplicated
    assert run_sweep(plan, progress=False, log=lambda line: None).ran == 0
    again = run_sweep(plan, progress=False, retry_failed=True, log=lambda line: None)
    assert again.ran == 2 and again.counts == {"ok": 2}
    runs = assert_exactly_once(plan)
    assert set(runs.status) == {"ok"} and runs.error.isna().all()


@pytest.mark.slow
def test_corrupt_and_truncated_parts_are_quarantined_and_their_variants_run_again(
    local_ray, tmp_path
):
    plan = tiny_plan(tmp_path)
    run_sweep(plan, progress=False, log=lambda line: None)
    store = Store(plan.results_dir)
    commits = store.commits()
    assert len(commits) == 4
    doomed = {
        f"{t}/part-{c}.parquet"
        for t in store.tables()
        for c in commits[:2]
        if (store.table_dir(t) / f"part-{c}.parquet").exists()
    }
    assert {d.split("/")[0] for d in doomed} >= {"runs", "curves"}
    truncated = store.table_dir("runs") / f"part-{commits[0]}.parquet"
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbled = store.table_dir("curves") / f"part-{commits[1]}.parquet"
    data = bytearray(garbled.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")  # the file ends: metadata, its length, "PAR1"
    data[-8 - footer : -8] = b"\xff" * footer  # the metadata garbled, the file's size unchanged
    garbled.write_bytes(bytes(data))
    lost = {
        commits[1]: pq.read_table(store.table_dir("runs") / f"part-{commits[1]}.parquet").num_rows
    }

    logs: list[str] = []
    summary = run_sweep(plan, progress=False, log=logs.append)
    quarantined = [line for line in logs if line.startswith("quarantined commit")]
    assert len(quarantined) == 2, logs
    assert any("runs part unreadable" in line for line in quarantined)
    assert any(f"{lost[commits[1]]} variants run again" in line for line in quarantined)
    assert summary.ran == 4  # two packs of two
    assert_exactly_once(plan)
    moved = {p.relative_to(store.root / "quarantine").as_posix() for p in store.quarantined()}
    assert moved == doomed  # every table's part of both commits, moved aside, not deleted


@pytest.mark.slow
def test_remeasure_replaces_rows_of_variants_measured_with_other_metrics(local_ray, tmp_path):
    from landscape.run import metrics_id
    from landscape.variant import ConfigError

    plan = tiny_plan(tmp_path)
    run_sweep(plan, progress=False, log=lambda line: None)
    more = tiny_plan(tmp_path, "metrics.hessian_trace.n_probes=3")
    with pytest.raises(
        ConfigError, match=r"8 variants in .* were measured with metrics_id .*--remeasure"
    ):
        run_sweep(more, progress=False, log=lambda line: None)
    summary = run_sweep(more, progress=False, remeasure=True, log=lambda line: None)
    assert summary.ran == 8
    runs = assert_exactly_once(more)
    assert set(runs.metrics_id) == {metrics_id(more.metrics)} != {metrics_id(plan.metrics)}
