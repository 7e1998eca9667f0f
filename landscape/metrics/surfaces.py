"""Loss surfaces: the loss at many points of parameter space, evaluated as stacked parameter sets.

Every surface in this package (filter-normalised 1-D and 2-D plots, linear interpolation,
Bezier curves, monotonic linear interpolation) evaluates points that are linear
combinations of a few parameter sets: ``w(c) = sum_j c_j basis_j`` (a plot: basis
``[w, d1, d2]``, coefficients ``[1, alpha, beta]``; a path: ``[w_a, w_b]`` and
``[1 - alpha, alpha]``). :func:`evaluate_combinations` evaluates G such points for each of
P models at once: ``vmap`` over the P models, ``vmap`` over a chunk of grid points inside,
the points built inside the vmap so only one chunk of parameter sets is ever in memory.

Filter-normalised directions and surfaces follow Li, Xu, Taylor, Studer, Goldstein (2018),
"Visualizing the Loss Landscape of Neural Nets" (NeurIPS); the roughness index follows
Wu, Jian, Du, Chen, Zhou (2021), arXiv 2103.11069 (see :func:`roughness_index` for exactly
what is implemented).

The registered global metric ``surface``: each member's filter-normalised surfaces (in
``surfaces``) and roughness index (``roughness``, ``roughness_std`` in ``runs``).
Its computation stays in ``landscape.metrics.pairs`` (``measure_pairs`` /
``measure_member_surfaces``), where the global metrics share each pair's data and the
BatchNorm recomputation of path points; this module registers its settings and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from landscape.functional import (
    INDEX_LIMIT,
    FunctionalNet,
    Params,
    Stack,
    examples_per_call,
    loss_precision,
)
from landscape.metrics.batchnorm import recompute_bn_stats
from landscape.metrics.registry import Column, Metric, register, require_positive
from landscape.objective import classification_loss
from landscape.variant import ConfigError

ONE_DIM_MODES = ("zero", "weights")


def _combine(basis: Params, coeffs: Tensor) -> Params:
    """sum_j coeffs[j] * basis[name][j] for floating tensors; integer tensors from basis 0."""
    out = {}
    for name, b in basis.items():  # b: (J, *shape)
        if b.is_floating_point():
            out[name] = torch.tensordot(coeffs.to(b.dtype), b, dims=1)
        else:
            out[name] = b[0]
    return out


def _point_metrics(net, basis_p, basis_b, coeffs, x, y, bn_x, batch_size):
    """Summed cross-entropy and correct count of ONE point over x (N, ...), y (N,)."""
    params = _combine(basis_p, coeffs)
    buffers = _combine(basis_b, coeffs)
    if bn_x is not None:
        buffers = recompute_bn_stats(net, params, buffers, bn_x)
    dtype = loss_precision(next(iter(params.values()))).dtype  # float32, or float64 models
    loss = x.new_zeros((), dtype=dtype)
    correct = x.new_zeros((), dtype=dtype)
    for start in range(0, y.shape[0], batch_size):
        logits = net.logits(params, buffers, x[start : start + batch_size])
        part_loss, part_correct = classification_loss(logits, y[start : start + batch_size], "sum")
        loss = loss + part_loss
        correct = correct + part_correct
    return loss, correct


@torch.no_grad()
def evaluate_combinations(
    net: FunctionalNet,
    basis: Stack,
    coeffs: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    bn_x: Tensor | None = None,
    chunk: int = 64,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Eval-mode mean loss and accuracy at G points for each of P models.

    ``basis``: params and buffers shaped (P, J, *shape); ``coeffs``: (P, G, J) or (G, J);
    ``x`` (P, N, *input), ``y`` (P, N): model p is evaluated on its own data. Buffers of a
    point are combined like its parameters (give directions zero buffers); with ``bn_x``
    (P, m, B, *input) BatchNorm statistics are recomputed at every point from those
    training batches (:func:`recompute_bn_stats`). ``chunk`` bounds the parameter sets
    evaluated at once (over all P); ``batch_size`` the examples per forward pass, fewer when
    the sets of one call would outgrow 32-bit indexing (``examples_per_call``).
    Returns loss (P, G) and accuracy (P, G) as fractions in [0, 1].
    """
    P, N = y.shape
    if coeffs.dim() == 2:
        coeffs = coeffs.expand(P, *coeffs.shape)
    G = coeffs.shape[1]
    step = max(1, chunk // P)
    batch_size = examples_per_call(net, tuple(x.shape[2:]), P * step, batch_size)
    if batch_size == 1:  # one example per set is still too wide: fewer sets per call
        step = max(1, INDEX_LIMIT // (P * net.widest_activation(tuple(x.shape[2:]))))
    per_point = vmap(
        lambda bp, bb, c, xs, ys, bx: _point_metrics(net, bp, bb, c, xs, ys, bx, batch_size),
        in_dims=(None, None, 0, None, None, None),
    )
    per_model = vmap(per_point, in_dims=(0, 0, 0, 0, 0, 0 if bn_x is not None else None))
    losses, corrects = [], []
    for start in range(0, G, step):
        c = coeffs[:, start : start + step].to(x.device)
        loss, correct = per_model(basis.params, basis.buffers, c, x, y, bn_x)
        losses.append(loss)
        corrects.append(correct)
    return torch.cat(losses, 1) / N, torch.cat(corrects, 1) / N


def symmetric_grid(span: float, n: int) -> Tensor:
    """n evenly spaced float64 points on [-span, span] with an exact 0 in the middle (odd n),
    so that rows can be selected with ``alpha == 0``."""
    grid = torch.linspace(-span, span, n, dtype=torch.float64)
    if n % 2:
        grid[n // 2] = 0.0
    return grid


def unit_grid(n: int) -> Tensor:
    """n evenly spaced float64 points on [0, 1], endpoints exact."""
    return torch.linspace(0, 1, n, dtype=torch.float64)


def stack_basis(*parts: Params) -> Params:
    """Stack J parameter dicts shaped (P, *shape) into one basis dict shaped (P, J, *shape)."""
    return {name: torch.stack([p[name] for p in parts], dim=1) for name in parts[0]}


def zeros_like_params(params: Params) -> Params:
    return {n: torch.zeros_like(p) for n, p in params.items()}


def filter_normalize(direction: Params, weights: Params, one_dim: str = "zero") -> Params:
    """Li et al.'s (2018) filter normalisation of a stacked ``direction`` (K, *shape) to
    ``weights``: in every tensor with more than one dimension besides the member dim, each
    slice along its first dimension (a conv filter, a linear neuron's row) is rescaled to
    ``d_i * ||w_i|| / (||d_i|| + 1e-10)``. Tensors with dim <= 1 (biases, BatchNorm affine)
    are zeroed (``one_dim="zero"``, the reference code's ``ignore='biasbn'``) or set equal
    to the weights (``one_dim="weights"``, the reference code otherwise)."""
    if one_dim not in ONE_DIM_MODES:
        raise ValueError(f"one_dim must be one of {', '.join(ONE_DIM_MODES)}, got {one_dim!r}")
    out = {}
    for name, d in direction.items():
        w = weights[name]
        if w.dim() - 1 <= 1:  # the member dim does not count
            out[name] = torch.zeros_like(w) if one_dim == "zero" else w.clone()
            continue
        dims = tuple(range(2, w.dim()))  # (K, filters, *filter_shape): norm over the filter
        w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
        out[name] = d * w_norm / (d_norm + 1e-10)
    return out


def filter_normalized_direction(
    params: Params, generator: torch.Generator, one_dim: str = "zero"
) -> Params:
    """A Gaussian direction shaped like stacked ``params`` (K, *shape), filter-normalised per
    member (:func:`filter_normalize`). The Gaussian is drawn on the CPU from ``generator``,
    so a seed gives the same direction on any device."""
    gaussian = {
        name: torch.randn(w.shape, generator=generator, dtype=torch.float32).to(
            device=w.device, dtype=w.dtype
        )
        if w.dim() - 1 > 1
        else torch.zeros_like(w)
        for name, w in params.items()
    }
    return filter_normalize(gaussian, params, one_dim)


def surface_1d(
    net: FunctionalNet,
    stack: Stack,
    direction: Params,
    alphas: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    chunk: int = 64,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """L(w + alpha d) for every member of ``stack`` (K models) and every alpha, eval mode
    (BatchNorm statistics not recomputed, as in Li et al.'s code). Returns loss (K, A) and
    accuracy (K, A)."""
    basis = Stack(
        stack_basis(stack.params, direction),
        stack_basis(stack.buffers, zeros_like_params(stack.buffers)),
    )
    coeffs = torch.stack([torch.ones_like(alphas), alphas], dim=-1)  # (A, 2)
    return evaluate_combinations(net, basis, coeffs, x, y, chunk=chunk, batch_size=batch_size)


def surface_2d(
    net: FunctionalNet,
    stack: Stack,
    d1: Params,
    d2: Params,
    alphas: Tensor,
    betas: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    chunk: int = 64,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """L(w + alpha d1 + beta d2) on the alphas x betas grid, eval mode. Returns loss and
    accuracy shaped (K, A, B) (alpha major)."""
    zeros = zeros_like_params(stack.buffers)
    basis = Stack(stack_basis(stack.params, d1, d2), stack_basis(stack.buffers, zeros, zeros))
    a, b = torch.meshgrid(alphas, betas, indexing="ij")
    coeffs = torch.stack([torch.ones_like(a), a, b], dim=-1).reshape(-1, 3)  # (A*B, 3)
    loss, acc = evaluate_combinations(net, basis, coeffs, x, y, chunk=chunk, batch_size=batch_size)
    K = loss.shape[0]
    return loss.view(K, len(alphas), len(betas)), acc.view(K, len(alphas), len(betas))


def normalized_total_variation(values: Tensor, rel_floor: float = 1e-6) -> Tensor:
    """Total variation of 1-D slices sampled on a grid, (..., n) values -> (...), divided by
    the variation of a slice with at most one turning point and the same ends and range:

        T = TV / max(V, H),  TV = sum_i |f_{i+1} - f_i|,
        V = (f_0 - min f) + (f_last - min f)   (a single valley),
        H = (max f - f_0) + (max f - f_last)   (a single hill).

    T = 1 exactly when the slice is monotone, a single valley or a single hill; every extra
    wiggle adds about twice its height over that scale. ``rel_floor * max |f|`` is added to
    numerator and denominator so that float noise on a flat slice reads as flat (T ~ 1).
    """
    tv = (values[..., 1:] - values[..., :-1]).abs().sum(-1)
    low, high = values.min(-1).values, values.max(-1).values
    ends = values[..., 0] + values[..., -1]
    scale = torch.maximum(ends - 2 * low, 2 * high - ends)
    floor = rel_floor * values.abs().amax(-1) + 1e-12
    return (tv + floor) / (scale + floor)


@dataclass
class Roughness:
    index: Tensor  # (K,) mean of T over directions
    std: Tensor  # (K,) standard deviation of T over directions
    per_direction: Tensor  # (K, R)


def roughness_index(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    n_directions: int = 8,
    n_points: int = 21,
    span: float = 1.0,
    one_dim: str = "zero",
    chunk: int = 64,
    batch_size: int = 512,
) -> Roughness:
    """Roughness of the loss around each member, after Wu, Jian, Du, Chen, Zhou (2021),
    "Roughness Index for Loss Landscapes of Neural Network Models of Partial Differential
    Equations", arXiv 2103.11069: statistics of the normalised total variation of 1-D
    loss slices along random directions.

    What is implemented (the paper's exact normalisation was not at hand; this is our
    definition): R = ``n_directions`` filter-normalised Gaussian directions d_r
    (:func:`filter_normalized_direction`); for each, the slice f_r(alpha) = L(w + alpha d_r)
    on ``n_points`` evenly spaced alphas in [-span, span], eval mode; T_r =
    :func:`normalized_total_variation` of the slice (1 for a monotone slice, a single valley
    or a single hill; larger the more the slice oscillates). Reports the mean of T_r over
    directions (``index``) and their standard deviation. All R slices are evaluated as one
    stack of R * n_points parameter sets. Defaults (8 directions, 21 points, span 1) are
    ours, sized for a CPU.
    """
    if n_directions < 1 or n_points < 3:
        raise ValueError(
            f"roughness needs >= 1 direction and >= 3 points, got {n_directions}, {n_points}"
        )
    alphas = symmetric_grid(span, n_points)
    R = n_directions
    directions = [filter_normalized_direction(stack.params, generator, one_dim) for _ in range(R)]
    zeros = zeros_like_params(stack.buffers)
    basis = Stack(stack_basis(stack.params, *directions), stack_basis(stack.buffers, *[zeros] * R))
    # point (r, i) = w + alphas[i] d_r: coefficient 1 on w, alphas[i] on direction r
    coeffs = torch.zeros(R, n_points, 1 + R, dtype=torch.float64)
    coeffs[:, :, 0] = 1.0
    coeffs[torch.arange(R), :, torch.arange(1, R + 1)] = alphas
    loss, _ = evaluate_combinations(
        net, basis, coeffs.reshape(R * n_points, 1 + R), x, y, chunk=chunk, batch_size=batch_size
    )
    t = normalized_total_variation(loss.double().view(-1, R, n_points))  # (K, R)
    std = t.std(dim=1) if n_directions > 1 else torch.zeros_like(t[:, 0])
    return Roughness(index=t.mean(dim=1), std=std, per_direction=t)


@dataclass(frozen=True)
class SurfaceSpec:
    """Filter-normalised loss surfaces (Li et al. 2018) around each member, eval mode, and the
    roughness index (after Wu et al. 2021). Li et al. use 51 points in 1-D and 21x21 or
    51x51 in 2-D, on [-1, 1], on the full training set; our sample is smaller for the CPU."""

    enabled: bool = True
    n_samples: int = 1024  # each member's own training examples
    points_1d: int = 51  # alphas in [-span, span]; 0 turns the 1-D surface off
    points_2d: int = 21  # per axis; 0 turns the 2-D surface off
    span: float = 1.0
    one_dim: str = (
        "zero"  # biases and BN affine in the direction: zero | weights (Li et al.'s code)
    )
    roughness_directions: int = 8  # random directions of the roughness index; 0 turns it off
    roughness_points: int = 21  # points per roughness slice on [-span, span]

    def __post_init__(self) -> None:
        require_positive("metrics.surface.n_samples", self.n_samples)
        for key in ("points_1d", "points_2d", "roughness_directions"):
            if getattr(self, key) < 0:
                raise ConfigError(f"metrics.surface.{key} must be >= 0, got {getattr(self, key)}")
        if self.points_1d == 1 or self.points_2d == 1:
            raise ConfigError(
                f"metrics.surface.points_1d and points_2d must be 0 or >= 2, got {self.points_1d}, {self.points_2d}"
            )
        if self.roughness_points < 3:
            raise ConfigError(
                f"metrics.surface.roughness_points must be >= 3, got {self.roughness_points}"
            )
        require_positive("metrics.surface.span", self.span)
        if self.one_dim not in ONE_DIM_MODES:
            raise ConfigError(
                f"metrics.surface.one_dim must be one of {', '.join(ONE_DIM_MODES)}, got {self.one_dim!r}"
            )


ROUGHNESS_COLUMNS = (
    Column("roughness", "roughness index of filter-normalised 1-D slices", report=16),
    Column("roughness_std", "standard deviation of the roughness index over directions"),
)
register(
    Metric(
        name="surface",
        spec=SurfaceSpec,
        family="global",
        order=105,
        hashed_when_off=True,
        columns=lambda s: ROUGHNESS_COLUMNS if s.roughness_directions else (),
        tables=("surfaces",),
        passes=("member_surfaces",),
    )
)
