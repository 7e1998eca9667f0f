"""Euclidean distance between models in parameter space.

``||w_a - w_b||_2`` over the trainable parameters: every tensor in ``params`` (weights,
biases, BatchNorm affine scale and shift), never the buffers (BatchNorm running statistics
are data statistics, not coordinates of the model).
"""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.functional import Params


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
