"""Shared pieces of the sweep tests: a tiny, fast sweep, and a real local Ray instance started
the way the driver starts it (one per test module that asks for it: starting Ray costs seconds)."""

import time

import pandas as pd
import pytest
import ray

from landscape.run import metrics_id
from sweeps.config import plan_sweep
from sweeps.manifest import build_manifest
from sweeps.store import Store

# 4 widths x 2 seeds of a small MLP on synthetic data: 4 packs of one replicate group each,
# each well under a second to train and measure on one core.
TINY = [
    "data=synthetic",
    "model=mlp",
    "model.width=4,5,6,7",
    "seed=0,1",
    "train.epochs=1",
    "optim.batch_size=64",
    "metrics=fast",
    "metrics.hessian_trace.n_probes=2",
    "metrics.hessian_trace.n_samples=32",
    "ray.num_cpus=2",
]


def tiny_plan(tmp_path, *extra):
    return plan_sweep([*TINY, f"out_dir={tmp_path / 'results'}", *extra])


def finished_plan(tmp_path, *extra):
    """A results directory as a finished tiny sweep leaves it (rows written directly, no Ray)."""
    plan = tiny_plan(tmp_path, *extra)
    store = Store(plan.results_dir)
    ids = [v.variant_id for v in plan.variants]
    store.write_manifest(build_manifest(plan, None, ids, []))
    store.write_pack(
        {
            "runs": [
                {"variant_id": i, "status": "ok", "metrics_id": metrics_id(plan.metrics)}
                for i in ids
            ]
        }
    )
    return plan


def command(argv: list[str]) -> int:
    """``landscape-sweep`` in this process (a process costs seconds): its exit status. The
    SIGINT and SIGTERM handlers it installs are put back as they were."""
    from sweeps.cli import main
    from sweeps.signals import keep_handlers

    with keep_handlers():
        return main(argv)


def runs_table(plan) -> pd.DataFrame:
    return pd.read_parquet(plan.results_dir / "runs")


def assert_exactly_once(plan) -> pd.DataFrame:
    """Every planned variant has exactly one runs row, and no other variant has one."""
    runs = runs_table(plan)
    assert runs.variant_id.is_unique, runs.variant_id[runs.variant_id.duplicated()].tolist()
    assert sorted(runs.variant_id) == sorted(v.variant_id for v in plan.variants)
    return runs


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def _ray_down_at_exit():
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(tmp_path_factory, _ray_down_at_exit):
    """A local Ray instance with 2 CPUs, started by the driver's own ``_init_ray`` and shared by
    the tests that ask for it (starting Ray costs seconds); ``run_sweep`` uses it as it is."""
    from sweeps.runner import _init_ray

    if not ray.is_initialized():
        _init_ray(tiny_plan(tmp_path_factory.mktemp("ray")), log=lambda line: None)
    yield
