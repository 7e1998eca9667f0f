"""Sharpness: how much the loss rises when the weights are perturbed within a radius.

- epsilon-sharpness (Keskar et al. 2017): worst case over the box |delta_i| <= eps (|w_i| + 1),
  reported as 100 (max L - L) / (1 + L).
- adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al. 2023): max over
  ||delta / |w| ||_p <= rho of L(w + delta) - L(w).
- adaptive average-case sharpness: E over delta ~ N(0, rho^2 diag(w^2)) of L(w + delta) - L(w).

All three are one perturbation family: delta = s * u with a per-coordinate scale s
(``|w| + 1`` or ``|w|``) and u in an l_p ball of radius r. The worst cases are found by
projected gradient ascent, vmapped over the members; the average case by Monte Carlo over
Gaussian draws, vmapped over a chunk of draws and the members. Eval mode throughout.
Random starts and draws are shaped like ONE member and shared by all members.

The registered local metric ``sharpness`` (``landscape.metrics.registry``) measures all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from landscape.functional import FunctionalNet, Params, Stack, flatten, member_shapes, unflatten
from landscape.hvp import LossFn, member_loss, minibatch_members
from landscape.metrics.registry import Column, Metric, check_ranges, register
from landscape.variant import ConfigError

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer

NORMS = ("inf", "2")


def _shifted(params: Params, delta: Tensor, shapes: dict) -> Params:
    d = unflatten(delta, shapes)
    return {n: p + d[n] for n, p in params.items()}


def _project(u: Tensor, radius: float, p: str) -> Tensor:
    """Onto the l_p ball of ``radius`` (per row of u (K, P))."""
    if p == "inf":
        return u.clamp(-radius, radius)
    norm = u.norm(dim=-1, keepdim=True)
    return u * (radius / norm.clamp_min(max(radius, 1e-30)))


def _ascent_direction(g: Tensor, p: str) -> Tensor:
    """Steepest ascent direction of unit l_p norm (dual of the constraint norm)."""
    if p == "inf":
        return g.sign()
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _random_start(
    size: int, radius: float, p: str, generator: torch.Generator, like: Tensor
) -> Tensor:
    """A start inside the ball: uniform in the box (inf), or half the radius on a random ray (2)."""
    if p == "inf":
        u = torch.rand(size, generator=generator, device=generator.device) * 2 - 1
    else:
        z = torch.randn(size, generator=generator, device=generator.device)
        u = 0.5 * z / z.norm()
    return (radius * u).to(device=like.device, dtype=like.dtype)


def worst_case_loss(
    loss: LossFn,
    params: Params,
    args: tuple,
    scale: Params,
    *,
    radius: float,
    p: str = "inf",
    steps: int = 20,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """max over ||u||_p <= radius of loss(w + scale * u), by projected gradient ascent.

    From a random start in the ball, ``steps`` steps of steepest l_p ascent (sign of the
    gradient for l_inf, normalised gradient for l_2) of length 2r, r, r/2, r/4 over the four
    quarters of the run, each projected back onto the ball: a fixed-schedule simplification
    of APGD (Croce & Hein 2020), which Andriushchenko et al. ran for 20 iterations. The
    maximum over all iterates and the unperturbed point is returned, so it is never below
    the base loss and equals it exactly at radius 0. Returns (max loss (K,), base loss (K,)).
    """
    if p not in NORMS:
        raise ValueError(f"p must be one of {', '.join(NORMS)}, got {p!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    shapes = member_shapes(params)
    like = next(iter(params.values()))
    size = sum(math.prod(s) for s in shapes.values())
    s = flatten(scale, 1)  # (K, P)

    def perturbed(u: Tensor, w: Params, s_: Tensor, a: tuple) -> Tensor:
        return loss(_shifted(w, s_ * u, shapes), *a)

    value_grad = vmap(grad_and_value(perturbed))
    base = member_loss(loss, params, args)
    best = base.clone()
    u = _random_start(size, radius, p, generator, like).expand_as(s)
    for t in range(steps + 1):
        g, value = value_grad(u, params, s, args)
        best = torch.maximum(best, value)
        if t == steps:
            break
        step = 2 * radius * 0.5 ** (4 * t // steps)
        u = _project(u + step * _ascent_direction(g, p), radius, p)
    return best, base


def average_loss_increase(
    loss: LossFn,
    params: Params,
    args: tuple,
    scale: Params,
    *,
    rho: float,
    n_draws: int = 20,
    chunk: int = 10,
    generator: torch.Generator,
) -> Tensor:
    """E over z ~ N(0, I) of loss(w + rho * scale * z) - loss(w), by Monte Carlo: (K,).

    Draws come in vmapped chunks of ``chunk`` (the memory bound), shared by all members.
    """
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    if n_draws < 1 or chunk < 1:
        raise ValueError(f"n_draws and chunk must be >= 1, got {n_draws} and {chunk}")
    shapes = member_shapes(params)
    like = next(iter(params.values()))
    size = sum(math.prod(s) for s in shapes.values())
    s = flatten(scale, 1)  # (K, P)

    def member(w: Params, s_: Tensor, a: tuple, z: Tensor) -> Tensor:  # z (c, P) -> (c,)
        return vmap(lambda zi: loss(_shifted(w, rho * s_ * zi, shapes), *a))(z)

    batched = vmap(member, in_dims=(0, 0, 0, None))
    total = torch.zeros(s.shape[0], dtype=torch.float64, device=like.device)
    for start in range(0, n_draws, chunk):
        c = min(chunk, n_draws - start)
        z = torch.randn(c, size, generator=generator, device=generator.device).to(
            like.device, like.dtype
        )
        total += batched(params, s, args, z).double().sum(1)
    return (total / n_draws - member_loss(loss, params, args).double()).to(like.dtype)


def _batched(
    stack: Stack, x: Tensor, y: Tensor, batch_size: int
) -> tuple[Stack, Tensor, Tensor, int]:
    """Full sample (batch_size 0) or m-sharpness over disjoint minibatches (K*M members)."""
    if batch_size == 0:
        return stack, x, y, 1
    view, xb, yb = minibatch_members(stack, x, y, batch_size)
    return view, xb, yb, view.members // stack.members


def epsilon_sharpness(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 1e-3,
    steps: int = 20,
    batch_size: int = 0,
    generator: torch.Generator,
) -> Tensor:
    """Keskar et al. (2017) epsilon-sharpness, (K,): 100 (max L(w + delta) - L(w)) / (1 + L(w))
    over the box |delta_i| <= eps (|w_i| + 1), mean cross-entropy in eval mode on x, y.

    eps = 1e-3 is one of the paper's two values (1e-3, 5e-4). The paper maximised with
    L-BFGS-B; here projected gradient ascent (:func:`worst_case_loss`, 20 steps). With
    ``batch_size`` > 0 the value is averaged over disjoint minibatches (m-sharpness).
    """
    view, xb, yb, M = _batched(stack, x, y, batch_size)
    scale = {n: p.abs() + 1 for n, p in view.params.items()}
    top, base = worst_case_loss(
        net.loss,
        view.params,
        (view.buffers, xb, yb),
        scale,
        radius=eps,
        p="inf",
        steps=steps,
        generator=generator,
    )
    return (100 * (top - base) / (1 + base)).view(-1, M).mean(1)


def adaptive_sharpness_worst(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    rho: float = 0.002,
    p: str = "inf",
    steps: int = 20,
    batch_size: int = 0,
    generator: torch.Generator,
) -> Tensor:
    """Adaptive worst-case sharpness, (K,): max over ||delta / |w| ||_p <= rho of
    L(w + delta) - L(w) (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023).

    Defaults follow Andriushchenko et al.'s CIFAR-10 ResNet-18 runs: l_inf, rho in
    {0.001, 0.002, 0.004, 0.008} (we take 0.002), 20 ascent steps, 1024 samples (the
    caller's sample); they averaged over minibatches of 128 (``batch_size``; 0 = the whole
    sample at once) and optionally normalised logits, which we do not.
    """
    view, xb, yb, M = _batched(stack, x, y, batch_size)
    scale = {n: w.abs() for n, w in view.params.items()}
    top, base = worst_case_loss(
        net.loss,
        view.params,
        (view.buffers, xb, yb),
        scale,
        radius=rho,
        p=p,
        steps=steps,
        generator=generator,
    )
    return (top - base).view(-1, M).mean(1)


def adaptive_sharpness_average(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    rho: float = 0.1,
    n_draws: int = 20,
    chunk: int = 10,
    batch_size: int = 0,
    generator: torch.Generator,
) -> Tensor:
    """Adaptive average-case sharpness, (K,): E over delta ~ N(0, rho^2 diag(w^2)) of
    L(w + delta) - L(w), by Monte Carlo with ``n_draws`` draws.

    rho = 0.1 sits in Andriushchenko et al.'s CIFAR-10 ResNet-18 grid for adaptive average
    case (0.05 .. 0.4, 20 draws); their Gaussian may be normalised differently, so compare
    values across runs of this code, not with their tables.
    """
    view, xb, yb, M = _batched(stack, x, y, batch_size)
    scale = {n: w.abs() for n, w in view.params.items()}
    rise = average_loss_increase(
        net.loss,
        view.params,
        (view.buffers, xb, yb),
        scale,
        rho=rho,
        n_draws=n_draws,
        chunk=chunk,
        generator=generator,
    )
    return rise.view(-1, M).mean(1)


@dataclass(frozen=True)
class SharpnessSpec:
    """epsilon-sharpness (Keskar et al. 2017) and adaptive worst/average-case sharpness
    (Andriushchenko et al. 2023: 1024 samples, 20 iterations, CIFAR-10 ResNet-18 grids)."""

    enabled: bool = True
    n_samples: int = 1024
    batch_size: int = 0  # 0: one ascent on the whole sample; > 0: m-sharpness (their runs: 128)
    eps: float = 1e-3  # Keskar et al.'s box radius (relative, |w| + 1)
    steps: int = 20  # projected-ascent steps (both worst cases)
    worst_rho: float = 0.002  # adaptive l_p radius; their l_inf grid: 0.001 .. 0.008
    worst_p: str = "inf"  # "inf" or "2"
    avg_rho: float = 0.1  # adaptive Gaussian scale; their grid: 0.05 .. 0.4
    n_draws: int = 20  # Monte Carlo draws for the average case
    chunk: int = 10  # draws per vmapped batch

    def __post_init__(self) -> None:
        check_ranges(
            self,
            "sharpness",
            ("n_samples", "steps", "n_draws", "chunk"),
            ("batch_size", "eps", "worst_rho", "avg_rho"),
        )
        if self.worst_p not in NORMS:
            raise ConfigError(
                f"metrics.sharpness.worst_p must be one of {', '.join(NORMS)}, got {self.worst_p!r}"
            )


def _sharpness(
    m: Measurer, s: SharpnessSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    net, b = m.pack.net, min(s.batch_size, y.shape[1])
    m.column(
        "eps_sharpness",
        epsilon_sharpness(
            net, m.stack, x, y, eps=s.eps, steps=s.steps, batch_size=b, generator=probe_g
        ),
    )
    worst = adaptive_sharpness_worst(
        net,
        m.stack,
        x,
        y,
        rho=s.worst_rho,
        p=s.worst_p,
        steps=s.steps,
        batch_size=b,
        generator=probe_g,
    )
    m.column("adaptive_sharpness_worst", worst)
    avg = adaptive_sharpness_average(
        net,
        m.stack,
        x,
        y,
        rho=s.avg_rho,
        n_draws=s.n_draws,
        chunk=s.chunk,
        batch_size=b,
        generator=probe_g,
    )
    m.column("adaptive_sharpness_avg", avg)


COLUMNS = (
    Column("eps_sharpness", "epsilon-sharpness (Keskar et al.)", log=True, report=2),
    Column("adaptive_sharpness_worst", "adaptive worst-case sharpness", log=True, report=3),
    Column("adaptive_sharpness_avg", "adaptive average-case sharpness", log=True, report=4),
)
register(
    Metric(
        name="sharpness",
        spec=SharpnessSpec,
        family="local",
        order=3,
        hashed_when_off=True,
        columns=lambda s: COLUMNS,
        measure=_sharpness,
    )
)
