"""The sweep machinery alone: 10,000 no-op variants through expansion, packing, Ray and Parquet.

Workers are ``sweeps.workers.NoopPackWorker`` actors: they return a runs row and one curves
row per epoch for every variant without training, so what is timed is the driver, Ray's
round trips and the store. Phases, in one process:

- expand: ``plan_sweep`` of a 100 x 10 x 10 grid (model.width x optim.lr x seed);
- pack / schedule: ``make_packs`` and the cost estimate that orders packs (biggest first),
  timed apart for information (``run_sweep`` does both again inside ``sweep``);
- ray_init: starting the local Ray instance (``ray.num_cpus``);
- sweep: ``run_sweep`` end to end (lock, recovery, dispatch, one Parquet commit per pack,
  harmonise), i.e. what a user waits for once Ray is up;
- resume: the same sweep again (everything recorded: reads the store, runs nothing);
- compact: ``Store.compact`` of the result, then resume again from the compacted store;
- per-pack driver overhead: a second sweep of single-variant packs, its sweep time divided by
  its packs, and ``Store.write_pack`` alone for one pack.

Goal: expand + pack + Ray + Parquet for 10,000 variants in under 60 s on 2 CPU cores
(``total_s`` = expand + ray_init + sweep).

    python benchmarks/bench_sweep.py --out bench_sweep.json [--variants 10000] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray

from landscape.pack import make_packs
from sweeps.config import plan_sweep
from sweeps.cost import schedule
from sweeps.runner import _init_ray, run_sweep
from sweeps.store import Store
from sweeps.workers import NoopPackWorker


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def grid(variants: int) -> list[str]:
    """Axes whose product is ``variants`` (a multiple of 100): widths x 10 learning rates x 10 seeds."""
    if variants % 100:
        raise SystemExit(f"--variants must be a multiple of 100, got {variants}")
    return [f"model.width=range(1,{variants // 100 + 1})", "optim.lr=range(1,11)", "seed=range(10)"]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--overhead-packs",
        type=int,
        default=1000,
        help="single-variant packs for the per-pack figure",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    quiet = lambda line: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            "optim.batch_size=16",
            "train.epochs=3",
            f"ray.num_cpus={args.cpus}",
            f"out_dir={tmp}",
        ]
        plan, expand_s = timed(lambda: plan_sweep([*grid(args.variants), *common]))
        packs, pack_s = timed(lambda: make_packs(plan.variants, plan.pack.max_members))
        _, schedule_s = timed(lambda: schedule(packs, plan.metrics, args.cpus))
        _, ray_init_s = timed(lambda: _init_ray(plan, quiet))
        try:
            kw = dict(progress=False, log=quiet, worker_cls=NoopPackWorker)
            summary, sweep_s = timed(lambda: run_sweep(plan, **kw))
            assert summary.ran == args.variants and summary.counts == {"ok": args.variants}, summary
            again, resume_s = timed(lambda: run_sweep(plan, **kw))
            assert again.ran == 0
            store = Store(plan.results_dir)
            assert len(store.recorded()) == args.variants
            (before, after), compact_s = timed(lambda: store.compact())
            _, resume_compacted_s = timed(lambda: run_sweep(plan, **kw))

            n = args.overhead_packs
            single = plan_sweep(
                [
                    f"model.width=range(1,{n // 10 + 1})",
                    "seed=range(10)",
                    *common,
                    "pack.max_members=1",
                    "sweep.name=overhead",
                ]
            )
            single_summary, single_s = timed(lambda: run_sweep(single, **kw))
            assert single_summary.ran == n
        finally:
            ray.shutdown()
        # the store's share of the per-pack cost: one pack's commit (runs + curves parts)
        tables = NoopPackWorker("cpu", 1).run(packs[0], plan.metrics)
        write_store, reps = Store(Path(tmp) / "writes"), 50
        _, write_s = timed(lambda: [write_store.write_pack(tables) for _ in range(reps)])

    total = expand_s + ray_init_s + sweep_s  # run_sweep packs and schedules again itself
    result = {
        "benchmark": "bench_sweep",
        "device": f"CPU: {cpu_name()}",
        "cpu_count": os.cpu_count(),
        "ray_num_cpus": args.cpus,
        "ray": ray.__version__,
        "variants": args.variants,
        "packs": len(packs),
        "members_per_pack": plan.pack.max_members,
        "expand_s": round(expand_s, 2),
        "pack_s": round(pack_s, 2),
        "schedule_s": round(schedule_s, 2),
        "ray_init_s": round(ray_init_s, 2),
        "sweep_s": round(sweep_s, 2),
        "total_s": round(total, 2),
        "variants_per_s": round(args.variants / sweep_s, 1),
        "resume_s": round(resume_s, 2),
        "compact_s": round(compact_s, 2),
        "resume_after_compact_s": round(resume_compacted_s, 2),
        "commits_before_after_compact": [before, after],
        "overhead_packs": n,
        "overhead_sweep_s": round(single_s, 2),
        "driver_ms_per_pack": round(1000 * single_s / n, 2),
        "write_pack_ms": round(1000 * write_s / reps, 2),
        "goal_s": 60,
        "within_goal": total < 60,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
