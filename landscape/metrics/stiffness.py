"""Stiffness (Fort, Nowak, Jastrzebski & Narayanan 2019, "Stiffness: a new perspective on
generalization in neural networks"): how a gradient step on one example changes the loss on
another. For examples i, j with per-example loss gradients g_i, g_j:

    S_cos(i, j) = cos(g_i, g_j),    S_sign(i, j) = sign(g_i . g_j).

The class-stiffness matrix C[a, b] averages S over pairs (i in class a, j in class b,
i != j); the paper measures it on held-out data. We report the matrix and the means of its
diagonal (within-class) and off-diagonal (between-class) entries, each class weighted
equally. Higher learning rates give higher between-class stiffness (their Fig. 6).

The registered local metric ``stiffness`` (``landscape.metrics.registry``) measures the class
stiffness of a pack on test data into the ``stiffness`` table, with the stiffness against
input distance (``landscape.metrics.stiffness_distance``) when ``distance_bins`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.functional import FunctionalNet, Stack
from landscape.metrics.gradients import per_example_gradients
from landscape.metrics.registry import Column, Metric, check_ranges, register
from landscape.variant import ConfigError, setting

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer


@dataclass
class ExampleStiffness:
    cos: Tensor  # (K, n, n) S_cos between examples; 1 on the diagonal (0 for a zero gradient)
    sign: Tensor  # (K, n, n) S_sign between examples, in {-1, 0, 1}


def gradient_gram(
    net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor, *, chunk: int = 32
) -> Tensor:
    """G[k, i, j] = g_i . g_j for member k's per-example gradients (eval mode): (K, n, n).

    Computed block by block so that at most 2 * ``chunk`` per-example gradients per member
    are held at once; off-diagonal blocks recompute the gradients of their column block,
    about n / (2 chunk) times the work of one pass (none when chunk >= n).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    K, n = y.shape
    gram = torch.zeros(K, n, n, dtype=torch.float64, device=y.device)
    starts = list(range(0, n, chunk))
    for i, a in enumerate(starts):
        ga = per_example_gradients(net, stack, x[:, a : a + chunk], y[:, a : a + chunk])
        block = (ga @ ga.mT).double()
        gram[:, a : a + chunk, a : a + chunk] = (block + block.mT) / 2  # exactly symmetric
        for b in starts[i + 1 :]:
            gb = per_example_gradients(net, stack, x[:, b : b + chunk], y[:, b : b + chunk])
            block = (ga @ gb.mT).double()
            gram[:, a : a + chunk, b : b + chunk] = block
            gram[:, b : b + chunk, a : a + chunk] = block.mT
    return gram


def example_stiffness(
    net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor, *, chunk: int = 32
) -> ExampleStiffness:
    """S_cos and S_sign between every pair of the n examples of x (K, n, ...), y (K, n)."""
    gram = gradient_gram(net, stack, x, y, chunk=chunk)
    norm = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (K, n)
    cos = gram / (norm[:, :, None] * norm[:, None, :]).clamp_min(1e-300)
    return ExampleStiffness(cos.float(), gram.sign().float())


@dataclass
class ClassStiffness:
    cos: Tensor  # (K, C, C) mean S_cos over pairs of classes (NaN where a class has no pair)
    sign: Tensor  # (K, C, C) mean S_sign
    within_cos: Tensor  # (K,) mean of the diagonal of ``cos``
    between_cos: Tensor  # (K,) mean of the off-diagonal entries of ``cos``
    within_sign: Tensor  # (K,)
    between_sign: Tensor  # (K,)


