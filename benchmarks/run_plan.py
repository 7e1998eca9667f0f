"""A sweep on a machine without Ray or Hydra (the lent GPU machine's Python has neither).

``export`` composes the sweep here, with Hydra, exactly as ``landscape-sweep`` does, and writes
its packs, metrics settings and manifest as JSON; ``run`` trains and measures those packs one
after another with the sweep's own worker class (:class:`sweeps.workers.PackWorker`, no Ray)
and writes the rows through the sweep's store, so ``landscape-report``, ``landscape-claims``
and ``analysis.load`` read the directory as any sweep's. What it leaves out: workers in
parallel, retries of a dead worker, and the passes that pair variants across packs (a
preset whose seeds share a pack, as the grokking presets' do, needs none).

    python benchmarks/run_plan.py export benchmarks/plans/grokking_modadd.json sweep=grokking_modadd
    python benchmarks/run_plan.py run benchmarks/plans/grokking_modadd.json OUT/grokking_modadd \
        --device cuda --budget-s 500

``benchmarks/plans/`` holds the plans that ``benchmarks/run_gpu.sh`` runs; a test checks that
each still equals a fresh export of its preset (the same packs of the same variants).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def export(path: Path, overrides: list[str]) -> None:
    from landscape.pack import make_packs
    from sweeps.config import plan_sweep
    from sweeps.manifest import build_manifest

    plan = plan_sweep(overrides)
    ids = [v.variant_id for v in plan.variants]
    packs = make_packs(plan.variants, plan.pack.max_members)
    doc = {
        "name": plan.name,
        "device": plan.device,
        "metrics": dataclasses.asdict(plan.metrics),
        "manifest": build_manifest(plan, None, ids, []),
        "packs": [[{"id": v.variant_id, **_nested(v)} for v in pack] for pack in packs],
    }
    path.write_text(json.dumps(doc, default=str, indent=1) + "\n")
    print(f"{path}: sweep {plan.name}, {len(ids)} variants in {len(packs)} packs")


def _nested(v) -> dict:
    return {
        **{s: dataclasses.asdict(getattr(v, s)) for s in ("model", "data", "optim", "train")},
        "seed": v.seed,
    }


def run(path: Path, results: Path, budget_s: float, threads: int, device: str | None) -> int:
    from landscape.measure import MetricsSpec
    from landscape.variant import Variant, build_spec
    from sweeps.store import Store
    from sweeps.workers import PackWorker

    doc = json.loads(path.read_text())
    metrics = build_spec(MetricsSpec, _tuples(doc["metrics"]), "metrics")
    store = Store(results)
    store.write_manifest(doc["manifest"])
    worker = PackWorker(device or doc["device"], threads)
    done = set(store.finished_ids())
    t0, counts = time.perf_counter(), {}
    for i, pack in enumerate(doc["packs"]):
        variants = [Variant.from_dict(_tuples({k: v for k, v in d.items() if k != "id"}))
                    for d in pack]  # fmt: skip
        for v, d in zip(variants, pack):
            if v.variant_id != d["id"]:
                sys.exit(f"run_plan: variant {d['id']} hashes to {v.variant_id} here: other code")
        if all(v.variant_id in done for v in variants):
            continue
        if time.perf_counter() - t0 > budget_s:
            print(f"run_plan: budget of {budget_s:.0f} s spent before pack {i + 1}; stopping")
            break
        tables = worker.run(variants, metrics)
        now = datetime.now(timezone.utc)
        for row in tables.get("runs", []):
            row["finished_at"] = now
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        store.write_pack(tables)
        print(f"pack {i + 1}/{len(doc['packs'])}: {len(variants)} variants "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    for table in store.tables():
        store.harmonize(table)
    print(f"ran {sum(counts.values())} variants {counts} in {time.perf_counter() - t0:.0f} s")
    return 0


def _tuples(d):
    """JSON lists back as the tuples the spec dataclasses hold."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(_tuples(v) for v in d)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="compose a sweep here (Hydra) and write its packs as JSON")
    e.add_argument("plan", type=Path)
    e.add_argument("overrides", nargs="*")
    r = sub.add_parser("run", help="train and measure an exported plan's packs (no Ray, no Hydra)")
    r.add_argument("plan", type=Path)
    r.add_argument("results", type=Path)
    r.add_argument("--budget-s", type=float, default=float("inf"), help="start no pack after this")
    r.add_argument("--threads", type=int, default=4, help="torch threads of the worker")
    r.add_argument("--device", default=None, help="in place of the plan's (composed elsewhere)")
    args = p.parse_args(argv)
    if args.command == "export":
        export(args.plan, args.overrides)
        return 0
    return run(args.plan, args.results, args.budget_s, args.threads, args.device)


if __name__ == "__main__":
    sys.exit(main())
