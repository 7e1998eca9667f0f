"""Which metrics to compute on a trained pack, and the one call that computes them.

:class:`MetricsSpec` is hashed apart from the variants (``metrics_id``): adding a metric
renames no trained model. Its fields are the metric families, flat, as in the config
(``metrics.hessian_trace.n_probes``, ``metrics.cka.inputs``, ``metrics.bezier.epochs``).
``measure_pack`` returns per-member columns for ``runs`` and rows for the metrics' own
tables (``spectra``, ``stiffness``, ``lr_range``, ``pairs``, ``surfaces``), members indexed
by their position in the pack.

Randomness comes from ``MetricsSpec.seed`` alone (and, for per-member sample draws, each
member's own seed), never from the pack's composition: a member measured in any pack gets
the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from landscape.cross import CrossPairSpec
from landscape.metrics.local import (
    GradientStatsSpec,
    HessianEigenSpec,
    HessianTraceSpec,
    LocalMetricSpecs,
    LRRangeSpec,
    SharpnessSpec,
    SpectrumSpec,
    StiffnessSpec,
    measure_local,
)
from landscape.metrics.pairs import (
    BarrierSpec,
    BatchNormSpec,
    BezierSpec,
    CKASpec,
    DistanceSpec,
    GlobalMetricSpecs,
    MLISpec,
    SurfaceSpec,
    measure_member_surfaces,
    measure_pairs,
)
from landscape.metrics.reparam import (
    ReparamSpec,
    find_relu_pairs,
    probe_metrics,
    reparam_rows,
    reparametrisation_probe,
)
from landscape.metrics.weights import WeightsSpec, weight_statistics
from landscape.pack import TrainedPack
from landscape.recorder import TrajectoryRecorder, TrajectorySpec
from landscape.variant import ConfigError

LOCAL_FIELDS = tuple(f.name for f in dataclasses.fields(LocalMetricSpecs))
GLOBAL_FIELDS = ("distance", "cka", "barrier", "bezier", "mli", "surface", "batch_norm")


def _off(spec_cls: type) -> object:
    return spec_cls(enabled=False)


@dataclass(frozen=True)
class MetricsSpec:
    """Every metric family's settings. The dataclass defaults are the ``fast`` preset's: the
    Hutchinson trace only; ``conf/metrics/*.yaml`` switch the others on."""

    preset: str = "fast"
    seed: int = 0  # seeds every sample draw, probe vector and random direction
    # local geometry, one model at a time (landscape.metrics.local)
    hessian_trace: HessianTraceSpec = field(default_factory=HessianTraceSpec)
    hessian_eigen: HessianEigenSpec = field(default_factory=lambda: _off(HessianEigenSpec))
    spectrum: SpectrumSpec = field(default_factory=lambda: _off(SpectrumSpec))
    sharpness: SharpnessSpec = field(default_factory=lambda: _off(SharpnessSpec))
    gradient_stats: GradientStatsSpec = field(default_factory=lambda: _off(GradientStatsSpec))
    stiffness: StiffnessSpec = field(default_factory=lambda: _off(StiffnessSpec))
    lr_range: LRRangeSpec = field(default_factory=lambda: _off(LRRangeSpec))
    # global geometry: between seeds of a replicate group, and toward initialisation
    distance: DistanceSpec = field(default_factory=lambda: _off(DistanceSpec))
    cka: CKASpec = field(default_factory=lambda: _off(CKASpec))
    barrier: BarrierSpec = field(default_factory=lambda: _off(BarrierSpec))
    bezier: BezierSpec = field(default_factory=lambda: _off(BezierSpec))
    mli: MLISpec = field(default_factory=lambda: _off(MLISpec))
    surface: SurfaceSpec = field(default_factory=lambda: _off(SurfaceSpec))
    batch_norm: BatchNormSpec = field(default_factory=BatchNormSpec)  # BN recomputation along paths
    max_pairs: int = 10  # pairs per replicate group (5 seeds -> all 10, as Yang et al.)
    eval_chunk: int = 64  # parameter sets evaluated at once (surface grid points x models)
    eval_batch_size: int = 512  # examples per forward pass of those evaluations
    weights: WeightsSpec = field(default_factory=WeightsSpec)  # params table
    reparam: ReparamSpec = field(default_factory=ReparamSpec)  # reparam table (MLPs)
    cross: CrossPairSpec = field(
        default_factory=CrossPairSpec
    )  # between sweep points, after training
    # during training: a metric schedule, sharpness tracking, snapshots (landscape.recorder)
    trajectory: TrajectorySpec = field(default_factory=TrajectorySpec)

    def __post_init__(self) -> None:
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"metrics.seed must be an integer >= 0, got {self.seed!r}")
        for key in ("max_pairs", "eval_chunk", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"metrics.{key} must be an integer >= 1, got {getattr(self, key)!r}"
                )

    def local_specs(self) -> LocalMetricSpecs:
        return LocalMetricSpecs(**{name: getattr(self, name) for name in LOCAL_FIELDS})

    def global_specs(self) -> GlobalMetricSpecs:
        return GlobalMetricSpecs(
            **{name: getattr(self, name) for name in GLOBAL_FIELDS},
            max_pairs=self.max_pairs,
            chunk=self.eval_chunk,
            batch_size=self.eval_batch_size,
        )

    def recorder(self, total_steps: int, steps_per_epoch: int) -> TrajectoryRecorder | None:
        """The observer the training loop calls, or None when nothing is measured during training."""
        if not self.trajectory.enabled:
            return None
        return TrajectoryRecorder(
            self.trajectory, self.local_specs(), self.seed, total_steps, steps_per_epoch
        )

    @property
    def any_pairs(self) -> bool:
        return any(getattr(self, n).enabled for n in ("distance", "cka", "barrier", "bezier"))

    @property
    def any_member_surfaces(self) -> bool:
        return self.mli.enabled or self.surface.enabled or self.distance.enabled


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


def _smaller_global(specs: GlobalMetricSpecs) -> GlobalMetricSpecs | None:
    """Global settings with every memory bound halved (parameter sets and examples per forward
    pass, curves per stack), or None when all are 1: they bound memory, not results."""
    bezier = specs.bezier
    changes = {k: max(1, getattr(specs, k) // 2) for k in ("chunk", "batch_size")}
    if bezier.pairs_per_stack > 1:
        bezier = dataclasses.replace(bezier, pairs_per_stack=bezier.pairs_per_stack // 2)
    smaller = dataclasses.replace(specs, **changes, bezier=bezier)
    return None if smaller == specs else smaller


def _guarded_global(
    name: str,
    members: list[int],
    errors: list[list[str]],
    measure: Callable[[GlobalMetricSpecs | None], object],
    specs: GlobalMetricSpecs | None,
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
            log(f"{name} ran out of device memory; again with chunk {smaller.chunk}")
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
            spec.global_specs(),
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
            spec.global_specs(),
            log,
        )
        if member is not None:
            out.columns.update(member.columns)
            surfaces += member.surfaces
    if surfaces:
        out.tables["surfaces"] = surfaces
    if spec.weights.enabled:
        params = _guarded_global(
            "weights", everyone, errors,
            lambda _: weight_statistics(pack.final, bins=spec.weights.bins), None, log,
        )  # fmt: skip
        if params is not None:
            out.tables["params"] = params
    if spec.reparam.enabled:
        rows = _guarded_global(
            "reparam", everyone, errors, lambda _: _reparam(pack, spec), None, log
        )
        if rows is not None:
            out.tables["reparam"] = rows
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
        pack, [], spec.global_specs(), torch.Generator().manual_seed(spec.seed + 1), pairs=pairs
    )
    for row in result.rows:
        row["group_id"] = pack.variants[row["member_a"]].group_id
    if result.rows:
        out.tables["pairs"] = result.rows
    if result.surfaces:
        out.tables["surfaces"] = result.surfaces
    return out


def _reparam(pack: TrainedPack, spec: MetricsSpec) -> list[dict]:
    """Dinh et al.'s probe on the alive members; a model without a ReLU pair gets no rows."""
    try:
        find_relu_pairs(pack.net.module)
    except ValueError:
        return []
    alive = pack.alive.nonzero().flatten().tolist()
    if not alive:
        return []
    stack = pack.final.select(alive)
    x, y = pack.data.train_sample(
        spec.reparam.n_samples, torch.Generator().manual_seed(spec.seed + 3)
    )
    x, y = x[alive], y[alive]
    metrics = probe_metrics(pack.net, x, y, spec.reparam, seed=spec.seed + 4)
    probe = reparametrisation_probe(pack.net, stack, x, alpha=spec.reparam.alpha, metrics=metrics)
    return reparam_rows(probe, members=alive)
