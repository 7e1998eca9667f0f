"""The driver-side passes: what the sweep measures in the driver process, after the packs have
trained, from the checkpoints they saved (``<results>/checkpoints/<variant_id>.pt``).

A metric is computed in one of three places: in a Ray worker right after its pack trains
(:mod:`landscape.run`), during training (:mod:`landscape.recorder`, in the worker too), or
here, when what it needs was not in one pack or not asked for when the pack ran:

- :func:`measure_from_checkpoints`: a variant's metrics again, for metrics settings changed
  since it trained;
- :func:`group_pairs_pass`: distances and paths between replicate-group members trained in
  different packs;
- :func:`cross_pass`: loss and accuracy on the line between variants that differ in chosen
  knobs.

:func:`run_passes` runs the three in that order, once the dispatch of a sweep (or a rerun with
nothing to train) is over; :mod:`sweeps.runner` plans and dispatches, and calls it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from landscape.cross import cross_pairs, interpolate_pair
from landscape.data import Dataset, load_dataset
from landscape.pack import make_packs
from landscape.run import measure_checkpoint_pairs, measure_checkpoints, metrics_id
from landscape.train import resolve_device
from landscape.variant import Variant
from sweeps.config import SweepPlan
from sweeps.store import FINISHED, Store
from sweeps.workers import dataset_key

# Tables written while training: kept when a variant is measured again from its checkpoint.
TRAINING_TABLES = ("curves", "trajectory", "path", "lca")
STEPPED_TABLES = ("stiffness", "params")  # rows with a step were taken during training
TRAINING_COLUMNS = (
    "best_epoch",
    "diverged_step",
    "pack_members",
    "wall_time_s",
    "pack_wall_time_s",
)


def run_passes(plan: SweepPlan, store: Store, ids: list[str], log: Callable[[str], None]) -> int:
    """Every pass the plan asks for, after training: measuring again from checkpoints (when the
    sweep keeps checkpoints or its directory has some), group pairs (when the metrics measure
    pairs), cross-variant pairs (``metrics.cross``). Returns how many variants were measured
    again. ``ids`` are the plan's variant ids, in the order of ``plan.variants``."""
    remeasured = 0
    if plan.checkpoints or (plan.results_dir / "checkpoints").is_dir():
        remeasured = measure_from_checkpoints(plan, store, ids, log)
    if plan.metrics.any_pairs:
        group_pairs_pass(plan, store, ids, log)
    if plan.metrics.cross.enabled:
        cross_pass(plan, store, ids, log)
    return remeasured


