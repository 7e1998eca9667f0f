"""A node removed from a two-node Ray cluster mid-sweep: its pack runs again elsewhere and
nothing is lost. The driver joins the cluster by address and ships our code (runtime_env)."""

import dataclasses

import pytest
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from sweeps.runner import run_sweep
from tests.sweeps import fault_workers
from tests.sweeps.conftest import assert_exactly_once, tiny_plan, wait_for
from tests.sweeps.fault_workers import FaultyWorker
from tests.sweeps.test_faults import _held, _in_thread

ray.cloudpickle.register_pickle_by_value(fault_workers)


@pytest.mark.slow
def test_node_removed_mid_sweep_loses_nothing(tmp_path):
    ray.shutdown()  # a local instance another test may have left for sharing
    # no CPUs on the head: the workers go to the two nodes, one each
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        plan = tiny_plan(tmp_path)
        plan.ray = dataclasses.replace(plan.ray, address=cluster.address, ship_code=True)
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
        hold = wait_for(lambda: _held(signals, out), 180, "a worker to start the held pack")
        node_id = wait_for(hold.read_text, 10, "the node id")
        victim = next(n for n in nodes if n.node_id == node_id)
        (signals / "killed").touch()
        cluster.remove_node(victim)
        thread.join(300)
        assert "error" not in out, out.get("error")
        runs = assert_exactly_once(plan)
        assert set(runs.status) == {"ok"}
        assert out["result"].worker_deaths >= 1
        assert any(f"joining the Ray cluster at {cluster.address}" in line for line in logs)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_shutdown_left_running_is_waited_for_before_ray_starts_again(monkeypatch, tmp_path):
    """After a finished dispatch the embedded instance ends in a thread (the report is drawn
    meanwhile); starting Ray again, or the command's end, waits for it first."""
    import threading

    from sweeps import runner

    release, done = threading.Event(), []

    def slow_shutdown():
        release.wait(10)
        done.append(True)

    monkeypatch.setattr(runner.ray, "shutdown", slow_shutdown)
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: bool(done))  # up until it ends
    monkeypatch.setattr(runner.ray, "init", lambda **kw: pytest.fail("started before the end"))
    runner._shutdown_in_background()
    assert not done and runner._shutting_down
    threading.Timer(0.2, release.set).start()
    plan = tiny_plan(tmp_path)
    assert runner._init_ray(plan, lambda line: None) is False  # waited, found it "running"
    assert done and not runner._shutting_down
    runner.wait_for_ray_shutdown()  # nothing left: returns at once
