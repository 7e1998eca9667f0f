"""Weight statistics: norms, moments and histograms of every parameter tensor of every member.

Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS), section 4, plot histograms of trained weights to show that small-batch and
large-batch solutions differ in weight scale (with weight decay the small-batch weights are
smaller), which is why sharpness must be measured on a scale-normalised landscape. Here each
parameter tensor of each member gets one row; histograms of a tensor share their bin edges
across the members of the pack, so the rows of one layer can be compared bin by bin.

The registered metric ``weights`` (family ``pack``) writes a pack's statistics into the
``params`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from landscape.functional import Stack
from landscape.metrics.registry import Metric, register

if TYPE_CHECKING:
    from landscape.pack import TrainedPack


def histogram_edges(values: Tensor, bins: int, range_: tuple[float, float] | None) -> Tensor:
    """``bins + 1`` float64 edges, evenly spaced over ``range_`` or over the values' min..max
    (widened by 0.5 each way when the values are all equal, as numpy does)."""
    if range_ is not None:
        lo, hi = float(range_[0]), float(range_[1])
        if not lo < hi:
            raise ValueError(f"range_ must be (low, high) with low < high, got {range_}")
    else:
        lo, hi = values.min().item(), values.max().item()
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)


def batched_histogram(values: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """Counts of each row of ``values`` (K, n) in the bins [e_i, e_{i+1}) (the last bin closed,
    as numpy.histogram): (K, bins) int64, and the values outside [e_0, e_last] per row (K,)."""
    v = values.double()
    edges = edges.to(v.device)
    inside = (v >= edges[0]) & (v <= edges[-1])
    idx = torch.bucketize(v, edges[1:-1], right=True)  # bin i: edges[i] <= v < edges[i + 1]
    counts = torch.zeros(v.shape[0], len(edges) - 1, dtype=torch.int64, device=v.device)
    counts.scatter_add_(1, idx, inside.long())
    return counts, (~inside).sum(1)


def weight_statistics(
    stack: Stack,
    *,
    bins: int = 50,
    range_: tuple[float, float] | None = None,
    members: list[int] | None = None,
) -> list[dict]:
    """One row per member and parameter tensor: member, layer (the parameter's name), numel,
    l2_norm, mean, std (population, over the tensor's entries), abs_max, hist_counts (list of
    ``bins`` ints), hist_edges (list of ``bins + 1`` floats) and hist_outside (entries outside
    the edges; 0 unless ``range_`` is given). Edges span the tensor's min..max over all
    members of the pack, or ``range_`` for every tensor. Statistics in float64.
    ``members`` relabels the pack positions in the rows. 50 bins is our default."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    K = stack.members
    members = list(range(K)) if members is None else members
    rows = []
    for name, p in stack.params.items():
        w = p.detach().flatten(1).double()  # (K, n)
        edges = histogram_edges(w, bins, range_)
        counts, outside = batched_histogram(w, edges)
        stats = {
            "l2_norm": torch.linalg.vector_norm(w, dim=1).tolist(),
            "mean": w.mean(1).tolist(),
            "std": w.std(1, correction=0).tolist(),
            "abs_max": w.abs().amax(1).tolist(),
        }
        counts_list, outside_list, edges_list = counts.tolist(), outside.tolist(), edges.tolist()
        for k, member in enumerate(members):
            rows.append(
                {
                    "member": member,
                    "layer": name,
                    "numel": w.shape[1],
                    **{key: values[k] for key, values in stats.items()},
                    "hist_counts": counts_list[k],
                    "hist_edges": edges_list,
                    "hist_outside": outside_list[k],
                }
            )
    return rows


@dataclass(frozen=True)
class WeightsSpec:
    """Per-layer weight statistics of the checkpoint into the ``params`` table (Li et al. 2018's
    weight histograms against batch size and weight decay)."""

    enabled: bool = False
    bins: int = 50


def _weights(pack: TrainedPack, spec: WeightsSpec, seed: int) -> list[dict]:
    return weight_statistics(pack.final, bins=spec.bins)


register(
    Metric(
        name="weights",
        spec=WeightsSpec,
        family="pack",
        order=110,
        hashed_when_off=True,
        tables=("params",),
        measure=_weights,
    )
)
