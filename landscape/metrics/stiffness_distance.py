"""Stiffness as a function of the distance between inputs (Fort, Nowak, Jastrzebski &
Narayanan 2019, "Stiffness: a new perspective on generalization in neural networks",
section 5): a gradient step on one example helps examples nearby in input space and, as
training goes on, fewer of those further away; the distance where stiffness falls to zero
is their "dynamical critical length".

For every unordered pair i < j of the n examples: S_cos and S_sign of their per-example
gradients (:func:`~landscape.metrics.stiffness.example_stiffness`) and the L2 distance
||x_i - x_j|| of the flattened inputs as the model sees them. Pairs are binned by distance
with bin edges shared by all members of the pack (quantiles of the pooled distances, so bins
hold about equally many pairs, or evenly spaced from the smallest to the largest distance),
and S is averaged per bin. Bin b is [e_b, e_{b+1}), the last bin closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.functional import FunctionalNet, Stack
from landscape.metrics.stiffness import example_stiffness

BINNINGS = ("quantile", "linear")


@dataclass
class StiffnessByDistance:
    edges: Tensor  # (B + 1,) float64 distance bin edges, shared by the members
    cos: Tensor  # (K, B) mean S_cos per bin (NaN for an empty bin)
    sign: Tensor  # (K, B) mean S_sign per bin (NaN for an empty bin)
    count: Tensor  # (K, B) int64 pairs per bin; sums to n (n - 1) / 2 per member


def distance_edges(distances: Tensor, n_bins: int, binning: str) -> Tensor:
    """``n_bins + 1`` float64 edges from the pooled ``distances``: nearest-rank quantiles
    (edges may repeat when distances tie, leaving empty bins) or evenly spaced over min..max
    (widened by 0.5 each way when all distances are equal)."""
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {', '.join(BINNINGS)}, got {binning!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    v = distances.flatten().double().sort().values.cpu()
    if binning == "quantile":
        ranks = torch.linspace(0, len(v) - 1, n_bins + 1, dtype=torch.float64).round().long()
        return v[ranks]
    lo, hi = v[0].item(), v[-1].item()
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)


def bin_means(values: Tensor, bins: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` (K, M) per bin index ``bins`` (K, M): means (K, B) float64 (NaN where
    empty) and counts (K, B) int64."""
    K = values.shape[0]
    sums = torch.zeros(K, n_bins, dtype=torch.float64, device=values.device)
    counts = torch.zeros(K, n_bins, dtype=torch.int64, device=values.device)
    sums.scatter_add_(1, bins, values.double())
    counts.scatter_add_(1, bins, torch.ones_like(bins))
    return sums / counts, counts  # 0 / 0 = NaN for an empty bin


def stiffness_by_distance(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    n_bins: int = 10,
    binning: str = "quantile",
    chunk: int = 32,
) -> StiffnessByDistance:
    """Mean S_cos and S_sign over the pairs of examples of x (K, n, ...), y (K, n) in each of
    ``n_bins`` input-distance bins (see the module docstring), eval mode. Memory: the
    (K, n, n) stiffness matrices plus 2 * ``chunk`` per-example gradients per member. Fort
    et al. measured stiffness on held-out data; 10 quantile bins are our default."""
    K, n = y.shape
    if n < 2:
        raise ValueError(f"stiffness by distance needs >= 2 examples, got {n}")
    if not x.is_floating_point():
        raise ValueError(
            f"stiffness by input distance needs float inputs, got token ids ({x.dtype}): "
            "a distance between id vectors is no distance between inputs"
        )
    s = example_stiffness(net, stack, x, y, chunk=chunk)
    flat = x.flatten(2).double()
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")  # exact 0 for ties
    i, j = torch.triu_indices(n, n, offset=1, device=y.device)  # the n (n - 1) / 2 pairs i < j
    d = dist[:, i, j]  # (K, M)
    edges = distance_edges(d, n_bins, binning)
    bins = torch.bucketize(d, edges[1:-1].to(d.device), right=True)
    cos, count = bin_means(s.cos[:, i, j], bins, n_bins)
    sign, _ = bin_means(s.sign[:, i, j], bins, n_bins)
    return StiffnessByDistance(edges, cos, sign, count)


def stiffness_distance_rows(r: StiffnessByDistance, members: list[int] | None = None) -> list[dict]:
    """Rows for a ``stiffness_distance`` table: member, distance_bin_lo, distance_bin_hi,
    s_cos, s_sign (None for an empty bin), count."""
    K, B = r.count.shape
    members = list(range(K)) if members is None else members
    edges, cos, sign, count = r.edges.tolist(), r.cos.tolist(), r.sign.tolist(), r.count.tolist()
    return [
        {
            "member": member,
            "distance_bin_lo": edges[b],
            "distance_bin_hi": edges[b + 1],
            "s_cos": None if cos[k][b] != cos[k][b] else cos[k][b],
            "s_sign": None if sign[k][b] != sign[k][b] else sign[k][b],
            "count": count[k][b],
        }
        for k, member in enumerate(members)
        for b in range(B)
    ]
