"""Weight statistics: norms and moments against torch, histograms against numpy and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.functional import Stack, init_stack
from landscape.metrics.weights import batched_histogram, histogram_edges, weight_statistics
from landscape.models import MLP


def test_norms_moments_and_counts_per_member_and_tensor() -> None:
    _, stack = init_stack(lambda: MLP(4, 3, 5, 1, batch_norm=True), [0, 1, 2], "cpu")
    rows = weight_statistics(stack, bins=7, members=[10, 11, 12])
    # 3 members x 6 tensors (body.0.weight/bias, body.1.weight/bias (BN), head.weight/bias)
    assert len(rows) == 18
    for row in rows:
        w = stack.params[row["layer"]][row["member"] - 10].double()
        assert row["numel"] == w.numel()
        assert row["l2_norm"] == pytest.approx(torch.linalg.norm(w.flatten()).item(), rel=1e-12)
        assert row["mean"] == pytest.approx(w.mean().item(), rel=1e-12, abs=1e-15)
        assert row["std"] == pytest.approx(w.flatten().std(correction=0).item(), abs=1e-12)
        assert row["abs_max"] == pytest.approx(w.abs().max().item(), rel=1e-12)
        assert sum(row["hist_counts"]) == row["numel"] and row["hist_outside"] == 0
        assert len(row["hist_counts"]) == 7 and len(row["hist_edges"]) == 8
    # edges are shared by the members of one tensor and span the pack's min..max
    head = [r for r in rows if r["layer"] == "head.weight"]
    assert head[0]["hist_edges"] == head[1]["hist_edges"] == head[2]["hist_edges"]
    w = stack.params["head.weight"]
    assert head[0]["hist_edges"][0] == w.min().item() and head[0]["hist_edges"][
        -1
    ] == pytest.approx(w.max().item(), rel=1e-12)
    # BN weight is all ones at init: edges widen to 0.5 .. 1.5 and every entry lands mid-range
    bn = next(r for r in rows if r["layer"] == "body.1.weight")
    assert bn["hist_edges"][0] == 0.5 and bn["hist_edges"][-1] == 1.5
    assert bn["hist_counts"] == [0, 0, 0, 5, 0, 0, 0]


def test_a_known_tensor_histogram() -> None:
    values = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0, -0.2, 1.3]], dtype=torch.float64)
    edges = histogram_edges(values, 2, (0.0, 1.0))
    assert edges.tolist() == [0.0, 0.5, 1.0]
    counts, outside = batched_histogram(values, edges)
    # [0, 0.5): 0, 0.1; [0.5, 1]: 0.5, 0.9, 1.0 (last bin closed); -0.2 and 1.3 outside
    assert counts.tolist() == [[2, 3]] and outside.tolist() == [2]
    stack = Stack({"w": values.float()}, {})
    (row,) = weight_statistics(stack, bins=2, range_=(0.0, 1.0))
    assert row["hist_counts"] == [2, 3] and row["hist_outside"] == 2


def test_histogram_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 500, generator=g, dtype=torch.float64)
    edges = histogram_edges(values, 13, None)
    counts, outside = batched_histogram(values, edges)
    for k in range(3):
        want, want_edges = np.histogram(values[k].numpy(), bins=edges.numpy())
        np.testing.assert_array_equal(counts[k].numpy(), want)
        np.testing.assert_array_equal(edges.numpy(), want_edges)
    assert outside.tolist() == [0, 0, 0] and counts.sum().item() == 1500


def test_bad_arguments() -> None:
    stack = Stack({"w": torch.zeros(1, 3)}, {})
    with pytest.raises(ValueError, match="bins must be >= 1"):
        weight_statistics(stack, bins=0)
    with pytest.raises(ValueError, match="low < high"):
        weight_statistics(stack, range_=(1.0, 1.0))
