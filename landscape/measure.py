"""Which metrics to compute on a trained pack, and the one call that computes them.

:class:`MetricsSpec` is hashed apart from the variants (``metrics_id``): adding a metric
renames no trained model. It is built from the metric registry
(``landscape.metrics.registry``): one field per registered metric, flat, as in the config
(``metrics.hessian_trace.n_probes``, ``metrics.cka.inputs``, ``metrics.bezier.epochs``).
``measure_pack`` returns per-member columns for ``runs`` and rows for the metrics' own
tables (``spectra``, ``stiffness``, ``lr_range``, ``pairs``, ``surfaces``, ``params``,
``reparam``), members indexed by their position in the pack.

Randomness comes from ``MetricsSpec.seed`` alone (and, for per-member sample draws, each
member's own seed), never from the pack's composition: a member measured in any pack gets
the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.metrics.local import measure_local
from landscape.metrics.pairs import measure_member_surfaces, measure_pairs
from landscape.metrics.registry import metrics
from landscape.pack import TrainedPack
from landscape.recorder import TrajectoryRecorder
from landscape.variant import ConfigError


class _MetricsSettings:
    """What ``MetricsSpec`` is besides its fields (which the registry gives)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"metrics.seed must be an integer >= 0, got {self.seed!r}")
        for key in ("max_pairs", "eval_chunk", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"metrics.{key} must be an integer >= 1, got {getattr(self, key)!r}"
                )

    def local_specs(self) -> dict[str, Any]:
        """Settings of every local metric by name (what ``measure_local`` takes)."""
        return {m.name: getattr(self, m.name) for m in metrics("local")}

    def recorder(self, total_steps: int, steps_per_epoch: int) -> TrajectoryRecorder | None:
        """The observer the training loop calls, or None when nothing is measured during training."""
        if not self.trajectory.enabled:
            return None
        return TrajectoryRecorder(self.trajectory, self, self.seed, total_steps, steps_per_epoch)

    def uses(self, name: str) -> bool:
        """Whether the settings of metric ``name`` shape any measurement: it is switched on, or
        it is a local metric measured during training (``trajectory.metrics``)."""
        during_training = self.trajectory.enabled and name in self.trajectory.metrics
        return getattr(self, name).enabled or during_training

    def runs_pass(self, name: str) -> bool:
        """Whether any enabled global metric is read by the pass ``name`` (registry.PASSES)."""
        return any(getattr(self, m.name).enabled for m in metrics("global") if name in m.passes)

    @property
    def any_pairs(self) -> bool:
        return self.runs_pass("pairs")

    @property
    def any_member_surfaces(self) -> bool:
        return self.runs_pass("member_surfaces")


def _metric_field(metric) -> tuple[str, type, dataclasses.Field]:
    """A metric's field of MetricsSpec: its settings at their defaults, switched on or off as
    the registry says for ``MetricsSpec()``."""
    spec = metric.spec
    if spec().enabled == metric.on_by_default:
        return metric.name, spec, field(default_factory=spec)
    on = metric.on_by_default
    return metric.name, spec, field(default_factory=lambda: spec(enabled=on))


# The settings every measuring pass shares, before the metrics' own fields.
_SHARED = [
    ("preset", str, field(default="fast")),
    # seeds every sample draw, probe vector and random direction
    ("seed", int, field(default=0)),
    # pairs per replicate group (5 seeds -> all 10, as Yang et al.); a seeded subset beyond
    ("max_pairs", int, field(default=10)),
    # parameter sets evaluated at once (surface grid points x models)
    ("eval_chunk", int, field(default=64)),
    # examples per forward pass of those evaluations
    ("eval_batch_size", int, field(default=512)),
]

MetricsSpec = dataclasses.make_dataclass(
    "MetricsSpec",
    [*_SHARED, *(_metric_field(m) for m in metrics())],
    bases=(_MetricsSettings,),
    frozen=True,
)
MetricsSpec.__module__ = __name__  # where pickle (Ray, the process pool) finds the class
MetricsSpec.__doc__ = """Every metric's settings, one field per registered metric
(``landscape.metrics.registry``, in its order) after the shared ones (preset, seed,
max_pairs, eval_chunk, eval_batch_size). The defaults are the ``fast`` preset's: the Hutchinson
trace (and BatchNorm recomputation, should a path be measured); ``conf/metrics/*.yaml``
switch the others on."""


def base_settings() -> dict[str, Any]:
    """Every setting at its default with every metric switched off, as plain data: the
    ``metrics/base`` config node every preset starts from (``preset: base``)."""
    plain = dataclasses.asdict(MetricsSpec(preset="base"))
    for m in metrics():
        plain[m.name]["enabled"] = False
    return _lists(plain)


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively (as a config file writes them)."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


@dataclass
class Measured:
    columns: dict[str, list] = field(default_factory=dict)  # name -> one value per member
    tables: dict[str, list[dict]] = field(
        default_factory=dict
    )  # rows carry member / member_a / member_b


