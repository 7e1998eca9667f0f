"""One driver per results directory: a second one is refused while the first lives, and admitted
as soon as the first is gone, however it died."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from landscape.variant import ConfigError
from sweeps.lock import ResultsLock
from sweeps.runner import run_sweep
from sweeps.status import sweep_status
from tests.sweeps.conftest import TINY, command, tiny_plan

# A stand-in first driver: a real process that takes the lock the way run_sweep does and waits.
HOLD = textwrap.dedent("""
    import sys, time
    from sweeps.lock import ResultsLock
    ResultsLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(300)
""")


def test_a_second_driver_is_refused_until_the_first_is_killed(tmp_path, monkeypatch, capsys):
    plan = tiny_plan(tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(plan.results_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "locked"
        refusal = rf"is in use by another landscape-sweep \(pid {first.pid} on .*\); wait for it"
        with pytest.raises(ConfigError, match=refusal):
            run_sweep(plan, progress=False, log=lambda line: None)
        assert f"pid {first.pid}" in sweep_status(plan.results_dir).running

        monkeypatch.chdir(tmp_path)
        assert command([*TINY, "out_dir=results", "--quiet"]) == 2
        stderr = capsys.readouterr().err
        lines = stderr.strip().splitlines()
        assert (
            len(lines) == 1 and f"in use by another landscape-sweep (pid {first.pid}" in lines[0]
        ), stderr
        written = sorted(p.name for p in plan.results_dir.iterdir())
        assert written == [".lock"]  # nothing else
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # the kernel dropped the dead driver's lock: no stale lock to clean up by hand
    assert not ResultsLock(plan.results_dir).is_held()
    assert sweep_status(plan.results_dir).running is None
    with ResultsLock(plan.results_dir):
        assert ResultsLock(plan.results_dir).is_held()


def test_lock_is_released_on_exit_and_records_its_holder(tmp_path):
    lock = ResultsLock(tmp_path / "r")
    with lock:
        info = lock.holder()
        assert info["pid"] == os.getpid() and info["host"] and info["started"]
    assert not lock.is_held()
