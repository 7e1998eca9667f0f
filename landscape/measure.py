"""Which metrics to compute on a trained pack, and the one call that computes them.

:class:`MetricsSpec` is hashed apart from the variants (``metrics_id``): adding a metric
renames no trained model. ``measure_pack`` returns per-member columns for ``runs`` and
rows for the metric's own tables, members indexed by their position in the pack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from landscape.metrics.hessian import hessian_trace
from landscape.pack import TrainedPack


@dataclass(frozen=True)
class HessianTraceSpec:
    """Hutchinson trace. Yang et al. used 100 probes on one batch of 200 samples; PyHessian's
    maintainer warns 200 samples is noisy, so our default sample is larger."""

    enabled: bool = True
    n_probes: int = 100
    n_samples: int = 512
    tol: float = 1e-3  # stop a member once its standard error is below tol * |estimate|
    chunk: int = 10  # probes per vmapped batch (bounds memory)


@dataclass(frozen=True)
class MetricsSpec:
    preset: str = "fast"
    seed: int = 0  # seeds the sample draws and probe vectors
    hessian_trace: HessianTraceSpec = field(default_factory=HessianTraceSpec)


@dataclass
class Measured:
    columns: dict[str, list] = field(default_factory=dict)  # name -> one value per member
    tables: dict[str, list[dict]] = field(
        default_factory=dict
    )  # rows carry member / member_a / member_b


def _masked(values: torch.Tensor, alive: torch.Tensor) -> list:
    return [float(v) if a else None for v, a in zip(values.tolist(), alive.tolist())]


def measure_pack(pack: TrainedPack, spec: MetricsSpec) -> Measured:
    """Every enabled metric on the pack's checkpoint; diverged members get None."""
    out = Measured()
    seed = spec.seed * 1_000_003 + sum(v.seed for v in pack.variants)
    g = torch.Generator().manual_seed(seed)
    ht = spec.hessian_trace
    if ht.enabled:
        x, y = pack.data.train_sample(ht.n_samples, g)
        est = hessian_trace(
            pack.net,
            pack.final,
            x,
            y,
            n_probes=ht.n_probes,
            tol=ht.tol,
            chunk=ht.chunk,
            generator=torch.Generator(x.device.type).manual_seed(seed + 1),
        )
        out.columns["hessian_trace"] = _masked(est.estimate, pack.alive)
        out.columns["hessian_trace_se"] = _masked(est.stderr, pack.alive)
        out.columns["hessian_trace_probes"] = [int(n) for n in est.n_probes.tolist()]
    return out
