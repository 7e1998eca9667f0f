"""The driver itself killed with SIGKILL mid-sweep: the same command finishes the rest without
retraining what finished, and ``--retry-failed`` replaces failed rows instead of adding to them."""

import contextlib
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from landscape.data import TORCHVISION_SOURCES
from sweeps.store import Store
from tests.sweeps.conftest import wait_for

# 6 digits MLPs (a second or two each) and 6 MNIST ones that fail at once: the MNIST files are
# there (planning checks that they are) but empty, unusable until the test writes real ones.
ARGS = [
    "out_dir=results",
    "data=digits,mnist",
    "model.width=8,12,16,24,32,48",
    "seed=0",
    "train.epochs=10",
    "optim.batch_size=32",
    "metrics.hessian_trace.n_probes=5",
    "ray.num_cpus=2",
    "ray.inline=false",  # the driver of an embedded Ray instance
    "--quiet",
    "--no-report",
]
COMMAND = [sys.executable, "-m", "sweeps.cli", *ARGS]


def _fake_mnist(root, n_train=256, n_test=64):
    """MNIST in torchvision's raw idx format: big-endian magic (0x08 = uint8, ndim), dims, bytes."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        header = struct.pack(">I", 0x0800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        (raw / name).write_bytes(header + a.astype(np.uint8).tobytes())


def _kill_driver_when(cwd, ready) -> None:
    driver = subprocess.Popen(
        COMMAND,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(ready, 300, "the first parts to land")
        family = psutil.Process(driver.pid).children(recursive=True)  # the Ray processes it started
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
    time.sleep(2)  # Ray's own reaper takes most of them down; end the rest, one by one, by pid
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _rerun(cwd, *extra):
    result = subprocess.run(
        [*COMMAND, *extra], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_driver_killed_then_resumed_then_failed_ones_retried(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in TORCHVISION_SOURCES["mnist"].files:
        (raw / name).touch()  # present, empty: each MNIST pack fails when it loads them
    store = Store(tmp_path / "results" / "demo")
    digits_done = lambda: sum(r["status"] == "ok" for r in store.recorded().values())  # noqa: E731
    _kill_driver_when(tmp_path, lambda: digits_done() >= 2)

    before = store.recorded()
    assert 2 <= sum(r["status"] == "ok" for r in before.values()) < 6, (
        "the driver should die mid-sweep"
    )
    out = _rerun(tmp_path)
    assert f"{len(before)} already finished (skipped), {12 - len(before)} to run" in out
    after = store.recorded()
    assert len(after) == 12
    for vid, row in before.items():  # nothing that finished was trained again
        assert after[vid]["finished_at"] == row["finished_at"]
    failed = {vid for vid, r in after.items() if r["status"] == "failed"}
    assert len(failed) == 6 and all("no usable MNIST files" in after[v]["error"] for v in failed)

    _fake_mnist(tmp_path / "data")
    out = _rerun(tmp_path, "--retry-failed")
    assert "6 already finished (skipped), 6 to run (6 replacing recorded rows)" in out
    rows, _ = store.read_column_values("runs", ["variant_id", "status", "error"])
    assert len(rows) == 12 and len({r["variant_id"] for r in rows}) == 12  # no old failed row left
    assert {r["status"] for r in rows} == {"ok"}
