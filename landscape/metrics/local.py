"""Local landscape metrics of a trained pack: settings, and the one call that measures them.

Each metric family has a frozen settings dataclass with an ``enabled`` switch and
documented defaults; :class:`LocalMetricSpecs` gathers them. :func:`measure_local` runs every
enabled metric on the pack's checkpoint for the members still alive and returns

- ``columns``: column name -> one value per member (None for a diverged member), for ``runs``;
- ``tables``: ``spectra`` (member, eigenvalue, density), ``stiffness`` (member, class_a,
  class_b, s_cos, s_sign) and ``lr_range`` (member, step, lr, loss); ``member`` is the index
  in the pack (the caller maps it to ``variant_id``).

Randomness: one seed per metric is drawn from the caller's generator in a fixed order, so
switching one metric on or off changes no other metric's sample or probes. Each metric
draws its own sample (training data, test data for stiffness) with that seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from landscape.hvp import HVP_MODES
from landscape.metrics.gradients import fisher_trace, flatness_ratio, gradient_stats
from landscape.metrics.hessian import hessian_density, hessian_eigenvalues, hessian_trace
from landscape.metrics.lr_range import lr_range_rows, lr_range_test
from landscape.metrics.sharpness import (
    NORMS,
    adaptive_sharpness_average,
    adaptive_sharpness_worst,
    epsilon_sharpness,
)
from landscape.metrics.stiffness import class_stiffness, stiffness_rows
from landscape.metrics.stiffness_distance import stiffness_by_distance, stiffness_distance_rows
from landscape.optim import MemberHypers
from landscape.pack import PackData, TrainedPack, free_device_memory, hvp_bytes
from landscape.variant import ConfigError


def _check(
    spec: object, prefix: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()
) -> None:
    for name in positive:
        value = getattr(spec, name)
        if not 0 < value < math.inf:
            raise ConfigError(f"metrics.{prefix}.{name} must be finite and > 0, got {value!r}")
    for name in non_negative:
        value = getattr(spec, name)
        if not 0 <= value < math.inf:
            raise ConfigError(f"metrics.{prefix}.{name} must be finite and >= 0, got {value!r}")


def _check_hvp(value: str, prefix: str) -> None:
    allowed = ("auto", *HVP_MODES)
    if value not in allowed:
        raise ConfigError(
            f"metrics.{prefix}.hvp must be one of {', '.join(allowed)}, got {value!r}"
        )


@dataclass(frozen=True)
class HessianTraceSpec:
    """Hutchinson trace. Yang et al. (2021) used 100 probes on one batch of 200 training
    samples; PyHessian's maintainer warns 200 samples is noisy, so our sample is larger."""

    enabled: bool = True
    n_samples: int = 512  # training examples per member
    n_probes: int = 100  # Yang et al., PyHessian
    tol: float = 1e-3  # stop a member once its standard error <= tol * |estimate| (PyHessian's tol)
    chunk: int = 10  # probes per call: the memory bound (vmap: chunk * K HVPs at once)
    min_probes: int = 10  # never stop before this many probes
    hvp: str = "auto"  # how Hessian-vector products are computed (landscape.hvp.resolve_hvp)

    def __post_init__(self) -> None:
        _check(self, "hessian_trace", ("n_samples", "n_probes", "chunk", "min_probes"), ("tol",))
        _check_hvp(self.hvp, "hessian_trace")


@dataclass(frozen=True)
class HessianEigenSpec:
    """Top-k Hessian eigenvalues by power (subspace) iteration; PyHessian: 100 iterations,
    tol 1e-3, top_n 1. Yang et al. report the top eigenvalue."""

    enabled: bool = True
    n_samples: int = 512
    k: int = 1  # columns hessian_top_eig, hessian_eig_2, ..., hessian_eig_k
    max_iter: int = 100
    tol: float = 1e-3  # relative change of every Ritz value between iterations
    hvp: str = "auto"  # how Hessian-vector products are computed (landscape.hvp.resolve_hvp)

    def __post_init__(self) -> None:
        _check(self, "hessian_eigen", ("n_samples", "k", "max_iter"), ("tol",))
        _check_hvp(self.hvp, "hessian_eigen")


