"""Joining a Ray cluster is bounded and says why it failed; the README's recipe works as written.

The fast tests check the address before Ray is involved (a port out of range, a port where
nothing listens). The slow ones start real nodes on the loopback interface with ``ray start``
(token authentication on, as docs/cluster.md's recipe has it): a head joined by HOST:PORT and
by ``auto`` (the driver without RAY_AUTH_MODE: it uses this machine's token), refused with a
wrong token, stopped by its own PID; and a head with a worker node, RAY_AUTH_MODE=token on
both and for the driver, the worker node killed by its PID mid-sweep."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray

from landscape.variant import ConfigError
from sweeps.cluster import ClusterError, check_cluster
from sweeps.runner import run_sweep
from tests.sweeps.conftest import TINY, tiny_plan, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["localhost:99999", "10.0.0.1:0"])
def test_a_port_out_of_range_is_refused_at_planning(tmp_path, address):
    with pytest.raises(ConfigError, match="port between 1 and 65535"):
        tiny_plan(tmp_path, f"ray.address={address}")


def test_connect_timeout_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="ray.connect_timeout_s must be a number > 0"):
        tiny_plan(tmp_path, "ray.connect_timeout_s=0")


def test_nothing_listening_fails_at_once_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not another test's instance
    port = free_port()
    plan = tiny_plan(tmp_path, f"ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=5")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        run_sweep(plan, progress=False, log=lambda line: None)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "connection refused" in message
    assert "\n" not in message
    assert not (tmp_path / "results").exists()  # no .lock, no manifest: nothing written


def test_auto_without_a_cluster_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray_current_cluster recorded there
    monkeypatch.setattr(
        "ray._private.services.find_gcs_addresses", lambda: frozenset(), raising=True
    )
    with pytest.raises(ClusterError, match="no Ray cluster runs on this machine"):
        check_cluster("auto", 2.0, lambda: None, lambda line: None)


# --- a real head on the loopback interface ---------------------------------------------------


def _env(home: Path, ray_tmp: Path, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS"))
    }
    env.update(
        HOME=str(home),  # the token lives in ~/.ray/auth_token: this test's own
        RAY_TMPDIR=str(ray_tmp),  # `auto` finds the address the head recorded here
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def _start_head(env: dict, port: int, num_cpus: int = 2) -> subprocess.Popen:
    """The README's recipe: a token, then ``ray start --head --block`` in the background."""
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env,
        check=True,
        capture_output=True,
    )
    ports = {
        "--dashboard-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
    }
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            *(f"{flag}={value}" for flag, value in ports.items()),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    recorded = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    wait_for(lambda: recorded.exists() or head.poll() is not None, 90, "the head to start")
    assert head.poll() is None, "ray start --head exited"
    return head


