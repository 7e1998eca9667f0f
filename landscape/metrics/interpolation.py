"""Straight lines in parameter space: the linear interpolation barrier between two trained
models, and monotonic linear interpolation from the initialisation.

- Barrier: ``max_alpha f((1-alpha) w_a + alpha w_b) - [(1-alpha) f(w_a) + alpha f(w_b)]``
  for f the loss or the error, alpha on a grid including both endpoints (so the barrier is
  >= 0, and 0 on a convex problem): the height above the straight line between the endpoint
  values, as defined by Entezari, Sedghi, Saukh, Neyshabur (2022), "The Role of Permutation
  Invariance in Linear Mode Connectivity of Neural Networks" (ICLR), section 2. Frankle,
  Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis" (ICML), section 2, who introduced the measure, subtract the endpoints' mean
  ``(f(w_a) + f(w_b)) / 2`` instead; the two agree when the endpoints' values are equal and
  differ by at most ``|f(w_a) - f(w_b)| / 2``.
- MLI (Lucas, Bae, Zhang, Fort, Zemel, Grosse 2021, "Analyzing Monotonic Linear
  Interpolation in Neural Network Loss Landscapes", ICML): the loss along
  ``(1-alpha) w_0 + alpha w_T`` from the initialisation w_0 to the trained w_T.

With BatchNorm, every point on the line gets running statistics recomputed from training
batches (``bn_x``) before it is evaluated; the endpoints are treated the same way, so a
path's endpoints are comparable with its interior.

The registered global metrics ``barrier`` (between the seeds of a replicate group, in
``pairs``, with its path in ``surfaces``) and ``mli`` (each member from its initialisation).
Its computation stays in ``landscape.metrics.pairs`` (``measure_pairs`` /
``measure_member_surfaces``), where the global metrics share each pair's data and the
BatchNorm recomputation of path points; this module registers its settings and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.functional import FunctionalNet, Stack
from landscape.metrics.registry import Column, Metric, register, require_positive
from landscape.metrics.surfaces import evaluate_combinations, stack_basis, unit_grid
from landscape.variant import ConfigError


def linear_coeffs(alphas: Tensor) -> Tensor:
    """(A,) -> (A, 2) coefficients of [w_a, w_b]: (1 - alpha, alpha)."""
    return torch.stack([1 - alphas, alphas], dim=-1)


def evaluate_line(
    net: FunctionalNet,
    a: Stack,
    b: Stack,
    alphas: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    bn_x: Tensor | None = None,
    chunk: int = 64,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy (P, A) at (1-alpha) w_a + alpha w_b for P pairs of models stacked in
    ``a`` and ``b`` (leading dim P); pair p is evaluated on x[p], y[p]. Without ``bn_x``
    the buffers are interpolated like the weights."""
    basis = Stack(stack_basis(a.params, b.params), stack_basis(a.buffers, b.buffers))
    return evaluate_combinations(
        net, basis, linear_coeffs(alphas), x, y, bn_x=bn_x, chunk=chunk, batch_size=batch_size
    )


def barrier(values: Tensor, alphas: Tensor) -> Tensor:
    """max over alpha of values(alpha) - [(1-alpha) values(0) + alpha values(1)].

    ``values`` (..., A) on ``alphas`` (A,) running from 0 to 1. Returns (...)."""
    if not (float(alphas[0]) == 0.0 and float(alphas[-1]) == 1.0):
        raise ValueError(
            f"barrier needs alphas from 0 to 1, got {float(alphas[0])}..{float(alphas[-1])}"
        )
    alphas = alphas.to(values)
    chord = (1 - alphas) * values[..., :1] + alphas * values[..., -1:]
    return (values - chord).max(-1).values


@dataclass
class BarrierResult:
    loss: Tensor  # (P,) loss barrier
    error: Tensor  # (P,) error barrier in percentage points
    alphas: Tensor  # (A,)
    curve_loss: Tensor  # (P, A)
    curve_accuracy: Tensor  # (P, A), fraction


def linear_barrier(
    net: FunctionalNet,
    a: Stack,
    b: Stack,
    x: Tensor,
    y: Tensor,
    *,
    n_alphas: int = 11,
    bn_x: Tensor | None = None,
    chunk: int = 64,
    batch_size: int = 512,
) -> BarrierResult:
    """Linear interpolation barrier in loss and in error (%) between P pairs of models, alpha
    on ``n_alphas`` evenly spaced points in [0, 1] (default 11, a step of 0.1: our choice, cheap on
    a CPU; use 21 or more for plots). Pass ``bn_x`` (P, m, B, *input) for models with BatchNorm."""
    if n_alphas < 2:
        raise ValueError(f"barrier.n_alphas must be >= 2, got {n_alphas}")
    alphas = unit_grid(n_alphas)
    loss, acc = evaluate_line(
        net, a, b, alphas, x, y, bn_x=bn_x, chunk=chunk, batch_size=batch_size
    )
    error = 100 * (1 - acc)
    return BarrierResult(barrier(loss, alphas), barrier(error, alphas), alphas, loss, acc)