@dataclass(frozen=True)
class SpectrumSpec:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019); PyHessian's
    ``density(iter=100, n_v=1)`` with Gaussian broadening sigma^2 = 1e-5 (times the spectrum's
    width when wider than 1). Off by default: it writes n_grid rows per member."""

    enabled: bool = False
    n_samples: int = 512
    n_iter: int = 100  # Lanczos steps (memory: K * n_v * n_iter * P numbers)
    n_v: int = 1  # independent Lanczos runs, averaged
    n_grid: int = 1000  # grid points per member (PyHessian uses 10,000)
    sigma2: float = 1e-5
    hvp: str = "auto"  # how Hessian-vector products are computed (landscape.hvp.resolve_hvp)

    def __post_init__(self) -> None:
        _check(self, "spectrum", ("n_samples", "n_iter", "n_v", "n_grid", "sigma2"))
        _check_hvp(self.hvp, "spectrum")


@dataclass(frozen=True)
class SharpnessSpec:
    """epsilon-sharpness (Keskar et al. 2017) and adaptive worst/average-case sharpness
    (Andriushchenko et al. 2023: 1024 samples, 20 iterations, CIFAR-10 ResNet-18 grids)."""

    enabled: bool = True
    n_samples: int = 1024
    batch_size: int = 0  # 0: one ascent on the whole sample; > 0: m-sharpness (their runs: 128)
    eps: float = 1e-3  # Keskar et al.'s box radius (relative, |w| + 1)
    steps: int = 20  # projected-ascent steps (both worst cases)
    worst_rho: float = 0.002  # adaptive l_p radius; their l_inf grid: 0.001 .. 0.008
    worst_p: str = "inf"  # "inf" or "2"
    avg_rho: float = 0.1  # adaptive Gaussian scale; their grid: 0.05 .. 0.4
    n_draws: int = 20  # Monte Carlo draws for the average case
    chunk: int = 10  # draws per vmapped batch

    def __post_init__(self) -> None:
        _check(
            self,
            "sharpness",
            ("n_samples", "steps", "n_draws", "chunk"),
            ("batch_size", "eps", "worst_rho", "avg_rho"),
        )
        if self.worst_p not in NORMS:
            raise ConfigError(
                f"metrics.sharpness.worst_p must be one of {', '.join(NORMS)}, got {self.worst_p!r}"
            )


@dataclass(frozen=True)
class GradientStatsSpec:
    """Empirical Fisher trace, gradient diversity, minibatch gradient agreement and the
    flatness ratio. Minibatches default to the pack's training batch size (the noise SGD
    saw), capped at half the sample so that there are at least two."""

    enabled: bool = True
    n_samples: int = 1024
    batch_size: int = 0  # 0: the pack's optim.batch_size
    chunk: int = 8  # minibatch gradients per vmapped batch
    fisher_chunk: int = 32  # per-example gradients per vmapped batch
    flatness: bool = True  # also the flatness ratio (power iterations per minibatch)
    flatness_batches: int = 4  # minibatches whose top eigenvalues are averaged
    max_iter: int = 100  # power iteration, as HessianEigenSpec
    tol: float = 1e-3

    def __post_init__(self) -> None:
        _check(
            self,
            "gradient_stats",
            ("n_samples", "chunk", "fisher_chunk", "flatness_batches", "max_iter"),
            ("batch_size", "tol"),
        )


@dataclass(frozen=True)
class StiffnessSpec:
    """Class stiffness (Fort et al. 2019) on held-out data. Off by default: it holds an
    n x n Gram matrix per member and recomputes per-example gradients blockwise."""

    enabled: bool = False
    n_samples: int = 512  # test examples (shared by the members)
    chunk: int = 32  # per-example gradients per block
    distance_bins: int = (
        0  # > 0: also stiffness against input-space distance, pairs in this many bins
    )
    distance_binning: str = "quantile"  # quantile | linear bin edges (shared by the members)

    def __post_init__(self) -> None:
        _check(self, "stiffness", ("n_samples", "chunk"), ("distance_bins",))
        if self.distance_binning not in ("quantile", "linear"):
            raise ConfigError(
                f"metrics.stiffness.distance_binning must be quantile or linear, got {self.distance_binning!r}"
            )


@dataclass(frozen=True)
class LRRangeSpec:
    """Learning-rate range test (Smith 2017), exponential as fastai's lr_find. Off by
    default: it trains a copy of every member for ``steps`` steps."""

    enabled: bool = False
    lr_min: float = 1e-6
    lr_max: float = 10.0
    steps: int = 200
    batch_size: int = 0  # 0: the pack's optim.batch_size
    # stop a member once its loss exceeds max(this x its best, ln C): lr_range module docstring
    stop_factor: float = 4.0

    def __post_init__(self) -> None:
        _check(self, "lr_range", ("lr_min", "lr_max", "steps", "stop_factor"), ("batch_size",))
        if not self.lr_min < self.lr_max:
            raise ConfigError(
                "metrics.lr_range.lr_min must be < metrics.lr_range.lr_max, "
                f"got {self.lr_min} and {self.lr_max}"
            )


@dataclass(frozen=True)
class LocalMetricSpecs:
    hessian_trace: HessianTraceSpec = field(default_factory=HessianTraceSpec)
    hessian_eigen: HessianEigenSpec = field(default_factory=HessianEigenSpec)
    spectrum: SpectrumSpec = field(default_factory=SpectrumSpec)
    sharpness: SharpnessSpec = field(default_factory=SharpnessSpec)
    gradient_stats: GradientStatsSpec = field(default_factory=GradientStatsSpec)
    stiffness: StiffnessSpec = field(default_factory=StiffnessSpec)
    lr_range: LRRangeSpec = field(default_factory=LRRangeSpec)


# The order seeds are drawn in: fixed, so a metric's randomness does not depend on the others.
SEED_ORDER = tuple(f.name for f in dataclasses.fields(LocalMetricSpecs))


@dataclass
class LocalResult:
    columns: dict[str, list[float | None]] = field(default_factory=dict)  # one value per member
    tables: dict[str, list[dict]] = field(default_factory=dict)  # rows carry ``member``
    # per member, the metrics that failed on it: "<metric>: <error>" (none: an empty list)
    errors: list[list[str]] = field(default_factory=list)


class _Measurer:
    """The alive members of a pack (or of a part of it, when a metric runs out of memory), and
    how to write their values back per pack member. Parts share the pack's per-metric seeds
    and the one result."""

    def __init__(
        self,
        pack: TrainedPack,
        generator: torch.Generator | None,
        members: list[int] | None = None,
        parent: _Measurer | None = None,
    ):
        self.pack = pack
        self.K = len(pack.variants)
        self.alive = pack.alive.nonzero().flatten().tolist() if members is None else members
        self.stack = pack.final.select(self.alive)
        self.device = next(iter(pack.final.params.values())).device
        if parent is None:
            seeds = torch.randint(
                0, 2**62, (len(SEED_ORDER),), generator=generator, device=generator.device
            )
            self.seeds = dict(zip(SEED_ORDER, seeds.tolist()))
            self.result = LocalResult(errors=[[] for _ in range(self.K)])
        else:
            self.seeds, self.result = parent.seeds, parent.result

    def part(self, members: list[int]) -> _Measurer:
        """The same measurer over some of its members."""
        return _Measurer(self.pack, None, members, parent=self)

    def generators(self, metric: str) -> tuple[torch.Generator, torch.Generator]:
        """(sample generator on the CPU, probe generator on the pack's device) for a metric."""
        seed = self.seeds[metric]
        return torch.Generator().manual_seed(seed), torch.Generator(self.device).manual_seed(
            seed + 1
        )

    def train_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.pack.data.train_sample(n, generator)
        return self._alive(x), self._alive(y)

    def test_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.pack.data.test_sample(n, generator)
        return self._alive(x), self._alive(y)

    def _alive(self, t: Tensor) -> Tensor:
        return t[torch.as_tensor(self.alive, device=t.device)]

    def column(self, name: str, values: Tensor | list) -> None:
        """One value per measured member; other members keep what they have (None at first)."""
        out = self.result.columns.setdefault(name, [None] * self.K)
        if isinstance(values, Tensor):
            cast = float if values.is_floating_point() else int
            values = [cast(v) for v in values.tolist()]
        for k, v in zip(self.alive, values):
            out[k] = v

    def table(self, name: str, rows: list[dict]) -> None:
        self.result.tables.setdefault(name, []).extend(rows)

    def fail(self, name: str, spec: object, error: str) -> None:
        """The metric failed on these members: None in its columns, the error recorded."""
        for c in metric_columns(name, spec):
            self.column(c, [None] * len(self.alive))
        for k in self.alive:
            self.result.errors[k].append(f"{name}: {error}")

    def batch_size(self, requested: int) -> int:
        return requested or self.pack.variants[0].optim.batch_size

    def probe_chunk(self, chunk: int, n: int) -> int:
        """Probes per call of a Hessian-vector-product metric on ``n`` examples: ``chunk``, or
        on a CUDA device fewer when ``chunk`` products for every member would not fit in
        :data:`MEMORY_HEADROOM` of the free memory (``landscape.pack.hvp_bytes``; at least 1,
        and :func:`run_guarded` halves it again if the estimate was short)."""
        if self.device.type != "cuda":
            return chunk
        free = free_device_memory(self.device)
        data = self.pack.data
        v = self.pack.variants[0]
        per = hvp_bytes(v, tuple(data.x_train.shape[1:]), data.num_classes, n)
        return max(1, min(chunk, int(MEMORY_HEADROOM * free // (per * len(self.alive)))))


# Share of the free device memory a metric plans to use (the estimates are rough).
MEMORY_HEADROOM = 0.7

# Settings that bound how much a metric computes at once, never what it computes: halved when
# the metric runs out of device memory (down to 1), before its members are split.
CHUNK_FIELDS = ("chunk", "fisher_chunk")


def smaller_chunks(spec: object) -> object | None:
    """``spec`` with every chunk setting halved, or None when all are already 1."""
    changes = {
        f: max(1, getattr(spec, f) // 2)
        for f in CHUNK_FIELDS
        if hasattr(spec, f) and getattr(spec, f) > 1
    }
    return dataclasses.replace(spec, **changes) if changes else None


def run_guarded(
    m: _Measurer, name: str, spec: object, step: Callable[..., None], log: Callable[[str], None]
) -> None:
    """One metric on the measurer's members, never raising: out of device memory it runs again
    with halved chunks, then on each half of its members, down to one member with chunks of
    one; any other error (or running out of memory even then) leaves None in the metric's
    columns and the error in ``errors``. Training is never repeated for it."""
    try:
        step(m, spec, *m.generators(name))
        return
    except torch.OutOfMemoryError as exc:
        error = f"OutOfMemoryError: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}"
    except Exception as exc:  # noqa: BLE001 - failure is data: the error goes into the row
        log(f"metric {name} failed on members {m.alive}: {type(exc).__name__}: {exc}")
        m.fail(name, spec, f"{type(exc).__name__}: {exc}")
        return
    _free_device_memory(m.device)
    smaller = smaller_chunks(spec)
    if smaller is not None:
        log(f"metric {name} ran out of device memory; again with chunks {_chunks(smaller)}")
        run_guarded(m, name, smaller, step, log)
    elif len(m.alive) > 1:
        half = len(m.alive) // 2
        log(f"metric {name} ran out of device memory; again on {half} members at a time")
        for members in (m.alive[:half], m.alive[half:]):
            run_guarded(m.part(members), name, spec, step, log)
    else:
        m.fail(name, spec, error)


def _chunks(spec: object) -> dict[str, int]:
    return {f: getattr(spec, f) for f in CHUNK_FIELDS if hasattr(spec, f)}


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_local(
    pack: TrainedPack,
    specs: LocalMetricSpecs,
    generator: torch.Generator,
    log: Callable[[str], None] = lambda msg: None,
) -> LocalResult:
    """Every enabled local metric of ``specs`` on the pack's checkpoint (eval mode unless the
    metric trains). Diverged members (``pack.alive`` False) are skipped and get None. A metric
    that fails leaves None in its columns and its error in ``errors`` (:func:`run_guarded`);
    the others still run."""
    m = _Measurer(pack, generator)
    steps = {
        "hessian_trace": _trace,
        "hessian_eigen": _eigen,
        "spectrum": _spectrum,
        "sharpness": _sharpness,
        "gradient_stats": _gradient_stats,
        "stiffness": _stiffness,
        "lr_range": _lr_range,
    }
    for name in SEED_ORDER:
        spec = getattr(specs, name)
        if spec.enabled:
            if not m.alive:
                _all_dead(m, name, spec)
            else:
                run_guarded(m, name, spec, steps[name], log)
    return m.result


def _trace(
    m: _Measurer, s: HessianTraceSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    est = hessian_trace(
        m.pack.net,
        m.stack,
        x,
        y,
        n_probes=s.n_probes,
        tol=s.tol,
        chunk=m.probe_chunk(s.chunk, x.shape[1]),
        min_probes=s.min_probes,
        generator=probe_g,
        hvp=s.hvp,
    )
    m.column("hessian_trace", est.estimate)
    m.column("hessian_trace_se", est.stderr)
    m.column("hessian_trace_probes", est.n_probes)


def _eigen(
    m: _Measurer, s: HessianEigenSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    est = hessian_eigenvalues(
        m.pack.net,
        m.stack,
        x,
        y,
        k=s.k,
        max_iter=s.max_iter,
        tol=s.tol,
        generator=probe_g,
        hvp=s.hvp,
    )
    for j in range(s.k):
        m.column(eigen_column(j), est.values[:, j])


def eigen_column(j: int) -> str:
    """Column of the (j+1)-th largest-magnitude Hessian eigenvalue."""
    return "hessian_top_eig" if j == 0 else f"hessian_eig_{j + 1}"


def _spectrum(
    m: _Measurer, s: SpectrumSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    d = hessian_density(
        m.pack.net,
        m.stack,
        x,
        y,
        n_iter=s.n_iter,
        n_v=s.n_v,
        n_grid=s.n_grid,
        sigma2=s.sigma2,
        generator=probe_g,
        hvp=s.hvp,
    )
    grid, density = d.grid.tolist(), d.density.tolist()
    rows = [
        {"member": k, "eigenvalue": e, "density": p}
        for i, k in enumerate(m.alive)
        for e, p in zip(grid[i], density[i])
    ]
    m.table("spectra", rows)


def _sharpness(
    m: _Measurer, s: SharpnessSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    net, b = m.pack.net, min(s.batch_size, y.shape[1])
    m.column(
        "eps_sharpness",
        epsilon_sharpness(
            net, m.stack, x, y, eps=s.eps, steps=s.steps, batch_size=b, generator=probe_g
        ),
    )
    worst = adaptive_sharpness_worst(
        net,
        m.stack,
        x,
        y,
        rho=s.worst_rho,
        p=s.worst_p,
        steps=s.steps,
        batch_size=b,
        generator=probe_g,
    )
    m.column("adaptive_sharpness_worst", worst)
    avg = adaptive_sharpness_average(
        net,
        m.stack,
        x,
        y,
        rho=s.avg_rho,
        n_draws=s.n_draws,
        chunk=s.chunk,
        batch_size=b,
        generator=probe_g,
    )
    m.column("adaptive_sharpness_avg", avg)


def _gradient_stats(
    m: _Measurer, s: GradientStatsSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    net, n = m.pack.net, y.shape[1]
    b = max(1, min(m.batch_size(s.batch_size), n // 2))
    m.column("fisher_trace", fisher_trace(net, m.stack, x, y, chunk=s.fisher_chunk))
    g = gradient_stats(net, m.stack, x, y, batch_size=b, chunk=s.chunk)
    m.column("grad_diversity", g.diversity)
    m.column("grad_cos_mean", g.cos_mean)
    m.column("grad_norm_mean", g.norm_mean)
    m.column("grad_agreement_r", g.agreement_r)
    if s.flatness:
        n_batches = min(s.flatness_batches, n // b)
        ratio = flatness_ratio(
            net,
            m.stack,
            x,
            y,
            batch_size=b,
            n_batches=n_batches,
            max_iter=s.max_iter,
            tol=s.tol,
            generator=probe_g,
        )
        m.column("flatness_ratio", ratio)


def _stiffness(
    m: _Measurer, s: StiffnessSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.test_sample(s.n_samples, sample_g)
    c = class_stiffness(m.pack.net, m.stack, x, y, m.pack.data.num_classes, chunk=s.chunk)
    m.column("stiffness_within_cos", c.within_cos)
    m.column("stiffness_between_cos", c.between_cos)
    m.column("stiffness_within_sign", c.within_sign)
    m.column("stiffness_between_sign", c.between_sign)
    rows = stiffness_rows(c, m.alive)
    if s.distance_bins > 0:
        d = stiffness_by_distance(
            m.pack.net,
            m.stack,
            x,
            y,
            n_bins=s.distance_bins,
            binning=s.distance_binning,
            chunk=s.chunk,
        )
        rows += stiffness_distance_rows(d, m.alive)
    m.table("stiffness", rows)


def _lr_range(
    m: _Measurer, s: LRRangeSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    alive = [m.pack.variants[k] for k in m.alive]
    data = m.pack.data
    idx = torch.as_tensor(m.alive, device=data.train_idx.device)
    own = PackData(
        data.x_train,
        data.train_idx[idx],
        data.y_train[idx],
        data.x_test,
        data.y_test,
        data.num_classes,
    )
    hypers = MemberHypers.from_specs([v.optim for v in alive], m.device)
    curve = lr_range_test(
        m.pack.net,
        m.stack,
        own,
        alive[0].optim,
        hypers,
        lr_min=s.lr_min,
        lr_max=s.lr_max,
        steps=s.steps,
        batch_size=m.batch_size(s.batch_size),
        stop_factor=s.stop_factor,
        generator=sample_g,
    )
    m.table("lr_range", lr_range_rows(curve, m.alive))


_COLUMNS = {
    "hessian_trace": ("hessian_trace", "hessian_trace_se", "hessian_trace_probes"),
    "sharpness": ("eps_sharpness", "adaptive_sharpness_worst", "adaptive_sharpness_avg"),
    "gradient_stats": (
        "fisher_trace",
        "grad_diversity",
        "grad_cos_mean",
        "grad_norm_mean",
        "grad_agreement_r",
    ),
    "stiffness": (
        "stiffness_within_cos",
        "stiffness_between_cos",
        "stiffness_within_sign",
        "stiffness_between_sign",
    ),
}
_TABLES = {"spectrum": "spectra", "stiffness": "stiffness", "lr_range": "lr_range"}


def metric_columns(name: str, spec: object) -> list[str]:
    """The ``runs`` columns one metric family fills (its settings decide some of them)."""
    if name == "hessian_eigen":
        return [eigen_column(j) for j in range(spec.k)]
    columns = list(_COLUMNS.get(name, ()))
    if name == "gradient_stats" and spec.flatness:
        columns.append("flatness_ratio")
    return columns


def local_columns(specs: LocalMetricSpecs) -> list[str]:
    """Every ``runs`` column :func:`measure_local` fills for these specs (for schemas)."""
    return [
        c
        for name in SEED_ORDER
        if getattr(specs, name).enabled
        for c in metric_columns(name, getattr(specs, name))
    ]


def _all_dead(m: _Measurer, name: str, spec: object) -> None:
    """Every member diverged: the metric's columns are all None and its table is empty."""
    for c in metric_columns(name, spec):
        m.result.columns[c] = [None] * m.K
    if name in _TABLES:
        m.table(_TABLES[name], [])