def _sweep(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *TINY, "--quiet", "--no-report", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_readme_recipe_joins_a_loopback_head_by_address_and_by_auto(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must be short
    env = _env(home, ray_tmp)
    port = free_port()
    head = _start_head(env, port)
    helpers = [head.pid]
    try:
        helpers = [head.pid, *(p.pid for p in psutil.Process(head.pid).children(recursive=True))]
        out = tmp_path / "results"

        joined = _sweep(env, f"ray.address=127.0.0.1:{port}", f"out_dir={out}")
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert f"joining the Ray cluster at 127.0.0.1:{port}" in joined.stdout
        runs = pd.read_parquet(out / "demo" / "runs")
        assert len(runs) == 8 and set(runs.status) == {"ok"}

        auto = _sweep(env, "ray.address=auto", f"out_dir={tmp_path / 'auto'}")
        assert auto.returncode == 0, auto.stderr[-3000:]
        assert len(pd.read_parquet(tmp_path / "auto" / "demo" / "runs")) == 8

        wrong = _sweep(
            _env(home, ray_tmp, RAY_AUTH_TOKEN="0" * 32),
            f"ray.address=127.0.0.1:{port}",
            f"out_dir={tmp_path / 'wrong'}",
            timeout=60,
        )
        assert wrong.returncode == 2
        error = wrong.stderr.strip().splitlines()
        assert len(error) == 1 and "InvalidAuthToken" in error[0], wrong.stderr
        assert f"127.0.0.1:{port}" in error[0]
        assert not (tmp_path / "wrong").exists()
    finally:
        head.send_signal(signal.SIGTERM)  # the README's way: the head's own PID, never `ray stop`
        head.wait(60)
    gone = wait_for(
        lambda: not [p for p in helpers if psutil.pid_exists(p) and _alive(p)],
        60,
        "the head's processes to end",
    )
    assert gone


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _FakeGcs:
    """Ray's GCS client, answering with a cluster's metadata (or failing as told)."""

    metadata: dict = {}
    error: Exception | None = None

    def __init__(self, address):
        if self.error is not None:
            raise self.error

    def internal_kv_get(self, key, namespace=None, timeout=None):
        import json

        return json.dumps(self.metadata).encode()


@pytest.mark.parametrize(
    ("metadata", "error", "message"),
    [
        (
            {"ray_version": "1.0.0", "python_version": "3.8.0"},
            None,
            "version mismatch: the cluster runs Ray 1.0.0 on Python 3.8.0, this driver Ray ",
        ),
        ({}, "auth", "the cluster refused this driver's authentication token"),
    ],
)
def test_a_cluster_of_another_version_or_token_is_refused_with_the_reason(
    monkeypatch, metadata, error, message
):
    import ray._raylet
    from ray.exceptions import AuthenticationError

    listening = socket.socket()  # the port answers
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    fake = type(
        "Gcs",
        (_FakeGcs,),
        {
            "metadata": metadata,
            "error": AuthenticationError("RPC error: InvalidAuthToken") if error else None,
        },
    )
    monkeypatch.setattr(ray._raylet, "GcsClient", fake)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # explicit: the check leaves it as it is
    monkeypatch.setattr("sweeps.cluster._head_listens_on_loopback_only", lambda *a: False)
    try:
        with pytest.raises(ClusterError) as info:
            check_cluster(f"127.0.0.1:{port}", 5.0, lambda: None, lambda line: None)
    finally:
        listening.close()
    assert message in str(info.value) and "\n" not in str(info.value)


# --- a second node joins the head: the recipe's worker node --------------------------------

DRIVER = """
import sys
from sweeps.config import plan_sweep
from sweeps.runner import run_sweep
from tests.sweeps.fault_workers import FaultyWorker

plan = plan_sweep(sys.argv[2:])
summary = run_sweep(
    plan, progress=False, worker_cls=FaultyWorker, worker_kwargs={"signal_dir": sys.argv[1]}
)
print(f"worker deaths: {summary.worker_deaths}")
"""


def _start_worker_node(env: dict, port: int) -> subprocess.Popen:
    """The recipe's worker node, ``ray start --address=... --block`` with every port of its own
    (distinct from the head's: both run on this machine)."""
    low = free_port()
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--min-worker-port": low,
        "--max-worker-port": low + 200 if low + 200 < 65536 else low,
    }
    return subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--block",
            f"--address=127.0.0.1:{port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--disable-usage-stats",
            *(f"{flag}={value}" for flag, value in ports.items()),
        ],
        env={**env, "HOLD_ON_THIS_NODE": "1"},  # FaultyWorker: its packs wait to be killed
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _active_nodes(env: dict, port: int) -> int:
    """How many nodes ``ray status`` lists as active (with the token in ``env``)."""
    shown = subprocess.run(
        [str(BIN / "ray"), "status", f"--address=127.0.0.1:{port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    active = shown.partition("Active:")[2].partition("Pending:")[0]
    return sum("node_" in line for line in active.splitlines())


@pytest.mark.slow
def test_a_worker_node_joins_runs_packs_and_is_killed_mid_sweep(tmp_path):
    """The recipe with RAY_AUTH_MODE=token exported on every node and for the driver: a head
    and a worker node on this machine (one CPU each), a sweep with one worker on each node; the
    worker node's packs wait until the node is killed by the PID of its ``ray start --block``,
    then run again on the head: every variant once, all ok."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = _env(home, ray_tmp, RAY_AUTH_MODE="token")
    port = free_port()
    head = _start_head(env, port, num_cpus=1)
    worker = None
    helpers = [head.pid]
    try:
        worker = _start_worker_node(env, port)
        # the sweep starts once the worker node has joined (a tiny sweep would be over first)
        wait_for(
            lambda: _active_nodes(env, port) >= 2 or worker.poll() is not None,
            120,
            "the worker node to join",
        )
        assert worker.poll() is None, "the worker node exited (refused by the head?)"
        signals = tmp_path / "signals"
        signals.mkdir()
        (signals / "await-hold").touch()  # the head's packs wait until one holds on the node
        out = tmp_path / "results"
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(signals), *TINY, f"out_dir={out}"]
            + [f"ray.address=127.0.0.1:{port}", "ray.cpus_per_worker=1", "ray.num_workers=2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hold = wait_for(
            lambda: next(signals.glob("hold-*"), None) or driver.poll() is not None,
            180,
            "a pack to start on the worker node",
        )
        assert driver.poll() is None, driver.communicate()
        helpers = [
            head.pid,
            worker.pid,
            *(p.pid for n in (head, worker) for p in psutil.Process(n.pid).children(True)),
        ]
        assert worker.poll() is None, "the worker node died (authentication?)"
        (signals / "killed").touch()
        worker.send_signal(signal.SIGTERM)  # the recipe's `kill $(cat ray-worker.pid)`
        worker.wait(60)
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]
        assert "worker deaths: 0" not in stdout, stdout  # the held pack's worker died with it
        runs = pd.read_parquet(out / "demo" / "runs")
        assert runs.variant_id.is_unique and len(runs) == 8
        assert set(runs.status) == {"ok"}
        nodes = {p.name.split("-")[1] for p in signals.glob("ran-*")}
        assert hold.read_text() in nodes and len(nodes) == 2  # packs ran on both nodes
    finally:
        for node in (worker, head):
            if node is not None and node.poll() is None:
                node.send_signal(signal.SIGTERM)
                node.wait(60)
    assert wait_for(
        lambda: not [p for p in helpers if psutil.pid_exists(p) and _alive(p)],
        60,
        "the nodes' processes to end",
    )
