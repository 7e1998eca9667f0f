"""``ray.mps``: the MPS control daemon around the embedded Ray instance. A stand-in for
``nvidia-cuda-mps-control`` on PATH records how it is called (this machine has no GPU); what
is tested is that the daemon starts before Ray, that the workers see its pipe directory, and
that it is told to quit and cleaned up after, whatever happens."""

import os
import stat

import pytest
import ray

from landscape.variant import ConfigError
from sweeps.mps import CONTROL, mps_daemon
from sweeps.runner import run_sweep
from tests.sweeps.conftest import command, tiny_plan
from tests.sweeps.sleepy_workers import SleepyWorker

FAKE = """#!/bin/sh
# records its arguments, its pipe directory and what it reads on stdin
if [ "$1" = "-d" ]; then
  echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_RECORD"
  exit ${FAKE_MPS_STATUS:-0}
fi
read line; echo "$line $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_RECORD"
"""


@pytest.fixture
def fake_mps(tmp_path, monkeypatch):
    """A stand-in control binary first on PATH; returns its record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / CONTROL
    control.write_text(FAKE)
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "mps.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    return record


def test_the_daemon_starts_names_its_pipe_and_quits(fake_mps):
    with mps_daemon(log=lambda line: None) as pipe:
        assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe) and pipe.is_dir()
        assert fake_mps.read_text().splitlines() == [f"start {pipe}"]
    assert fake_mps.read_text().splitlines() == [f"start {pipe}", f"quit {pipe}"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not pipe.parent.exists()


def test_a_daemon_that_does_not_start_is_one_line_and_leaves_nothing(fake_mps, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_STATUS", "3")
    failing = pytest.raises(ConfigError, match=r"-d did not start the daemon: exit status 3")
    with failing, mps_daemon(log=lambda line: None):
        pass
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_without_the_binary_the_sweep_stops_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "results"
    assert command(["ray.mps=true", f"out_dir={out}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ray.mps=true needs nvidia-cuda-mps-control" in err[0]
    assert not out.exists()


def test_mps_with_a_cluster_address_is_refused_at_planning(tmp_path):
    with pytest.raises(ConfigError, match="ray.mps=true starts the MPS daemon for an embedded"):
        tiny_plan(tmp_path, "ray.mps=true", "ray.address=127.0.0.1:6379")


@pytest.mark.slow
def test_the_workers_of_an_embedded_instance_run_under_the_daemon(tmp_path, fake_mps):
    ray.shutdown()  # the daemon must be there before Ray starts: a fresh embedded instance
    try:
        plan = tiny_plan(tmp_path, "ray.mps=true")
        logs = tmp_path / "logs"
        logs.mkdir()
        run_sweep(
            plan, progress=False, log=lambda line: None, worker_cls=SleepyWorker,
            worker_kwargs={"log_dir": str(logs), "seconds": 0.0},
        )  # fmt: skip
        records = [p.read_text() for p in logs.glob("*.json")]
        started, quit_ = fake_mps.read_text().splitlines()
        pipe = started.split()[1]
        assert quit_ == f"quit {pipe}"
        assert records and all(f'"mps_pipe": "{pipe}"' in r for r in records)
        assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    finally:
        ray.shutdown()
