"""Experiment trackers, for people who live in one: each pack's rows, as they are committed.

The runner calls ``on_pack(tables)`` once per pack, right after the pack's parts are written
(``tables``: table name -> rows, the same rows as the Parquet parts: one ``runs`` row per
variant, its ``curves`` rows per epoch, ...). Any callable will do (``run_sweep(plan,
on_pack=...)``: Weights & Biases, an MLflow client, a message queue); the Parquet store stays
the record, and a tracker that fails is logged once and switched off, never stops the sweep.

One integration ships, offline by design: **TensorBoard** event files (``tracker.kind=
tensorboard``), one run per variant under ``<results>/tensorboard/<variant_id>`` (or
``tracker.dir``): the curves as scalars by epoch, the final losses, accuracies and every
local metric as scalars at the last epoch, and the variant's knobs as text.

    landscape-sweep tracker.kind=tensorboard
    tensorboard --logdir results/demo/tensorboard
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.variant import ConfigError

KINDS = ("tensorboard",)
# runs columns that are not measurements (ids, knobs are told apart by the dot in their name)
NOT_SCALARS = {"variant_id", "group_id", "pack_id", "metrics_id", "seed", "status", "error"}


@dataclass(frozen=True)
class TrackerSettings:
    # null: no tracker; tensorboard: event files, one run per variant
    kind: str | None = None
    # where the tracker writes (null: <results>/<kind>)
    dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(
                f"tracker.kind must be null or one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if self.kind == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
            except ImportError:
                raise ConfigError(
                    "tracker.kind=tensorboard needs the tensorboard package: "
                    "pip install -e '.[tracker]'"
                ) from None


PackCallback = Callable[[dict[str, list[dict]]], None]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardTracker:
    """Writes each committed pack's variants as TensorBoard runs (``torch.utils.tensorboard``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def __call__(self, tables: dict[str, list[dict]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        curves: dict[str, list[dict]] = {}
        for row in tables.get("curves", []):
            curves.setdefault(row["variant_id"], []).append(row)
        for run in tables.get("runs", []):
            vid = run["variant_id"]
            with SummaryWriter(log_dir=str(self.directory / vid)) as writer:
                last = 0
                for point in sorted(curves.get(vid, []), key=lambda r: r.get("epoch", 0)):
                    epoch = int(point.get("epoch", 0))
                    last = max(last, epoch)
                    for key, value in point.items():
                        if key not in ("variant_id", "epoch", "step") and _is_scalar(value):
                            writer.add_scalar(f"curves/{key}", value, epoch)
                for key, value in run.items():
                    if key not in NOT_SCALARS and "." not in key and _is_scalar(value):
                        writer.add_scalar(f"final/{key}", value, last)
                knobs = {k: v for k, v in run.items() if "." in k or k in ("seed", "status")}
                table = "\n".join(f"| {k} | {v} |" for k, v in sorted(knobs.items()))
                writer.add_text("variant", f"| knob | value |\n|---|---|\n{table}", last)


def make_tracker(settings: TrackerSettings, results_dir: Path) -> PackCallback | None:
    if settings.kind is None:
        return None
    directory = Path(settings.dir) if settings.dir else results_dir / settings.kind
    return TensorBoardTracker(directory)
