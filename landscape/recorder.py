"""Measurements during training: a metric schedule, edge-of-stability sharpness tracking,
stiffness over training, parameter snapshots for trajectory PCA, and weight statistics.

The training loop (``landscape.train.train_pack``) calls a :class:`TrajectoryRecorder` at
the steps it asks for; the recorder measures the pack as it stands (pure functions of the
current parameters, their own seeded randomness, so training is not perturbed) and keeps
rows for the ``trajectory``, ``stiffness``, ``params``, ``path`` and ``surfaces`` tables.

- Schedule (Fort et al. 2019 follow stiffness from initialisation through training; Li et al.
  2018 project the optimiser's path): chosen epochs, or log-spaced steps; always including
  initialisation (step 0) and the end.
- Sharpness tracking (Cohen et al. 2021, "Gradient descent on neural networks typically occurs
  at the edge of stability"): the top Hessian eigenvalue every N steps by power iteration
  warm-started from the previous call's vector, with 2/lr alongside (the stability threshold
  of gradient descent on a quadratic) and :func:`stability_threshold`, the optimiser's own
  (2(1 + beta)/lr for SGD with heavy-ball momentum beta).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from landscape.functional import Params, Stack, flatten, member_shapes, unflatten
from landscape.metrics.hessian import hessian_eigenvalues
from landscape.metrics.lca import allocation_by_layer, lca_stacked
from landscape.metrics.local import measure_local
from landscape.metrics.registry import Metric, metric_names, register
from landscape.pack import TrainedPack
from landscape.variant import ConfigError, OptimSpec

if TYPE_CHECKING:
    from landscape.measure import MetricsSpec


@dataclass(frozen=True)
class TrajectorySpec:
    enabled: bool = False
    epochs: tuple[
        int, ...
    ] = ()  # measure at the end of these epochs (0 = initialisation); () = log-spaced
    log_points: int = (
        8  # log-spaced steps from 0 to the last step, both included, when epochs is ()
    )
    metrics: tuple[str, ...] = (
        "hessian_trace",
    )  # local metrics at each point (settings: metrics.<name>)
    sharpness_every: int = 0  # > 0: top Hessian eigenvalue every N steps (warm-started), with 2/lr
    sharpness_iters: int = 20  # power iterations per call (warm start: few suffice)
    sharpness_samples: int = 256  # one fixed training sample per member for the tracking
    snapshots: bool = (
        False  # keep parameters at each point: trajectory PCA (path table, pca surface)
    )
    pca_points: int = 11  # PCA-plane surface grid per axis (0: path only)
    pca_filter_normalize: bool = (
        False  # Li et al. plot raw PCA directions; True filter-normalises them
    )
    pca_samples: int = 512  # training examples the PCA-plane surface is evaluated on
    weights: bool = False  # per-layer weight norms and histograms at each point (params table)
    weight_bins: int = 50
    lca: bool = False  # loss change allocation of every step (Lan et al. 2019) into the lca table
    lca_window: int = 10  # steps summed per lca row
    lca_samples: int = (
        256  # one fixed training sample per member: the loss whose change is allocated
    )
    lca_rk4_intervals: int = 1  # Runge-Kutta (Simpson) sub-intervals per step

    def __post_init__(self) -> None:
        local = metric_names("local")
        unknown = set(self.metrics) - set(local)
        if unknown:
            raise ConfigError(
                f"metrics.trajectory.metrics must be a subset of {', '.join(local)}, got {sorted(unknown)}"
            )
        if self.log_points < 2:
            raise ConfigError(f"metrics.trajectory.log_points must be >= 2, got {self.log_points}")
        if any(e < 0 for e in self.epochs):
            raise ConfigError(f"metrics.trajectory.epochs must be >= 0, got {self.epochs}")
        for key in ("lca_window", "lca_samples", "lca_rk4_intervals"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"metrics.trajectory.{key} must be >= 1, got {getattr(self, key)}"
                )
        for key in ("sharpness_every", "pca_points", "pca_samples"):
            if getattr(self, key) < 0:
                raise ConfigError(
                    f"metrics.trajectory.{key} must be >= 0, got {getattr(self, key)}"
                )


register(
    Metric(
        name="trajectory",
        spec=TrajectorySpec,
        family="setting",
        order=121,
        hashed_when_off=True,
        tables=("trajectory", "stiffness", "params", "lca", "path", "surfaces"),
    )
)


def scheduled_steps(spec: TrajectorySpec, total_steps: int, steps_per_epoch: int) -> list[int]:
    """The steps measured: the chosen epochs' ends (clipped to training), or log-spaced steps;
    always 0 (initialisation) and ``total_steps`` (the end)."""
    if spec.epochs:
        points = {min(e * steps_per_epoch, total_steps) for e in spec.epochs}
    else:
        n = spec.log_points - 1
        points = (
            {round(math.exp(math.log(max(total_steps, 1)) * i / (n - 1))) for i in range(n)}
            if n > 1
            else set()
        )
    return sorted(points | {0, total_steps})


def stability_threshold(optim: OptimSpec, lr: float) -> float | None:
    """The largest top Hessian eigenvalue at which the optimiser is stable on a quadratic:
    2/lr for plain gradient descent, 2(1 + beta)/lr with heavy-ball momentum beta, and
    2(1 + beta)/(lr (1 + 2 beta)) with Nesterov's (Cohen et al. 2021, appendix on momentum;
    weight decay, being part of the update but not of the loss, shifts it by lr * wd and is
    left out). None for the adaptive optimisers, whose edge is one of the preconditioned
    Hessian (Cohen et al. 2022), and for a zero learning rate."""
    if optim.name != "sgd" or lr <= 0:
        return None
    beta = optim.momentum
    return 2 * (1 + beta) / (lr * (1 + 2 * beta)) if optim.nesterov else 2 * (1 + beta) / lr


@dataclass
class TrajectoryRecorder:
    """Observer of one pack's training. ``tables`` rows carry ``member`` (pack position)."""

    spec: TrajectorySpec
    metrics: MetricsSpec  # settings of the local metrics measured at each point
    seed: int
    total_steps: int
    steps_per_epoch: int
    tables: dict[str, list[dict]] = field(default_factory=dict)
    snapshots: list[tuple[int, Tensor]] = field(
        default_factory=list
    )  # (step, (K, P) flat params on CPU)
    _points: set[int] = field(init=False)
    _eig_vectors: Tensor | None = field(default=None, init=False)
    _eig_sample: tuple[Tensor, Tensor] | None = field(default=None, init=False)
    _lca_sample: tuple[Tensor, Tensor] | None = field(default=None, init=False)
    _lca_window: dict[str, Tensor] = field(
        default_factory=dict, init=False
    )  # layer -> (K,) running sum
    _lca_start: int = field(default=1, init=False)

    @property
    def records_lca(self) -> bool:
        return self.spec.lca

    def record_lca(self, step: int, before: Params, pack: TrainedPack) -> None:
        """Allocate step ``step``'s loss change (on a fixed sample) to layers; every
        ``lca_window`` steps (and at the end) the window's sums become rows."""
        if self._lca_sample is None:
            g = torch.Generator().manual_seed(self.seed + 29)
            self._lca_sample = pack.data.train_sample(self.spec.lca_samples, g)
        x, y = self._lca_sample
        alloc = lca_stacked(
            pack.net,
            Stack(before, pack.final.buffers),
            pack.final,
            x,
            y,
            rk4_intervals=self.spec.lca_rk4_intervals,
        )
        for layer, total in allocation_by_layer(alloc).items():
            self._lca_window[layer] = self._lca_window.get(layer, 0) + total
        if step % self.spec.lca_window == 0 or step == self.total_steps:
            alive = pack.alive.tolist()
            self._add(
                "lca",
                [
                    {
                        "member": k,
                        "step": self._lca_start,
                        "step_end": step,
                        "layer": layer,
                        "allocation": v,
                    }
                    for layer, values in self._lca_window.items()
                    for k, v in enumerate(values.tolist())
                    if alive[k]
                ],
            )
            self._lca_window, self._lca_start = {}, step + 1

    def __post_init__(self) -> None:
        self._points = set(scheduled_steps(self.spec, self.total_steps, self.steps_per_epoch))

    def wants(self, step: int) -> bool:
        every = self.spec.sharpness_every
        return step in self._points or (every > 0 and step % every == 0)

    def observe(self, step: int, pack: TrainedPack, lr: Tensor) -> None:
        epoch = step / self.steps_per_epoch
        lr_list = lr.tolist()
        if self.spec.sharpness_every > 0 and step % self.spec.sharpness_every == 0:
            self._track_sharpness(step, epoch, pack, lr_list)
        if step not in self._points:
            return
        base = [
            {"member": k, "step": step, "epoch": epoch, "lr": lr_list[k]}
            for k in range(len(pack.variants))
        ]
        if self.spec.metrics:
            enabled = {
                name: dataclasses.replace(
                    getattr(self.metrics, name), enabled=name in self.spec.metrics
                )
                for name in metric_names("local")
            }
            measured = measure_local(pack, enabled, torch.Generator().manual_seed(self.seed))
            for k, row in enumerate(base):
                row.update({name: values[k] for name, values in measured.columns.items()})
            for table, rows in measured.tables.items():  # stiffness matrices over training, ...
                self._add(table, [{**r, "step": step, "epoch": epoch} for r in rows])
        self._merge_trajectory(base)
        if self.spec.snapshots:
            self.snapshots.append(
                (step, flatten(pack.final.params, start=1).detach().float().cpu())
            )
        if self.spec.weights:
            from landscape.metrics.weights import weight_statistics

            rows = weight_statistics(pack.final, bins=self.spec.weight_bins)
            self._add("params", [{**r, "step": step, "epoch": epoch} for r in rows])

    def _track_sharpness(self, step: int, epoch: float, pack: TrainedPack, lr: list[float]) -> None:
        optims = [v.optim for v in pack.variants]
        if self._eig_sample is None:
            g = torch.Generator().manual_seed(self.seed + 17)
            self._eig_sample = pack.data.train_sample(self.spec.sharpness_samples, g)
        x, y = self._eig_sample
        device = next(iter(pack.final.params.values())).device
        est = hessian_eigenvalues(
            pack.net,
            pack.final,
            x,
            y,
            k=1,
            max_iter=self.spec.sharpness_iters,
            tol=1e-4,
            generator=torch.Generator(device).manual_seed(self.seed + 19),
            init=self._eig_vectors,
        )
        self._eig_vectors = est.vectors
        values = est.values[:, 0].tolist()
        rows = [
            {
                "member": k,
                "step": step,
                "epoch": epoch,
                "lr": lr[k],
                "sharpness": values[k],
                "two_over_lr": 2.0 / lr[k] if lr[k] > 0 else None,
                "stability_threshold": stability_threshold(optims[k], lr[k]),
            }
            for k in range(len(values))
        ]
        self._merge_trajectory(rows)

    def _merge_trajectory(self, rows: list[dict]) -> None:
        """One trajectory row per (member, step), whichever measurements made it."""
        existing = {(r["member"], r["step"]): r for r in self.tables.get("trajectory", [])}
        for row in rows:
            key = (row["member"], row["step"])
            if key in existing:
                existing[key].update(row)
            else:
                self._add("trajectory", [row])
                existing[key] = row

    def _add(self, table: str, rows: list[dict]) -> None:
        self.tables.setdefault(table, []).extend(rows)

    def finish(self, pack: TrainedPack) -> dict[str, list[dict]]:
        """The recorded tables, plus trajectory PCA of the snapshots when asked (Li et al. 2018)."""
        tables = {name: list(rows) for name, rows in self.tables.items()}
        if self.spec.snapshots and len(self.snapshots) >= 3:
            for table, rows in self._pca(pack).items():
                tables.setdefault(table, []).extend(rows)
        return tables

    def _pca(self, pack: TrainedPack) -> dict[str, list[dict]]:
        """Per alive member: PCA of its snapshots around the end, the projected path, and the
        loss surface on the plane of the two leading directions (Li et al. 2018, section 7)."""
        from landscape.metrics.trajectory import pca_path_rows, pca_surface, trajectory_pca

        shapes = member_shapes(pack.final.params)
        steps = [step for step, _ in self.snapshots]
        x, y = pack.data.train_sample(
            self.spec.pca_samples, torch.Generator().manual_seed(self.seed + 23)
        )
        tables: dict[str, list[dict]] = {"path": [], "surfaces": []}
        for k in pack.alive.nonzero().flatten().tolist():
            snaps = unflatten(torch.stack([flat[k] for _, flat in self.snapshots]), shapes)
            final = {n: p[k].detach().float().cpu() for n, p in pack.final.params.items()}
            try:
                pca = trajectory_pca(
                    snaps,
                    final,
                    n_components=2,
                    filter_normalize_pca=self.spec.pca_filter_normalize,
                )
            except ValueError:  # a path that spans fewer than two dimensions has no plane
                continue
            for row in pca_path_rows(pca, member=k):
                row["step"] = steps[row.pop("snapshot")]
                tables["path"].append(row)
            if self.spec.pca_points > 0:
                device = next(iter(pack.final.params.values())).device
                pca.directions = [
                    {n: d.to(device) for n, d in direction.items()} for direction in pca.directions
                ]
                tables["surfaces"] += pca_surface(
                    pack.net,
                    pack.final.member(k),
                    pca,
                    x[k : k + 1],
                    y[k : k + 1],
                    points=self.spec.pca_points,
                    member=k,
                )
        return {name: rows for name, rows in tables.items() if rows}
