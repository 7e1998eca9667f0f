"""Gradient statistics at a trained point: Fisher trace, gradient diversity, minibatch
gradient agreement, and the flatness ratio of minibatch to full-sample Hessians.

All are measured on a sample x (K, N, ...), y (K, N), eval mode, batched over the K
members with vmap; per-example and per-minibatch gradients are computed in chunks (the
memory bound is ``chunk`` gradients per member at a time, each of P numbers).

The registered local metric ``gradient_stats`` (``landscape.metrics.registry``) measures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import grad, vmap

from landscape.functional import FunctionalNet, Stack, flatten
from landscape.hvp import minibatch_members, net_loss, resolve_hvp
from landscape.metrics.hessian import largest_eigenvalue
from landscape.metrics.registry import Column, Metric, check_ranges, register

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer


def per_example_gradients(net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor) -> Tensor:
    """Gradients of each example's cross-entropy (eval mode), flattened: (K, n, P)."""

    def example_loss(params, buffers, xi: Tensor, yi: Tensor) -> Tensor:
        return net.loss(params, buffers, xi[None], yi[None])

    per_member = vmap(grad(example_loss), in_dims=(None, None, 0, 0))
    return flatten(vmap(per_member)(stack.params, stack.buffers, x, y), 2)


def fisher_trace(
    net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor, *, chunk: int = 64
) -> Tensor:
    """Trace of the empirical Fisher, (K,): (1/N) sum_i ||grad l(x_i, y_i)||^2.

    Per-example gradients via vmap(grad), ``chunk`` examples at a time. This is the true
    per-example quantity, not the batch-gradient shortcut ||grad L||^2 (which drops the
    gradient noise that makes the Fisher informative). Reference: Kunstner, Balles & Hennig
    (2019) on the empirical Fisher; Jastrzebski et al. (2021) track its trace in training.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    K, N = y.shape
    total = torch.zeros(K, dtype=torch.float64, device=y.device)
    for start in range(0, N, chunk):
        g = per_example_gradients(
            net, stack, x[:, start : start + chunk], y[:, start : start + chunk]
        )
        total += g.square().sum((1, 2)).double()
    return (total / N).float()


@dataclass
class GradientStats:
    diversity: Tensor  # (K,) sum_i ||g_i||^2 / ||sum_i g_i||^2 over minibatch gradients
    cos_mean: Tensor  # (K,) E[cos(g1, g2)] over disjoint pairs of minibatches
    norm_mean: Tensor  # (K,) E[||g||]
    agreement_r: Tensor  # (K,) E[||g2|| (1 - cos(g1, g2))], symmetrised over each pair


def gradient_stats(
    net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor, *, batch_size: int, chunk: int = 8
) -> GradientStats:
    """Statistics of the gradients of M = N // batch_size disjoint minibatches of the sample.

    - gradient diversity (Yin et al. 2018, "Gradient diversity: a key ingredient for
      scalable distributed learning"): sum_i ||g_i||^2 / ||sum_i g_i||^2. With
      ``batch_size`` 1 this is their per-example definition; with the training batch size
      it measures the diversity SGD actually sees. It is 1/M when all g_i agree.
    - minibatch gradient agreement (a "local generalisation" measure from the literature on
      flatness and generalisation: how far one minibatch's step helps another's): over
      independent pairs (g1, g2) = minibatches (2j, 2j+1), E[cos(g1, g2)], E[||g||] and
      R = E[||g2|| (1 - cos(g1, g2))]; R is symmetrised as (||g1|| + ||g2||)/2 (1 - cos)
      since the pair order is arbitrary.
    """
    K, N = y.shape
    if not 1 <= batch_size <= N // 2:
        raise ValueError(
            f"batch_size must be in [1, {N // 2}] (two minibatches of the sample of {N}), got {batch_size}"
        )
    M = N // batch_size
    xb = x[:, : M * batch_size].reshape(K, M, batch_size, *x.shape[2:])
    yb = y[:, : M * batch_size].reshape(K, M, batch_size)
    per_batch = vmap(vmap(grad(net.loss), in_dims=(None, None, 0, 0)))
    chunk = max(2, chunk + chunk % 2)  # even, so that pairs never straddle two chunks
    acc = {
        k: torch.zeros(K, dtype=torch.float64, device=y.device) for k in ("sq", "norm", "cos", "r")
    }
    g_sum = None
    for start in range(0, M, chunk):
        g = flatten(
            per_batch(
                stack.params,
                stack.buffers,
                xb[:, start : start + chunk],
                yb[:, start : start + chunk],
            ),
            2,
        )
        g = g.double()  # (K, c, P)
        norms = g.norm(dim=-1)
        g_sum = g.sum(1) if g_sum is None else g_sum + g.sum(1)
        acc["sq"] += norms.square().sum(1)
        acc["norm"] += norms.sum(1)
        pairs = g.shape[1] // 2
        g1, g2, n1, n2 = (
            g[:, 0 : 2 * pairs : 2],
            g[:, 1 : 2 * pairs : 2],
            norms[:, 0 : 2 * pairs : 2],
            norms[:, 1 : 2 * pairs : 2],
        )
        cos = (g1 * g2).sum(-1) / (n1 * n2).clamp_min(1e-300)
        acc["cos"] += cos.sum(1)
        acc["r"] += ((n1 + n2) / 2 * (1 - cos)).sum(1)
    n_pairs = M // 2
    return GradientStats(
        diversity=(acc["sq"] / g_sum.square().sum(-1)).float(),
        cos_mean=(acc["cos"] / n_pairs).float(),
        norm_mean=(acc["norm"] / M).float(),
        agreement_r=(acc["r"] / n_pairs).float(),
    )


def flatness_ratio(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    n_batches: int = 4,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator,
) -> Tensor:
    """Mean over minibatches b of lambda_max(H_b) / lambda_max(H), (K,).

    The minibatches are ``n_batches`` disjoint batches of ``batch_size`` from the sample and
    H is the Hessian on their union, so H = mean_b H_b and the ratio is >= 1 by convexity of
    lambda_max (Jensen); a trace ratio would be exactly 1 by linearity. lambda_max, the
    largest signed eigenvalue (:func:`landscape.metrics.hessian.largest_eigenvalue`), by power
    iteration (PyHessian's 100 iterations, tol 1e-3), batched over members and batches
    (products as ``hvp="auto"`` picks them, :func:`landscape.hvp.resolve_hvp`).
    The ratio is >= 1 by Jensen's inequality and equals 1 only when every minibatch's
    sharpest direction is the full batch's.
    """
    K, N = y.shape
    if n_batches < 1 or n_batches * batch_size > N:
        raise ValueError(
            f"n_batches * batch_size must be in [1, {N}] (the sample size), got {n_batches} * {batch_size}"
        )
    n = n_batches * batch_size
    x, y = x[:, :n], y[:, :n]
    hvp = resolve_hvp(net, "auto", x.device)
    loss = net_loss(net, hvp)
    options = dict(max_iter=max_iter, tol=tol, generator=generator, mode=hvp)
    full = largest_eigenvalue(loss, stack.params, (stack.buffers, x, y), **options)
    view, xb, yb = minibatch_members(stack, x, y, batch_size)
    per = largest_eigenvalue(loss, view.params, (view.buffers, xb, yb), **options)
    return per.view(K, n_batches).mean(1) / full


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
        check_ranges(
            self,
            "gradient_stats",
            ("n_samples", "chunk", "fisher_chunk", "flatness_batches", "max_iter"),
            ("batch_size", "tol"),
        )


def _gradient_stats(
    m: Measurer, s: GradientStatsSpec, sample_g: torch.Generator, probe_g: torch.Generator
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


COLUMNS = (
    Column("fisher_trace", "empirical Fisher trace", log=True, report=5),
    Column("grad_diversity", "gradient diversity", log=True, report=6),
    Column("grad_cos_mean", "mean cosine between minibatch gradients", report=7),
    Column("grad_norm_mean", "mean minibatch gradient norm", log=True, report=8),
    Column("grad_agreement_r", "minibatch gradient agreement", log=True, report=9),
)
FLATNESS = Column(
    "flatness_ratio", "flatness ratio (minibatch / sample top eigenvalue)", log=True, report=10
)
register(
    Metric(
        name="gradient_stats",
        spec=GradientStatsSpec,
        family="local",
        order=4,
        hashed_when_off=True,
        columns=lambda s: (*COLUMNS, FLATNESS) if s.flatness else COLUMNS,
        measure=_gradient_stats,
    )
)
