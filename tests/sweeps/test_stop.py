"""Stopping a sweep: Ctrl-C and SIGTERM at each point, SIGKILL, and a full disk.

Each slow test runs ``landscape-sweep`` as a user would (a subprocess) and sends it real
signals with ``os.kill``: the driver stops within seconds with one line saying what finished
and how to resume, and leaves nothing half-written that the next run would count."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sweeps import signals
from sweeps.store import Store
from tests.conftest import tmpfs
from tests.sweeps.conftest import TINY, wait_for

REPO = Path(__file__).resolve().parents[2]
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def test_a_signal_inside_a_write_takes_effect_when_the_write_is_done():
    before = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    signals.stop_on_signals()
    try:
        written = []
        with pytest.raises(signals.Stopped) as info, signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now: it only took note
            written.append("the rest of the pack")
        assert written == ["the rest of the pack"]
        assert info.value.name == "SIGTERM" and info.value.exit_status == 143
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        signals._received.clear()


def _driver(tmp_path, *args: str, out: Path | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweeps.cli",
            *TINY,
            "ray.inline=false",  # the driver of an embedded Ray instance, however small
            f"out_dir={out or tmp_path / 'results'}",
            "--quiet",
            "--no-report",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _handlers_installed(pid: int) -> bool:
    """Our SIGTERM handler is in place (Python catches SIGINT from the start, SIGTERM not)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt")).split()[1], 16
    )
    return bool(caught & SIGTERM_BIT)


def _stop(proc: subprocess.Popen, sig: int, within: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - t0


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_sigterm_while_planning_stops_at_once_and_writes_nothing(tmp_path):
    # 64,000 variants: planning takes seconds
    proc = _driver(tmp_path, "model.width=range(1,801)", "seed=range(80)")
    wait_for(lambda: _handlers_installed(proc.pid), 60, "the driver's signal handlers")
    rc, err, took = _stop(proc, signal.SIGTERM, 10)
    assert rc == 143 and took < 10
    assert "stopped by SIGTERM before anything was written" in _one_line(err)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_sigint_while_joining_a_cluster_that_never_answers(tmp_path):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    try:
        proc = _driver(tmp_path, f"ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=120")
        wait_for(lambda: "joining" in proc.stdout.readline(), 60, "the driver to start joining")
        time.sleep(1)
        rc, err, took = _stop(proc, signal.SIGINT, 10)
    finally:
        silent.close()
    assert rc == 130 and took < 10, err
    assert "stopped by SIGINT before anything was written" in _one_line(err)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_dispatching_stops_within_seconds_and_resume_counts_right(tmp_path, sig):
    proc = _driver(tmp_path, "train.epochs=3")
    runs = tmp_path / "results" / "demo" / "runs"
    wait_for(lambda: runs.is_dir() and any(runs.glob("part-*.parquet")), 180, "a first pack")
    rc, err, took = _stop(proc, sig, 10)
    name = signal.Signals(sig).name
    assert rc == 128 + sig and took < 10, err
    line = _one_line(err)
    assert f"stopped by {name}: " in line and "of 8 variants ran (" in line and "are saved" in line
    assert "again to resume" in line and "--quiet --no-report" in line
    store = Store(tmp_path / "results" / "demo")
    assert not list(store.root.rglob("*.tmp"))  # no half-written file
    assert store.recover().lines() == []  # nothing for the next run to clean up or count twice


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_takes_its_embedded_ray_with_it(tmp_path):
    proc = _driver(tmp_path, "train.epochs=3")
    runs = tmp_path / "results" / "demo" / "runs"
    wait_for(lambda: runs.is_dir() and any(runs.glob("part-*.parquet")), 180, "a first pack")
    driver = psutil.Process(proc.pid)
    below = [
        p for p in driver.children(recursive=True) if "sweeps.reaper" not in " ".join(p.cmdline())
    ]
    names = {p.name() for p in below}
    assert any("raylet" in n for n in names), names
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)

    def gone() -> bool:
        return not [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, 20, f"the embedded instance's processes to end ({sorted(names)})")


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass
    return filler


# One worker, one pack in flight, 60 epochs: the four packs' parts land 1.3-2.4 s apart (2
# cores), and filling the 4 MB disk takes milliseconds, so it is full before the second pack
# is written. (Two workers with 3 epochs wrote every pack within ~0.1 s of the first, and the
# sweep could finish before the disk filled.)
SEQUENTIAL = ("train.epochs=60", "ray.num_workers=1", "ray.max_in_flight=1")


@pytest.mark.slow
def test_a_full_disk_ends_the_sweep_with_one_line_and_resume_finishes_it(tmp_path, small_disk):
    proc = _driver(tmp_path, *SEQUENTIAL, out=small_disk)
    try:
        runs = small_disk / "demo" / "runs"
        wait_for(lambda: runs.is_dir() and any(runs.glob("part-*.parquet")), 180, "a first pack")
        filler = _fill(small_disk)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, err
    line = _one_line(err)
    assert "no space left on the device" in line and "again to resume" in line
    filler.unlink()
    again = _driver(tmp_path, *SEQUENTIAL, out=small_disk)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "0 to run" not in out and "already finished" in out
    store = Store(small_disk / "demo")
    assert len(store.recorded()) == 8


@pytest.mark.slow
def test_a_full_disk_in_a_workers_checkpoint_write_stops_the_sweep_and_resume_finishes(
    tmp_path,
):
    """The checkpoints' own disk (a 4 KB tmpfs at <results>/checkpoints) fills while a worker
    writes: the sweep stops with the same one line as a full results disk, records no pack as
    failed and trains nothing again; with room, the same command finishes."""
    checkpoints = tmp_path / "results" / "demo" / "checkpoints"
    with tmpfs(checkpoints, "4k"):
        proc = _driver(tmp_path, "checkpoints=true", *SEQUENTIAL)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = _one_line(err)
    assert "no space left on the device" in line and "again to resume" in line
    store = Store(tmp_path / "results" / "demo")
    assert "failed" not in {r.get("status") for r in store.recorded().values()}
    again = _driver(tmp_path, "checkpoints=true", *SEQUENTIAL)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(store.recorded()) == 8 and len(list(checkpoints.glob("*.pt"))) == 8