def max_bump(losses: Tensor) -> Tensor:
    """Largest rise along a path, (..., A) -> (...): max over i < j of losses[j] - losses[i],
    and 0 when the path never rises (monotonically non-increasing)."""
    running_min = torch.cummin(losses, dim=-1).values
    rise = losses[..., 1:] - running_min[..., :-1]
    return rise.max(-1).values.clamp_min(0)


@dataclass
class MLIResult:
    monotonic: Tensor  # (K,) bool: the loss never rises by more than tol
    max_bump: Tensor  # (K,) largest rise of the loss (max_bump)
    alphas: Tensor  # (A,)
    loss: Tensor  # (K, A)
    accuracy: Tensor  # (K, A)


def monotonic_linear_interpolation(
    net: FunctionalNet,
    init: Stack,
    final: Stack,
    x: Tensor,
    y: Tensor,
    *,
    n_alphas: int = 21,
    tol: float = 1e-4,
    bn_x: Tensor | None = None,
    chunk: int = 64,
    batch_size: int = 512,
) -> MLIResult:
    """L((1-alpha) w_0 + alpha w_T) for K members on ``n_alphas`` points in [0, 1]; the
    path is monotonic when its largest rise (:func:`max_bump`) is <= ``tol`` (nats; the default
    1e-4 keeps float32 noise on a flat stretch from counting as a bump). The default of
    21 points is our choice; a coarser grid can miss a narrow bump."""
    if n_alphas < 2:
        raise ValueError(f"mli.n_alphas must be >= 2, got {n_alphas}")
    alphas = unit_grid(n_alphas)
    loss, acc = evaluate_line(
        net, init, final, alphas, x, y, bn_x=bn_x, chunk=chunk, batch_size=batch_size
    )
    bump = max_bump(loss)
    return MLIResult(bump <= tol, bump, alphas, loss, acc)


@dataclass(frozen=True)
class BarrierSpec:
    """Linear interpolation barrier (Frankle et al. 2020) in loss and in error (%)."""

    enabled: bool = True
    n_alphas: int = 11  # alpha grid on [0, 1], endpoints included (step 0.1)
    n_samples: int = 2048  # training examples, half from each member

    def __post_init__(self) -> None:
        if self.n_alphas < 2:
            raise ConfigError(f"metrics.barrier.n_alphas must be >= 2, got {self.n_alphas}")
        require_positive("metrics.barrier.n_samples", self.n_samples)


BARRIER_COLUMNS = (
    Column(
        "barrier_loss",
        "linear interpolation barrier of the training loss",
        table="pairs",
        unit="nats",
        report=22,
    ),
    Column(
        "barrier_error",
        "linear interpolation barrier of the training error",
        table="pairs",
        unit="percentage points",
        report=23,
    ),
)
register(
    Metric(
        name="barrier",
        spec=BarrierSpec,
        family="global",
        order=102,
        hashed_when_off=True,
        columns=lambda s: BARRIER_COLUMNS,
        tables=("surfaces",),
        passes=("pairs",),
    )
)


@dataclass(frozen=True)
class MLISpec:
    """Monotonic linear interpolation (Lucas et al. 2021) from the initialisation to the checkpoint."""

    enabled: bool = True
    n_alphas: int = 21  # alpha grid on [0, 1]
    n_samples: int = 1024  # each member's own training examples
    tol: float = (
        1e-4  # monotonic when the largest rise of the loss is <= tol (nats; float32 noise guard)
    )

    def __post_init__(self) -> None:
        if self.n_alphas < 2:
            raise ConfigError(f"metrics.mli.n_alphas must be >= 2, got {self.n_alphas}")
        require_positive("metrics.mli.n_samples", self.n_samples)
        if self.tol < 0:
            raise ConfigError(f"metrics.mli.tol must be >= 0, got {self.tol}")


MLI_COLUMNS = (
    Column("mli_monotonic", "loss non-increasing from the initialisation (MLI)", report=13),
    Column(
        "mli_max_bump",
        "largest rise of the loss from the initialisation (MLI)",
        unit="nats",
        report=14,
    ),
)
register(
    Metric(
        name="mli",
        spec=MLISpec,
        family="global",
        order=104,
        hashed_when_off=True,
        columns=lambda s: MLI_COLUMNS,
        tables=("surfaces",),
        passes=("member_surfaces",),
    )
)
