"""Train and measure one pack, and turn the result into table rows. What a worker runs.

``run_pack`` never raises for a problem of the science, and trains a pack once, whatever
measuring it does:

- while *training*: a member whose loss turns NaN is a ``diverged`` row; an exception in a
  pack of several is retried member by member so that one bad variant cannot take its
  pack-mates down with it, and a lone variant that still fails becomes a ``failed`` row with
  the error text; a pack that runs out of device memory is split in two and retried;
- while *measuring* the trained pack: nothing goes back to training. A metric that runs out
  of device memory runs again with smaller chunks, then on fewer members at a time; one that
  still fails leaves None (NaN) in its columns and ``<metric>: <error>`` in ``metric_errors``,
  and the run keeps its status and training results (``landscape.measure.measure_pack``).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from landscape.checkpoint import load_checkpoint, save_checkpoints
from landscape.data import Dataset
from landscape.functional import Stack, init_stack
from landscape.measure import Measured, MetricsSpec, measure_given_pairs, measure_pack
from landscape.metrics.registry import metrics as registered
from landscape.models import build_model
from landscape.pack import TrainedPack, free_device_memory, member_bytes, pack_id, split_to_fit
from landscape.train import TrainResult, evaluate_pack, make_pack_data, pack_steps, train_pack
from landscape.variant import Variant, added_keys, launch_keys, short_hash

MEMORY_HEADROOM = (
    0.7  # share of the free device memory a pack may plan to use (the estimate is rough)
)


@dataclass
class PackRows:
    """Rows for each table, ready for the store; keyed by table name."""

    tables: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, table: str, rows: list[dict]) -> None:
        if rows:
            self.tables.setdefault(table, []).extend(rows)

    def add_members(self, tables: dict[str, list[dict]], ids: list[str]) -> None:
        """Add rows that name pack members by position (``member``, ``member_a``/``_b``)."""
        for table, rows in tables.items():
            self.add(table, [_with_variant(r, ids) for r in rows])

    def extend(self, other: PackRows) -> None:
        for name, rows in other.tables.items():
            self.add(name, rows)

    @property
    def runs(self) -> list[dict]:
        return self.tables.get("runs", [])


# Metric settings that say how the numbers are computed, not which (``setting(launch=True)``),
# and settings added after results existed -> the value that measures what was measured before
# them (``setting(before=...)``), declared on the settings dataclasses as the variants' knobs are.
METRICS_LAUNCH_KEYS = tuple(launch_keys(MetricsSpec, ""))
METRICS_ADDED_KEYS = added_keys(MetricsSpec, "")


def metrics_id(metrics: MetricsSpec) -> str:
    """Hash of the metric settings a row was measured with, :data:`METRICS_LAUNCH_KEYS` left
    out, :data:`METRICS_ADDED_KEYS` left out at their old behaviour's value, and the settings
    of a metric nothing uses left out (unless registered ``hashed_when_off``): changing only
    those, or adding a metric, keeps a results directory's rows current."""
    spec = dataclasses.asdict(metrics)
    for m in registered():
        if not m.hashed_when_off and not metrics.uses(m.name):
            spec.pop(m.name)
    for key in METRICS_LAUNCH_KEYS:
        group, name = key.split(".")
        spec.get(group, {}).pop(name, None)
    for key, before in METRICS_ADDED_KEYS.items():
        group, name = key.split(".")
        if group in spec and spec[group][name] == before:
            spec[group].pop(name)
    return short_hash(spec, n=8)


def base_row(v: Variant, pid: str, mid: str, device: str) -> dict:
    return {
        "variant_id": v.variant_id,
        "group_id": v.group_id,
        "pack_id": pid,
        "metrics_id": mid,
        **v.flat(),
        "device": device,
    }


def failed_rows(
    variants: Sequence[Variant], metrics: MetricsSpec, error: str, device: str
) -> PackRows:
    pid, mid = pack_id(variants), metrics_id(metrics)
    rows = [{**base_row(v, pid, mid, device), "status": "failed", "error": error} for v in variants]
    return PackRows({"runs": rows})


@dataclass
class _Trained:
    result: TrainResult
    recorder: object | None
    seconds: float


def _train(
    variants: Sequence[Variant],
    metrics: MetricsSpec,
    dataset: Dataset,
    device: torch.device,
) -> _Trained:
    """Train the pack: the part that a failure may repeat."""
    t0 = time.perf_counter()
    recorder = metrics.recorder(*pack_steps(variants[0], dataset))
    result = train_pack(variants, dataset, device, recorder=recorder)
    return _Trained(result, recorder, time.perf_counter() - t0)


