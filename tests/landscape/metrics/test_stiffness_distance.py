"""Stiffness by input distance: every pair counted once, bin means against an explicit loop,
a duplicated example has stiffness 1 at distance 0."""

from __future__ import annotations

import pytest
import torch

from landscape.metrics.stiffness import example_stiffness
from landscape.metrics.stiffness_distance import (
    distance_edges,
    stiffness_by_distance,
    stiffness_distance_rows,
)
from tests.landscape.metrics.test_hessian import gen, tiny_mlp


@pytest.mark.parametrize("binning", ["quantile", "linear"])
def test_bin_means_match_a_loop_over_pairs(binning: str) -> None:
    net, stack, x, y = tiny_mlp(members=2, n=11)
    got = stiffness_by_distance(net, stack, x, y, n_bins=4, binning=binning, chunk=4)
    s = example_stiffness(net, stack, x, y, chunk=64)
    edges = got.edges.tolist()
    assert got.count.sum(1).tolist() == [55, 55]  # 11 * 10 / 2 pairs per member
    for k in range(2):
        cos, sign = [[] for _ in range(4)], [[] for _ in range(4)]
        for i in range(11):
            for j in range(i + 1, 11):
                d = (x[k, i].double() - x[k, j].double()).norm().item()
                b = next(b for b in range(4) if d < edges[b + 1] or b == 3)
                assert edges[0] <= d <= edges[-1]
                cos[b].append(s.cos[k, i, j].item())
                sign[b].append(s.sign[k, i, j].item())
        for b in range(4):
            assert got.count[k, b].item() == len(cos[b])
            if cos[b]:
                assert got.cos[k, b].item() == pytest.approx(sum(cos[b]) / len(cos[b]), abs=1e-6)
                assert got.sign[k, b].item() == pytest.approx(sum(sign[b]) / len(sign[b]))
            else:
                assert got.cos[k, b].isnan()


def test_quantile_bins_hold_equal_shares_of_the_pooled_pairs() -> None:
    d = torch.arange(1, 101, dtype=torch.float64).view(2, 50)  # 100 distinct distances
    edges = distance_edges(d, 4, "quantile")
    # ranks 0, 24.75, 49.5, 74.25, 99 round (half to even) to 0, 25, 50, 74, 99
    assert edges.tolist() == [1.0, 26.0, 51.0, 75.0, 100.0]
    counts = torch.bucketize(d.flatten(), edges[1:-1], right=True).bincount(minlength=4)
    assert counts.tolist() == [25, 25, 24, 26]  # [1, 26) [26, 51) [51, 75) [75, 100]
    assert distance_edges(torch.full((3,), 2.0), 2, "linear").tolist() == [1.5, 2.0, 2.5]
    with pytest.raises(ValueError, match="binning must be"):
        distance_edges(d, 4, "log")
    with pytest.raises(ValueError, match="n_bins must be"):
        distance_edges(d, 0, "linear")


def test_a_duplicated_example_has_stiffness_one_in_the_lowest_bin() -> None:
    net, stack, _, _ = tiny_mlp(members=1)
    base = torch.randn(4, generator=gen(5))
    # examples 0 and 1 identical (same label); the others 10 away from them, 10 sqrt(2) apart
    x = torch.stack([base, base, *(base + 10 * torch.eye(4)[c] for c in range(4))])[None]
    y = torch.tensor([[2, 2, 0, 1, 2, 0]])
    got = stiffness_by_distance(net, stack, x, y, n_bins=10, binning="linear")
    assert got.edges[0].item() == 0.0  # the duplicate pair's distance is exactly 0
    # 15 pairs: 1 at 0, 8 at 10, 6 at 14.1; bins are 1.41 wide
    assert got.count[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 8, 0, 6]
    assert got.cos[0, 0].item() == pytest.approx(1.0, abs=1e-6) and got.sign[0, 0].item() == 1.0
    rows = stiffness_distance_rows(got, members=[7])
    assert len(rows) == 10 and rows[0]["member"] == 7 and rows[0]["count"] == 1
    assert rows[0]["distance_bin_lo"] == 0.0 and rows[0]["s_sign"] == 1.0
    assert rows[1]["s_cos"] is None and rows[1]["count"] == 0
    with pytest.raises(ValueError, match=">= 2 examples"):
        stiffness_by_distance(net, stack, x[:, :1], y[:, :1])
