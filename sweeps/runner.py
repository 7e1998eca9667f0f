"""The sweep driver: skip what is finished, pack the rest, dispatch packs to Ray workers with a
bound on work in flight, and write each pack's rows to the store as soon as it returns."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from tqdm import tqdm

from landscape.pack import make_packs
from landscape.run import failed_rows
from landscape.variant import ConfigError, Variant
from sweeps.config import SweepPlan
from sweeps.store import Store, code_version, package_versions
from sweeps.workers import RemotePackWorker

MAX_PACK_ATTEMPTS = 3  # a pack whose worker dies this many times is recorded as failed


@dataclass
class SweepSummary:
    total: int
    skipped: int
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0


def _manifest(plan: SweepPlan, store: Store) -> dict:
    old = store.read_manifest() or {}
    axes = dict(old.get("axes", {}))
    for key, values in plan.axes.items():  # extending an axis keeps the values run before
        merged = list(axes.get(key, []))
        merged += [v for v in values if v not in merged]
        axes[key] = merged
    return {
        "sweep": plan.name,
        "config": plan.config,
        "axes": axes,
        "analysis": plan.analysis,
        "variants": len(plan.variants),
        "code_version": code_version(),
        "versions": package_versions(),
        "created": old.get("created", datetime.now(timezone.utc).isoformat()),
        "updated": datetime.now(timezone.utc).isoformat(),
    }


def _init_ray(plan: SweepPlan) -> bool:
    """Start a local instance or join a cluster; returns True if this call started Ray."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
    if plan.ray.address:
        ray.init(address=plan.ray.address, **kwargs)
    else:
        ray.init(num_cpus=plan.ray.num_cpus, **kwargs)
    return True


def _check_resources(plan: SweepPlan) -> None:
    """A worker that asks for more than the cluster has would wait forever: say so instead."""
    total = ray.cluster_resources()
    for key, need in (("CPU", plan.ray.cpus_per_worker), ("GPU", plan.ray.gpus_per_worker)):
        if need > total.get(key, 0):
            raise ConfigError(
                f"ray.{key.lower()}s_per_worker must be <= the {key}s of the Ray cluster ({total.get(key, 0):g}), "
                f"got {need:g}"
            )


def _num_workers(plan: SweepPlan, n_packs: int) -> int:
    if plan.ray.num_workers:
        return min(plan.ray.num_workers, n_packs)
    res = ray.available_resources()
    limits = [n_packs, max(1, int(res.get("CPU", 1) // max(plan.ray.cpus_per_worker, 1e-9)))]
    if plan.ray.gpus_per_worker > 0:
        limits.append(max(1, int(res.get("GPU", 0) // plan.ray.gpus_per_worker)))
    return max(1, min(limits))


def run_sweep(plan: SweepPlan, *, progress: bool = True, retry_failed: bool = False,
              log: Callable[[str], None] = print) -> SweepSummary:
    t0 = time.perf_counter()
    store = Store(plan.results_dir)
    if removed := store.drop_uncommitted():
        log(f"removed {removed} parts of an interrupted write (their variants run again)")
    recorded = store.recorded_ids()
    done = {vid for vid, status in recorded.items() if status != "failed" or not retry_failed}
    todo = [v for v in plan.variants if v.variant_id not in done]
    summary = SweepSummary(total=len(plan.variants), skipped=len(plan.variants) - len(todo))
    log(f"sweep {plan.name}: {summary.total} variants, {summary.skipped} already finished (skipped), "
        f"{len(todo)} to run")
    if not todo:
        store.write_manifest(_manifest(plan, store))
        summary.wall_time_s = time.perf_counter() - t0
        return summary

    packs = make_packs(todo, plan.pack.max_members)
    started = _init_ray(plan)
    try:
        _check_resources(plan)
        store.write_manifest(_manifest(plan, store))
        _dispatch(plan, store, packs, summary, progress, log)
    finally:
        if started:
            ray.shutdown()
    for table in ("runs", "curves", "pairs", "surfaces", "spectra", "stiffness", "lr_range"):
        store.harmonize(table)
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def _dispatch(plan: SweepPlan, store: Store, packs: list[list[Variant]], summary: SweepSummary,
              progress: bool, log: Callable[[str], None]) -> None:
    n_workers = _num_workers(plan, len(packs))
    threads = max(1, math.floor(plan.ray.cpus_per_worker))
    options = dict(num_cpus=plan.ray.cpus_per_worker, num_gpus=plan.ray.gpus_per_worker, max_restarts=-1)
    workers = [RemotePackWorker.options(**options).remote(plan.device, threads) for _ in range(n_workers)]
    queue: deque[tuple[list[Variant], int]] = deque((p, 1) for p in packs)
    in_flight: dict[ray.ObjectRef, tuple[list[Variant], int, int]] = {}
    load = [0] * n_workers
    bar = tqdm(total=sum(len(p) for p in packs), unit="variant", disable=not progress, desc=plan.name)
    while queue or in_flight:
        while queue and min(load) < plan.ray.max_in_flight:
            pack, attempt = queue.popleft()
            w = load.index(min(load))
            in_flight[workers[w].run.remote(pack, plan.metrics)] = (pack, attempt, w)
            load[w] += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        ref = ready[0]
        pack, attempt, w = in_flight.pop(ref)
        load[w] -= 1
        try:
            tables = ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            if attempt < MAX_PACK_ATTEMPTS:
                log(f"worker died running a pack of {len(pack)} (attempt {attempt}); retrying it")
                queue.append((pack, attempt + 1))
                continue
            tables = failed_rows(pack, plan.metrics, f"worker died {attempt} times: {type(exc).__name__}", plan.device).tables
        except RayTaskError as exc:
            tables = failed_rows(pack, plan.metrics, str(exc.cause if exc.cause else exc).splitlines()[0], plan.device).tables
        store.write_pack(tables)
        for row in tables.get("runs", []):
            summary.counts[row["status"]] = summary.counts.get(row["status"], 0) + 1
        summary.ran += len(pack)
        bar.update(len(pack))
    bar.close()