class _DriverData:
    """Data sets loaded in the driver for its post-training passes, once per source."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cache: dict[str, Dataset] = {}

    def __call__(self, variant: Variant) -> Dataset:
        key = dataset_key(variant.data)
        if key not in self.cache:
            self.cache[key] = load_dataset(variant.data).to(self.device)
        return self.cache[key]


def measurable_from_checkpoints(
    plan: SweepPlan, stale: set[str], recorded: dict[str, dict]
) -> set[str]:
    """Stale variants that can be measured again without retraining: finished ``ok`` with a
    checkpoint file, when the new metrics need nothing taken during training."""
    if plan.metrics.trajectory.enabled:
        return set()
    directory = plan.results_dir / "checkpoints"
    return {i for i in stale if recorded[i]["status"] == "ok" and (directory / f"{i}.pt").exists()}


def measure_from_checkpoints(
    plan: SweepPlan, store: Store, ids: list[str], log: Callable[[str], None]
) -> int:
    """Measure again, in the driver, the finished variants whose metrics_id is not the plan's
    and whose checkpoints exist (:func:`measurable_from_checkpoints`: the runner retrains the
    others, or refuses without ``--remeasure``); their rows are replaced, and what training
    wrote (curves, trajectories, the runs row's training columns) is carried over, one pack
    write per pack. Runs after the dispatch, which has trained nothing of these. Returns how
    many."""
    mid = metrics_id(plan.metrics)
    recorded = store.recorded()
    stale = {
        i
        for i in ids
        if recorded.get(i, {}).get("status") in FINISHED and recorded[i].get("metrics_id") != mid
    }
    todo_ids = measurable_from_checkpoints(plan, stale, recorded)
    if not todo_ids:
        return 0
    variants = [v for v, i in zip(plan.variants, ids) if i in todo_ids]
    log(f"measuring {len(variants)} finished variants again from their checkpoints (no retraining)")
    device = resolve_device(plan.device)
    data = _DriverData(device)
    for pack in make_packs(variants, plan.pack.max_members):
        tables = measure_checkpoints(
            pack, plan.metrics, data(pack[0]), device, plan.results_dir / "checkpoints"
        ).tables
        pack_ids = {v.variant_id for v in pack}
        old_runs = {r["variant_id"]: r for r in store.rows_of("runs", pack_ids)}
        for row in tables["runs"]:
            row.update({c: old_runs[row["variant_id"]].get(c) for c in TRAINING_COLUMNS})
        for table in TRAINING_TABLES + STEPPED_TABLES:
            kept = store.rows_of(table, pack_ids)
            if table in STEPPED_TABLES:  # only the rows taken during training
                kept = [r for r in kept if r.get("step") is not None]
            if kept:
                tables[table] = tables.get(table, []) + kept
        store.supersede(pack_ids)
        store.write_pack(tables)
    return len(variants)


def missing_group_pairs(
    plan: SweepPlan, store: Store, ids: list[str]
) -> list[tuple[list[Variant], list[tuple[int, int]]]]:
    """Replicate groups whose finished (``ok``) members lack pairs rows because they were not
    trained in one pack (a group larger than ``pack.max_members``, a pack split for memory or
    retried member by member, a seed run again with ``--retry-failed``): per group, its ok
    members (by seed) and the missing pairs (positions among them), up to ``metrics.max_pairs``
    pairs per group counting those recorded."""
    recorded = store.recorded()
    groups: dict[str, list[Variant]] = {}
    for v, i in zip(plan.variants, ids):
        if recorded.get(i, {}).get("status") == "ok":
            groups.setdefault(v.group_id, []).append(v)
    done_rows, _ = store.read_column_values("pairs", ["variant_a", "variant_b"])
    done = {frozenset((r["variant_a"], r["variant_b"])) for r in done_rows}
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda v: v.seed)
        member_ids = [v.variant_id for v in members]
        pairs = list(itertools.combinations(range(len(members)), 2))
        missing = [
            (a, b) for a, b in pairs if frozenset((member_ids[a], member_ids[b])) not in done
        ]
        have = len(pairs) - len(missing)
        missing = missing[: max(0, plan.metrics.max_pairs - have)]
        if missing:
            out.append((members, missing))
    return out


def group_pairs_pass(
    plan: SweepPlan, store: Store, ids: list[str], log: Callable[[str], None]
) -> None:
    """Measure the ``pairs`` rows (distances, paths: what ``metrics`` asks of pairs) of
    replicate-group members that were trained in different packs (:func:`missing_group_pairs`),
    from their checkpoints, in the driver, after training; each group's rows are one write
    committed by a ``passes`` part. Without checkpoints, say how many pairs are missing and how
    to get them."""
    todo = missing_group_pairs(plan, store, ids)
    directory = plan.results_dir / "checkpoints"
    have = [(m, p) for m, p in todo if all((directory / f"{v.variant_id}.pt").exists() for v in m)]
    lacking = sum(len(p) for _, p in todo) - sum(len(p) for _, p in have)
    if lacking:
        log(
            f"{lacking} pairs between replicate-group members trained in different packs are "
            "not measured: their checkpoints are missing (with checkpoints=true they are "
            "measured after training)"
        )
    if not have:
        return
    log(
        f"group pairs: measuring {sum(len(p) for _, p in have)} pairs of {len(have)} replicate "
        "groups whose members were trained in different packs, from their checkpoints"
    )
    device = resolve_device(plan.device)
    data = _DriverData(device)
    for members, pairs in have:
        rows = measure_checkpoint_pairs(
            members, plan.metrics, data(members[0]), device, directory, pairs
        ).tables
        store.write_pass(rows, "group_pairs")


def cross_pass(plan: SweepPlan, store: Store, ids: list[str], log: Callable[[str], None]) -> None:
    """Interpolate the train and test loss and accuracy along the line between finished
    (``ok``) variants equal in every knob but those in ``metrics.cross.vary`` (so trained in
    different packs), from their checkpoints, in the driver, after training: pairs not yet
    recorded, up to ``metrics.cross.max_pairs`` counting those recorded; each pair's rows are
    one self-committed part of ``cross``."""
    spec = plan.metrics.cross
    recorded = store.recorded()
    ok = [v for v, i in zip(plan.variants, ids) if recorded.get(i, {}).get("status") == "ok"]
    done_rows, _ = store.read_column_values("cross", ["variant_a", "variant_b"])
    done = {(r["variant_a"], r["variant_b"]) for r in done_rows}
    pairs = [
        (a, b) for a, b in cross_pairs(ok, spec.vary) if (a.variant_id, b.variant_id) not in done
    ]
    pairs = pairs[: max(0, spec.max_pairs - len(done))]
    if not pairs:
        return
    log(f"cross-variant pairs: interpolating {len(pairs)} (varying {', '.join(spec.vary)})")
    device = resolve_device(plan.device)
    data = _DriverData(device)
    for a, b in pairs:
        rows = interpolate_pair(a, b, plan.checkpoint_dir, data(a), spec, device)
        store.write_part("cross", rows)