def _measure(
    variants: Sequence[Variant],
    metrics: MetricsSpec,
    trained: _Trained,
    device: torch.device,
    log: Callable[[str], None],
) -> PackRows:
    """The rows of a trained pack: its training results and every metric. Never raises and
    never trains: a failure while measuring is data (``metric_errors``)."""
    t0 = time.perf_counter()
    result = trained.result
    K = len(variants)
    try:
        measured = measure_pack(result.pack, metrics, log=log)
    except Exception as exc:  # noqa: BLE001 - measure_pack guards each metric; this is the rest
        log(f"measuring a pack of {K} failed: {type(exc).__name__}: {exc}")
        measured = Measured(
            columns={"metric_errors": [f"measure: {type(exc).__name__}: {exc}"] * K}
        )
    extra: dict[str, list[dict]] = {}
    if trained.recorder is not None:
        try:
            extra = trained.recorder.finish(result.pack)
        except Exception as exc:  # noqa: BLE001 - as above: the trained pack is kept
            log(f"the during-training measurements failed: {type(exc).__name__}: {exc}")
            errors = measured.columns.get("metric_errors") or [None] * K
            note = f"trajectory: {type(exc).__name__}: {exc}"
            measured.columns["metric_errors"] = [f"{e}; {note}" if e else note for e in errors]
    wall = trained.seconds + time.perf_counter() - t0
    pid, mid = pack_id(variants), metrics_id(metrics)
    ids = [v.variant_id for v in variants]
    out = PackRows()
    runs = []
    for k, v in enumerate(variants):
        diverged = result.diverged_step[k]
        row = base_row(v, pid, mid, str(device))
        row.update(  # ok: its checkpoint was measured (best_train_loss may predate divergence)
            status="ok" if bool(result.pack.alive[k]) else "diverged",
            error=None,
            diverged_step=diverged,
            best_epoch=result.best_epoch[k],
            pack_members=K,
            wall_time_s=wall / K,
            pack_wall_time_s=wall,
        )
        row.update({name: values[k] for name, values in result.final_metrics.items()})
        row.update({name: values[k] for name, values in measured.columns.items()})
        runs.append(row)
    out.add("runs", runs)
    out.add_members({"curves": result.curves}, ids)
    out.add_members(measured.tables, ids)
    out.add_members(extra, ids)
    return out


def _with_variant(row: dict, ids: list[str]) -> dict:
    """Replace pack-local member indices with variant ids."""
    row = dict(row)
    for member_key, id_key in (
        ("member", "variant_id"),
        ("member_a", "variant_a"),
        ("member_b", "variant_b"),
    ):
        if member_key in row:
            row[id_key] = ids[row.pop(member_key)]
    return row