def replicate_groups(pack: TrainedPack) -> list[list[int]]:
    """Member indices of each replicate group in the pack (same point, different seeds)."""
    groups: dict[str, list[int]] = {}
    for k, v in enumerate(pack.variants):
        groups.setdefault(v.group_id, []).append(k)
    return list(groups.values())


def _smaller_global(spec: MetricsSpec) -> MetricsSpec | None:
    """Settings with every memory bound of the global passes halved (parameter sets and
    examples per forward pass, curves per stack), or None when all are 1: they bound memory,
    not results."""
    bezier = spec.bezier
    changes = {k: max(1, getattr(spec, k) // 2) for k in ("eval_chunk", "eval_batch_size")}
    if bezier.pairs_per_stack > 1:
        bezier = dataclasses.replace(bezier, pairs_per_stack=bezier.pairs_per_stack // 2)
    smaller = dataclasses.replace(spec, **changes, bezier=bezier)
    return None if smaller == spec else smaller


def _guarded_global(
    name: str,
    members: list[int],
    errors: list[list[str]],
    measure: Callable[[MetricsSpec | None], object],
    specs: MetricsSpec | None,
    log: Callable[[str], None],
) -> object | None:
    """``measure(specs)``, again with smaller memory bounds while it runs out of device memory
    (when ``specs`` has any to halve); None, and the error recorded for ``members``, when it
    still fails or fails otherwise."""
    while True:
        try:
            return measure(specs)
        except torch.OutOfMemoryError as exc:
            error = f"OutOfMemoryError: {str(exc).splitlines()[0] if str(exc) else ''}"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            smaller = None if specs is None else _smaller_global(specs)
            if smaller is None:
                break
            log(f"{name} ran out of device memory; again with chunk {smaller.eval_chunk}")
            specs = smaller
        except Exception as exc:  # noqa: BLE001 - failure is data: the error goes into the rows
            error = f"{type(exc).__name__}: {exc}"
            break
    log(f"metric {name} failed: {error}")
    for k in members:
        errors[k].append(f"{name}: {error}")
    return None


def measure_pack(
    pack: TrainedPack, spec: MetricsSpec, log: Callable[[str], None] = lambda msg: None
) -> Measured:
    """Every enabled metric on the pack's checkpoint; diverged members get None.

    Never raises for a metric: one that runs out of device memory runs again with smaller
    chunks (a local metric then on fewer members at a time), and one that still fails leaves
    None in its columns and ``<metric>: <error>`` in the ``metric_errors`` column of the
    members it concerns; the other metrics still run."""
    out = Measured()
    local = measure_local(
        pack, spec.local_specs(), torch.Generator().manual_seed(spec.seed), log=log
    )
    out.columns.update(local.columns)
    out.tables.update(local.tables)
    errors = local.errors
    everyone = list(range(len(pack.variants)))
    surfaces: list[dict] = []
    if spec.any_pairs:
        groups = replicate_groups(pack)
        pairs = _guarded_global(
            "pairs",
            everyone,
            errors,
            lambda g: measure_pairs(pack, groups, g, torch.Generator().manual_seed(spec.seed + 1)),
            spec,
            log,
        )
        if pairs is not None:
            for row in pairs.rows:
                row["group_id"] = pack.variants[row["member_a"]].group_id
            if pairs.rows:
                out.tables["pairs"] = pairs.rows
            surfaces += pairs.surfaces
    if spec.any_member_surfaces:
        member = _guarded_global(
            "member_surfaces",
            everyone,
            errors,
            lambda g: measure_member_surfaces(
                pack, g, torch.Generator().manual_seed(spec.seed + 2)
            ),
            spec,
            log,
        )
        if member is not None:
            out.columns.update(member.columns)
            surfaces += member.surfaces
    if surfaces:
        out.tables["surfaces"] = surfaces
    for m in metrics("pack"):
        settings = getattr(spec, m.name)
        if settings.enabled:
            rows = _guarded_global(
                m.name,
                everyone,
                errors,
                lambda _, m=m, settings=settings: m.measure(pack, settings, spec.seed),
                None,
                log,
            )
            if rows is not None:
                out.tables[m.tables[0]] = rows
    out.columns["metric_errors"] = ["; ".join(e) if e else None for e in errors]
    return out


def measure_given_pairs(
    pack: TrainedPack, spec: MetricsSpec, pairs: list[tuple[int, int]]
) -> Measured:
    """The pair metrics of ``spec`` (distance, CKA, barrier, Bezier) for the given pairs of
    members only: ``pairs`` rows (with ``group_id``) and their ``surfaces`` rows. For pairs
    whose members were trained apart (see ``sweeps``: the group pass from checkpoints)."""
    out = Measured()
    if not spec.any_pairs or not pairs:
        return out
    result = measure_pairs(
        pack, [], spec, torch.Generator().manual_seed(spec.seed + 1), pairs=pairs
    )
    for row in result.rows:
        row["group_id"] = pack.variants[row["member_a"]].group_id
    if result.rows:
        out.tables["pairs"] = result.rows
    if result.surfaces:
        out.tables["surfaces"] = result.surfaces
    return out
