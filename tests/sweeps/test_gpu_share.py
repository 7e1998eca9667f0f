"""Several workers on one GPU (``ray.gpus_per_worker`` a fraction): the scheduler keeps that
many packs in flight on the one device, as the taxonomy preset's 5-member packs need to fill
it. A Ray node that declares one GPU (Ray schedules shares of a declared GPU on any machine)
and workers that only sleep: what is tested is the scheduling, not the device."""

import dataclasses
import json

import pytest
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from sweeps.config import plan_sweep
from sweeps.runner import run_sweep
from tests.sweeps import sleepy_workers
from tests.sweeps.conftest import TINY, assert_exactly_once
from tests.sweeps.sleepy_workers import SleepyWorker

ray.cloudpickle.register_pickle_by_value(sleepy_workers)


def _most_at_once(records: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_a_quarter_gpu_per_worker_keeps_four_packs_in_flight_on_one_gpu(tmp_path):
    ray.shutdown()  # a local instance another test may have left for sharing
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 1})
    try:
        args = [a for a in TINY if not a.startswith(("model.width=", "ray.num_cpus="))]
        plan = plan_sweep([*args, "model.width=range(4,12)", f"out_dir={tmp_path / 'results'}"])
        plan.ray = dataclasses.replace(
            plan.ray, address=cluster.address, ship_code=True, gpus_per_worker=0.25
        )
        logs = tmp_path / "logs"
        logs.mkdir()
        summary = run_sweep(
            plan,
            progress=False,
            log=lambda line: None,
            worker_cls=SleepyWorker,
            worker_kwargs={"log_dir": str(logs), "barrier": 4},
        )
        records = [json.loads(p.read_text()) for p in logs.glob("*.json")]
        assert summary.ran == 16 and len(records) == 8  # 8 packs of 2 seeds
        assert len({r["pid"] for r in records}) == 4  # four workers ...
        assert {tuple(r["gpus"]) for r in records} == {("0",)}  # ... sharing GPU 0
        # ... each with a pack in flight at once (the first packs wait for four to have begun,
        # up to a minute: with fewer at once the sweep takes a minute and this fails)
        assert _most_at_once(records) == 4 and summary.wall_time_s < 45
        assert set(assert_exactly_once(plan).status) == {"ok"}
    finally:
        ray.shutdown()
        cluster.shutdown()