def _halves(variants: Sequence[Variant]) -> list[list[Variant]]:
    """Split a pack in two, between replicate groups when there are several."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.group_id, []).append(v)
    if len(groups) > 1:
        ordered = list(groups.values())
        cut = len(ordered) // 2
        return [[v for g in ordered[:cut] for v in g], [v for g in ordered[cut:] for v in g]]
    cut = len(variants) // 2
    return [list(variants[:cut]), list(variants[cut:])]


def run_pack(
    variants: Sequence[Variant],
    metrics: MetricsSpec,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    *,
    log: Callable[[str], None] = lambda msg: None,
    checkpoint_dir: Path | str | None = None,
) -> PackRows:
    """Train and measure a pack; every variant comes back as exactly one ``runs`` row.

    With ``checkpoint_dir``, each variant's checkpoint is also saved there as ``<variant_id>.pt``.
    A checkpoint that cannot be written (a full disk) raises its ``OSError``: the machine failed,
    not the pack, so the pack is not trained again (the sweep stops with one line and resumes)."""
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    device = torch.device(device)
    if device.type == "cuda" and len(variants) > 1:
        free = free_device_memory(device)
        fit = int(
            MEMORY_HEADROOM
            * free
            // member_bytes(variants[0], dataset.input_shape, dataset.num_classes, dataset.vocab)
        )
        if fit < len(variants):
            log(
                f"a pack of {len(variants)} needs more than the free device memory; training {max(fit, 1)} at a time"
            )
            out = PackRows()
            for part in split_to_fit(variants, fit):
                out.extend(
                    run_pack(part, metrics, dataset, device, log=log, checkpoint_dir=checkpoint_dir)
                )
            return out
    try:
        trained = _train(variants, metrics, dataset, device)
    except torch.OutOfMemoryError:
        if len(variants) == 1:
            return failed_rows(
                variants,
                metrics,
                "OutOfMemoryError: one member does not fit on the device",
                str(device),
            )
        log(f"pack of {len(variants)} ran out of device memory while training; splitting in two")
        torch.cuda.empty_cache()
        out = PackRows()
        for half in _halves(variants):
            out.extend(
                run_pack(half, metrics, dataset, device, log=log, checkpoint_dir=checkpoint_dir)
            )
        return out
    except Exception as exc:  # noqa: BLE001 - failure is data: the error text goes into the row
        error = f"{type(exc).__name__}: {exc}"
        if len(variants) == 1:
            log(f"variant {variants[0].variant_id} failed: {error}\n{traceback.format_exc()}")
            return failed_rows(variants, metrics, error, str(device))
        log(
            f"pack of {len(variants)} failed while training ({error}); retrying its members one by one"
        )
        out = PackRows()
        for v in variants:
            out.extend(
                run_pack([v], metrics, dataset, device, log=log, checkpoint_dir=checkpoint_dir)
            )
        return out
    if checkpoint_dir is not None:
        save_checkpoints(trained.result.pack, checkpoint_dir)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # training's graphs and temporaries: the metrics' memory now
    return _measure(variants, metrics, trained, device, log)


def checkpoint_pack(
    variants: Sequence[Variant],
    dataset: Dataset,
    device: torch.device | str,
    checkpoint_dir: Path | str,
) -> TrainedPack:
    """Finished variants of one pack key as a :class:`TrainedPack` from their checkpoint files,
    without retraining. The initial parameters (for MLI and the distance to initialisation) are
    rebuilt from each variant's seed, exactly as training built them."""
    device = torch.device(device)
    first = variants[0]
    net, init = init_stack(
        lambda: build_model(first.model, dataset.input_shape, dataset.num_classes, dataset.vocab),
        [v.seed for v in variants],
        device,
    )
    final = Stack.concat(
        [load_checkpoint(Path(checkpoint_dir) / f"{v.variant_id}.pt", device)[1] for v in variants]
    )
    data = make_pack_data(variants, dataset.to(device))
    alive = torch.stack(
        [
            torch.stack([p[k].isfinite().all() for p in final.params.values()]).all()
            for k in range(len(variants))
        ]
    )
    return TrainedPack(list(variants), net, init, final, data, alive)


def measure_checkpoints(
    variants: Sequence[Variant],
    metrics: MetricsSpec,
    dataset: Dataset,
    device: torch.device | str,
    checkpoint_dir: Path | str,
) -> PackRows:
    """Measure finished variants again from their checkpoints, without retraining: ``runs`` rows
    with the train and test loss and accuracy re-evaluated at the checkpoint and every metric of
    ``metrics``, plus the metrics' own tables. Measurements taken during training (curves,
    trajectories) are not redone here."""
    t0 = time.perf_counter()
    pack = checkpoint_pack(variants, dataset, device, checkpoint_dir)
    evaluated = evaluate_pack(pack.net, pack.final, pack.data, variants[0].train.precision)
    measured = measure_pack(pack, metrics)
    pid, mid = pack_id(variants), metrics_id(metrics)
    per_variant = (time.perf_counter() - t0) / len(variants)
    out = PackRows()
    runs = []
    for k, v in enumerate(variants):
        row = base_row(v, pid, mid, str(torch.device(device)))
        row.update(
            status="ok", error=None, measured_from="checkpoint", measure_wall_time_s=per_variant
        )
        row.update({name: float(values[k]) for name, values in evaluated.items()})
        row.update({name: values[k] for name, values in measured.columns.items()})
        runs.append(row)
    out.add("runs", runs)
    out.add_members(measured.tables, [v.variant_id for v in variants])
    return out


def measure_checkpoint_pairs(
    variants: Sequence[Variant],
    metrics: MetricsSpec,
    dataset: Dataset,
    device: torch.device | str,
    checkpoint_dir: Path | str,
    pairs: list[tuple[int, int]],
) -> PackRows:
    """The pair metrics of ``metrics`` between the given pairs (positions in ``variants``, one
    replicate group) from checkpoints: ``pairs`` and ``surfaces`` rows naming variant ids. For
    group members that were trained in different packs."""
    pack = checkpoint_pack(variants, dataset, device, checkpoint_dir)
    out = PackRows()
    out.add_members(
        measure_given_pairs(pack, metrics, pairs).tables, [v.variant_id for v in variants]
    )
    return out