def class_average(s: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """C[k, a, b] = mean of s[k, i, j] over i in class a, j in class b, i != j: (K, C, C)."""
    onehot = F.one_hot(y, num_classes).to(s.dtype)  # (K, n, C)
    off = 1 - torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
    sums = onehot.mT @ (s * off) @ onehot
    counts = onehot.mT @ off @ onehot
    return sums / counts  # 0/0 = NaN where a class has fewer than two examples (or none)


def _within_between(c: Tensor) -> tuple[Tensor, Tensor]:
    eye = torch.eye(c.shape[-1], dtype=torch.bool, device=c.device)
    return c[:, eye].nanmean(-1), c[:, ~eye].nanmean(-1)


def class_stiffness(
    net: FunctionalNet, stack: Stack, x: Tensor, y: Tensor, num_classes: int, *, chunk: int = 32
) -> ClassStiffness:
    """Class-stiffness matrices and within/between-class means on x (K, n, ...), y (K, n).

    Pass held-out data (the paper's protocol); ``pack.data.test_sample`` gives it. Memory:
    (K, n, n) Gram matrix plus 2 * ``chunk`` per-example gradients per member.
    """
    s = example_stiffness(net, stack, x, y, chunk=chunk)
    return _class_stiffness(s, y, num_classes)


def _class_stiffness(s, y: Tensor, num_classes: int) -> ClassStiffness:
    c_cos, c_sign = class_average(s.cos, y, num_classes), class_average(s.sign, y, num_classes)
    w_cos, b_cos = _within_between(c_cos)
    w_sign, b_sign = _within_between(c_sign)
    return ClassStiffness(c_cos, c_sign, w_cos, b_cos, w_sign, b_sign)


def grouped_class_stiffness(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    num_classes: int,
    groups: int,
    *,
    chunk: int = 32,
) -> tuple[ClassStiffness, ClassStiffness]:
    """Class stiffness by class (as :func:`class_stiffness`) and the same example stiffness
    averaged over ``groups`` contiguous groups of classes (class c in group c * groups // C):
    a G x G matrix where a C x C one (97 x 97 for modular arithmetic) is too many rows."""
    s = example_stiffness(net, stack, x, y, chunk=chunk)
    return _class_stiffness(s, y, num_classes), _class_stiffness(
        s, y * groups // num_classes, groups
    )


def stiffness_rows(c: ClassStiffness, members: list[int] | None = None) -> list[dict]:
    """Rows for the ``stiffness`` table: member, class_a, class_b, s_cos, s_sign (NaN -> None)."""
    K, C, _ = c.cos.shape
    members = list(range(K)) if members is None else members
    cos, sign = c.cos.tolist(), c.sign.tolist()
    rows = []
    for k, member in enumerate(members):
        for a in range(C):
            for b in range(C):
                sc, ss = cos[k][a][b], sign[k][a][b]
                rows.append(
                    {
                        "member": member,
                        "class_a": a,
                        "class_b": b,
                        "s_cos": None if sc != sc else sc,
                        "s_sign": None if ss != ss else ss,
                    }
                )
    return rows


@dataclass(frozen=True)
class StiffnessSpec:
    """Class stiffness (Fort et al. 2019) on held-out data. Off by default: it holds an
    n x n Gram matrix per member and recomputes per-example gradients blockwise."""

    enabled: bool = False
    n_samples: int = 512  # test examples (shared by the members)
    chunk: int = 32  # per-example gradients per block
    distance_bins: int = (
        0  # > 0: also stiffness against input-space distance, pairs in this many bins
    )
    distance_binning: str = "quantile"  # quantile | linear bin edges (shared by the members)
    # > 0 and fewer than the classes: the table's matrix over this many contiguous groups of
    # classes (class_a, class_b are group ids); the within/between columns stay by class
    class_groups: int = setting(0, before=0)

    def __post_init__(self) -> None:
        check_ranges(self, "stiffness", ("n_samples", "chunk"), ("distance_bins", "class_groups"))
        if self.distance_binning not in ("quantile", "linear"):
            raise ConfigError(
                f"metrics.stiffness.distance_binning must be quantile or linear, got {self.distance_binning!r}"
            )


def _stiffness(
    m: Measurer, s: StiffnessSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    # imported here: stiffness_distance builds on this module's example_stiffness
    from landscape.metrics.stiffness_distance import (
        stiffness_by_distance,
        stiffness_distance_rows,
    )

    x, y = m.test_sample(s.n_samples, sample_g)
    C = m.pack.data.num_classes
    if 0 < s.class_groups < C:
        c, table = grouped_class_stiffness(
            m.pack.net, m.stack, x, y, C, s.class_groups, chunk=s.chunk
        )
    else:
        c = table = class_stiffness(m.pack.net, m.stack, x, y, C, chunk=s.chunk)
    m.column("stiffness_within_cos", c.within_cos)
    m.column("stiffness_between_cos", c.between_cos)
    m.column("stiffness_within_sign", c.within_sign)
    m.column("stiffness_between_sign", c.between_sign)
    rows = stiffness_rows(table, m.alive)
    # on token ids the distance between id vectors is no distance between inputs: those rows
    # are left out (refused), the class stiffness above stands
    if s.distance_bins > 0 and x.is_floating_point():
        d = stiffness_by_distance(
            m.pack.net,
            m.stack,
            x,
            y,
            n_bins=s.distance_bins,
            binning=s.distance_binning,
            chunk=s.chunk,
        )
        rows += stiffness_distance_rows(d, m.alive)
    m.table("stiffness", rows)


COLUMNS = (
    Column("stiffness_within_cos", "within-class stiffness (cosine)", report=11),
    Column("stiffness_between_cos", "between-class stiffness (cosine)", report=12),
    Column("stiffness_within_sign", "within-class stiffness (sign)"),
    Column("stiffness_between_sign", "between-class stiffness (sign)"),
)
register(
    Metric(
        name="stiffness",
        spec=StiffnessSpec,
        family="local",
        order=5,
        hashed_when_off=True,
        columns=lambda s: COLUMNS,
        tables=("stiffness",),
        measure=_stiffness,
    )
)
