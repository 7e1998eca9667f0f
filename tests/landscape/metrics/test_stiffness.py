"""Stiffness: symmetry, self-stiffness 1, class averages against an explicit loop."""

from __future__ import annotations

import pytest
import torch

from landscape.metrics.stiffness import (
    class_average,
    class_stiffness,
    example_stiffness,
    gradient_gram,
    stiffness_rows,
)
from tests.landscape.metrics.test_gradients import loop_gradient
from tests.landscape.metrics.test_hessian import tiny_mlp


@pytest.mark.parametrize("chunk", [3, 64])  # blockwise (with a ragged block) and one block
def test_gram_matches_loop_and_is_symmetric(chunk: int) -> None:
    """The batched gradient Gram matrix against a loop over examples: one evaluation of a tiny
    float32 MLP, so no rounding compounds; within 0.021 of the tolerance (measured with 1 and 2
    threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=2, n=8)
    gram = gradient_gram(net, stack, x, y, chunk=chunk)
    for k in range(2):
        g = torch.stack(
            [loop_gradient(net, stack, x[k, i : i + 1], y[k, i : i + 1], k) for i in range(8)]
        )
        torch.testing.assert_close(gram[k], g @ g.T, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gram, gram.mT, rtol=0, atol=0)


def test_self_stiffness_is_one_and_values_in_range() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=12)
    s = example_stiffness(net, stack, x, y, chunk=5)
    torch.testing.assert_close(s.cos.diagonal(dim1=1, dim2=2), torch.ones(2, 12), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.cos, s.cos.mT, rtol=0, atol=0)
    assert (s.cos.abs() <= 1 + 1e-6).all()
    assert set(s.sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(s.sign, s.cos.sign(), rtol=0, atol=0)


def test_class_average_matches_loop_excluding_self_pairs() -> None:
    s = torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = (s + s.mT) / 2
    y = torch.tensor([[0, 1, 0, 2, 1, 0, 1]])
    got = class_average(s, y, num_classes=4)  # class 3 is absent: NaN row and column
    for a in range(3):
        for b in range(3):
            vals = [
                s[0, i, j]
                for i in range(7)
                for j in range(7)
                if i != j and y[0, i] == a and y[0, j] == b
            ]
            if vals:
                torch.testing.assert_close(got[0, a, b], torch.stack(vals).mean())
            else:  # class 2 has one example: no within-class pair
                assert (a, b) == (2, 2) and got[0, a, b].isnan()
    assert got[0, 3].isnan().all() and got[0, :, 3].isnan().all()


def test_class_stiffness_symmetric_means_and_pack_equals_members() -> None:
    """Class stiffness of a pack against each member alone: one evaluation of a tiny float32
    MLP, so no rounding compounds; within 0.006 of the tolerance (measured with 1 and 2 threads
    and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3, n=15)
    pack = class_stiffness(net, stack, x, y, num_classes=3, chunk=4)
    torch.testing.assert_close(pack.cos, pack.cos.mT, equal_nan=True)
    torch.testing.assert_close(pack.sign, pack.sign.mT, equal_nan=True)
    eye = torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(pack.within_cos, pack.cos[:, eye].nanmean(-1))
    torch.testing.assert_close(pack.between_sign, pack.sign[:, ~eye].nanmean(-1))
    for k in range(3):
        alone = class_stiffness(
            net, stack.member(k), x[k : k + 1], y[k : k + 1], num_classes=3, chunk=4
        )
        torch.testing.assert_close(
            pack.cos[k : k + 1], alone.cos, rtol=1e-4, atol=1e-6, equal_nan=True
        )
        torch.testing.assert_close(
            pack.between_cos[k : k + 1], alone.between_cos, rtol=1e-4, atol=1e-6
        )
    rows = stiffness_rows(pack, members=[4, 5, 6])
    assert len(rows) == 3 * 3 * 3 and rows[0].keys() == {
        "member",
        "class_a",
        "class_b",
        "s_cos",
        "s_sign",
    }
    assert {r["member"] for r in rows} == {4, 5, 6}


def test_grouped_class_stiffness_averages_the_pairs_of_each_group_of_classes():
    """Classes 0, 1, 2 in 2 contiguous groups ({0, 1} and {2}): entry (a, b) of the
    grouped matrix is the mean example stiffness over pairs i != j with i in group a and j in
    group b, recomputed here from the example stiffness by masks; the by-class result is
    :func:`class_stiffness`'s own. Same float32 sums in another order: 1e-5."""
    from landscape.metrics.stiffness import example_stiffness, grouped_class_stiffness

    net, stack, x, _ = tiny_mlp(members=2, n=18)
    y = torch.arange(18).remainder(3).expand(2, 18)  # every class 6 times
    by_class, grouped = grouped_class_stiffness(net, stack, x, y, 3, 2)
    torch.testing.assert_close(by_class.cos, class_stiffness(net, stack, x, y, 3).cos)
    s = example_stiffness(net, stack, x, y).cos  # (K, n, n)
    g = y[0] * 2 // 3
    off = ~torch.eye(18, dtype=torch.bool)
    for a in range(2):
        for b in range(2):
            mask = (g[:, None] == a) & (g[None, :] == b) & off
            want = s[:, mask].mean(-1)
            torch.testing.assert_close(grouped.cos[:, a, b], want, rtol=1e-5, atol=1e-6)
