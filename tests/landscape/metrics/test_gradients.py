"""Gradient statistics against explicit per-example / per-minibatch loops."""

from __future__ import annotations

import pytest
import torch

from landscape.functional import unstack
from landscape.metrics.gradients import fisher_trace, flatness_ratio, gradient_stats
from tests.landscape.metrics.test_hessian import exact_hessian, gen, tiny_mlp


def loop_gradient(net, stack, x, y, k: int) -> torch.Tensor:
    """Member k's flattened gradient of the mean loss on x, y (no batch dim), by autograd."""
    params, buffers = unstack(stack, k)
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(net.loss(params, buffers, x, y), list(params.values()))
    return torch.cat([g.flatten() for g in grads]).double()


def test_fisher_trace_matches_loop() -> None:
    """The vmapped Fisher trace against a loop over examples: one evaluation of a tiny float32
    MLP, so no rounding compounds; within 0.013 of the tolerance (measured with 1 and 2 threads
    and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=2, n=10)
    got = fisher_trace(net, stack, x, y, chunk=3)  # 3 does not divide 10: a ragged last chunk
    for k in range(2):
        want = (
            sum(
                loop_gradient(net, stack, x[k, i : i + 1], y[k, i : i + 1], k).square().sum()
                for i in range(10)
            )
            / 10
        )
        torch.testing.assert_close(got[k].double(), want, rtol=1e-5, atol=1e-7)


def test_gradient_stats_match_loop() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=20)
    got = gradient_stats(net, stack, x, y, batch_size=4, chunk=2)  # M = 5 minibatches, 2 pairs
    for k in range(2):
        g = torch.stack(
            [
                loop_gradient(net, stack, x[k, 4 * j : 4 * j + 4], y[k, 4 * j : 4 * j + 4], k)
                for j in range(5)
            ]
        )
        norms = g.norm(dim=1)
        cos = torch.stack(
            [torch.cosine_similarity(g[2 * j], g[2 * j + 1], dim=0) for j in range(2)]
        )
        r = torch.stack([(norms[2 * j] + norms[2 * j + 1]) / 2 * (1 - cos[j]) for j in range(2)])
        want = {
            "diversity": norms.square().sum() / g.sum(0).square().sum(),
            "cos_mean": cos.mean(),
            "norm_mean": norms.mean(),
            "agreement_r": r.mean(),
        }
        for name, value in want.items():
            torch.testing.assert_close(
                getattr(got, name)[k].double(), value, rtol=1e-4, atol=1e-6, msg=name
            )


def test_identical_minibatches_have_diversity_one_over_m_and_full_agreement() -> None:
    net, stack, x, y = tiny_mlp(members=1, n=4)
    got = gradient_stats(
        net, stack, x.repeat(1, 6, 1), y.repeat(1, 6), batch_size=4
    )  # 6 equal batches
    torch.testing.assert_close(got.diversity, torch.tensor([1 / 6]), rtol=1e-4, atol=0)
    torch.testing.assert_close(got.cos_mean, torch.tensor([1.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(got.agreement_r, torch.tensor([0.0]), rtol=0, atol=1e-5)


def test_flatness_ratio_matches_exact_hessians_and_is_at_least_one() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=24)
    got = flatness_ratio(
        net, stack, x, y, batch_size=6, n_batches=3, max_iter=3000, tol=1e-7, generator=gen()
    )
    for k in range(2):

        def lam(h: torch.Tensor) -> torch.Tensor:
            e = torch.linalg.eigvalsh(h.double())
            return e[e.abs().argmax()]

        full = lam(exact_hessian(net, stack, x[:, :18], y[:, :18], k))
        per = torch.stack(
            [
                lam(exact_hessian(net, stack, x[:, 6 * b : 6 * b + 6], y[:, 6 * b : 6 * b + 6], k))
                for b in range(3)
            ]
        )
        torch.testing.assert_close(got[k].double(), per.mean() / full, rtol=1e-3, atol=0)
    assert (got >= 1).all()


@pytest.mark.parametrize("which", ["fisher", "stats", "flatness"])
def test_pack_equals_members(which: str) -> None:
    """Gradient statistics of a pack against each member alone: one evaluation of a tiny float32
    MLP, so no rounding compounds; within 0.002 of the tolerance (measured with 1 and 2 threads
    and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3, n=16)

    def run(st, xs, ys):
        if which == "fisher":
            return fisher_trace(net, st, xs, ys, chunk=5)
        if which == "stats":
            s = gradient_stats(net, st, xs, ys, batch_size=4)
            return torch.stack([s.diversity, s.cos_mean, s.norm_mean, s.agreement_r])
        return flatness_ratio(
            net, st, xs, ys, batch_size=4, n_batches=2, max_iter=30, generator=gen(3)
        )

    pack = run(stack, x, y)
    for k in range(3):
        alone = run(stack.member(k), x[k : k + 1], y[k : k + 1])
        torch.testing.assert_close(pack[..., k : k + 1], alone, rtol=1e-4, atol=1e-6)


def test_gradient_stats_needs_two_minibatches() -> None:
    net, stack, x, y = tiny_mlp(members=1, n=8)
    with pytest.raises(ValueError, match="batch_size must be in"):
        gradient_stats(net, stack, x, y, batch_size=5)
