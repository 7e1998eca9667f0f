"""Euclidean distance between models in parameter space.

``||w_a - w_b||_2`` over the trainable parameters: every tensor in ``params`` (weights,
biases, BatchNorm affine scale and shift), never the buffers (BatchNorm running statistics
are data statistics, not coordinates of the model).

The registered global metric ``distance``: between the seeds of a replicate group
(``l2_distance`` in ``pairs``) and from each member to its initialisation (``dist_to_init``).
Its computation stays in ``landscape.metrics.pairs`` (``measure_pairs`` /
``measure_member_surfaces``), where the global metrics share each pair's data and the
BatchNorm recomputation of path points; this module registers its settings and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.functional import Params
from landscape.metrics.registry import Column, Metric, register


def l2_distance(a: Params, b: Params) -> Tensor:
    """Per-model L2 distance between stacked parameter sets shaped (P, *shape): (P,).

    Accumulated in float64 so that wide models lose no precision."""
    total = None
    for name, pa in a.items():
        diff = (pa.double() - b[name].double()).flatten(1)
        sq = (diff * diff).sum(1)
        total = sq if total is None else total + sq
    if total is None:
        raise ValueError("l2_distance needs at least one parameter tensor")
    return total.sqrt()


def l2_norm(params: Params) -> Tensor:
    """Per-model L2 norm of stacked parameters (P, *shape): (P,)."""
    return l2_distance(params, {n: torch.zeros_like(p) for n, p in params.items()})


@dataclass(frozen=True)
class DistanceSpec:
    """L2 distance over trainable parameters (pairs) and to the initialisation (members)."""

    enabled: bool = True


COLUMNS = (
    Column(
        "l2_distance",
        "L2 distance between seeds",
        table="pairs",
        unit="weight units",
        log=True,
        report=21,
        phase_diagram=True,
    ),
    Column(
        "dist_to_init",
        "L2 distance to the initialisation",
        unit="weight units",
        log=True,
        report=15,
    ),
)
register(
    Metric(
        name="distance",
        spec=DistanceSpec,
        family="global",
        order=100,
        hashed_when_off=True,
        columns=lambda s: COLUMNS,
        passes=("pairs", "member_surfaces"),
    )
)
