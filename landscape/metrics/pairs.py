"""Global metrics of a trained pack: between seeds of a replicate group, and toward initialisation.

Two entry points, both pure functions of a :class:`~landscape.pack.TrainedPack`, typed
settings and an explicit generator:

- :func:`measure_pairs`: for pairs of members of one replicate group, one row each with
  ``member_a``, ``member_b`` (positions in the pack) and the ``pairs`` columns of the enabled
  metrics of the ``pairs`` pass; plus path rows (``PAIR_SURFACE_COLUMNS``: linear
  interpolation and Bezier curve).
- :func:`measure_member_surfaces`: the ``runs`` columns of the enabled metrics of the
  ``member_surfaces`` pass (one value per pack member, None for diverged members) and surface
  rows (:data:`MEMBER_SURFACE_COLUMNS`: MLI path, filter-normalised 1-D and 2-D surfaces).

The metrics (``distance``, ``cka``, ``barrier``, ``bezier``, ``mli``, ``surface``) and the
``batch_norm`` setting are registered, with their settings and columns, by their own modules
(``landscape.metrics.registry``, family ``global``); their computation is here, where they
share each pair's data and the BatchNorm recomputation of path points.

Diverged members (``pack.alive`` False) are skipped. Columns of disabled metrics are absent.

Data. A pair is evaluated (barrier, Bezier curve) and its curve trained on training
examples drawn half from each member's own training set, with that member's labels: with
full data and no label noise both halves come from the same set; with subsets or label
noise the pair's data is the union of both views. CKA inputs come from the same union (or
the shared test set). BatchNorm statistics of path points are recomputed from such batches.
Units: losses in nats (mean cross-entropy), accuracies as fractions, errors (``barrier_error``,
``mc``) in percentage points.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from landscape.functional import Stack
from landscape.metrics.batchnorm import bn_batches, has_batchnorm
from landscape.metrics.bezier import bezier_connectivity
from landscape.metrics.cka import CKASpec, mixup_inputs, pair_cka
from landscape.metrics.distance import l2_distance
from landscape.metrics.interpolation import linear_barrier, monotonic_linear_interpolation
from landscape.metrics.surfaces import (
    filter_normalized_direction,
    roughness_index,
    surface_1d,
    surface_2d,
    symmetric_grid,
)
from landscape.pack import PackData, TrainedPack

if TYPE_CHECKING:
    from landscape.measure import MetricsSpec

# Columns of the surfaces rows (the metrics' own columns are registered with them).
PAIR_SURFACE_COLUMNS = (
    "member_a",
    "member_b",
    "kind",
    "alpha",
    "loss",
    "accuracy",
)  # kind: interpolation | bezier
MEMBER_SURFACE_COLUMNS = (
    "member",
    "kind",
    "alpha",
    "beta",
    "loss",
    "accuracy",
)  # kind: mli | 1d | 2d


@dataclass
class PairsResult:
    rows: list[dict] = field(default_factory=list)  # one per pair
    surfaces: list[dict] = field(default_factory=list)  # one per pair x path point


@dataclass
class SurfacesResult:
    columns: dict[str, list] = field(default_factory=dict)  # name -> one value per pack member
    surfaces: list[dict] = field(default_factory=list)  # one per member x grid point


def select_pairs(
    group_members: list[list[int]], alive: Tensor, max_pairs: int, generator: torch.Generator
) -> list[tuple[int, int]]:
    """All pairs (a < b) of alive members within each group; a seeded subset of ``max_pairs``
    per group when there are more."""
    alive_list = alive.tolist()
    pairs: list[tuple[int, int]] = []
    for group in group_members:
        living = sorted(m for m in group if alive_list[m])
        candidates = list(itertools.combinations(living, 2))
        if len(candidates) > max_pairs:
            keep = torch.randperm(len(candidates), generator=generator)[:max_pairs].sort().values
            candidates = [candidates[i] for i in keep.tolist()]
        pairs.extend(candidates)
    return pairs


def _gather(data: PackData, members: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Positions pos (P, h) into the training sets of ``members`` (P,) -> x (P, h, ...), y (P, h)."""
    idx = data.train_idx[members].gather(1, pos)
    return data.x_train[idx], data.y_train[members].gather(1, pos)


def _positions(n_train: int, rows: int, h: int, generator: torch.Generator, device) -> Tensor:
    """``rows`` independent draws of h distinct positions in [0, n_train): (rows, h)."""
    draws = [torch.randperm(n_train, generator=generator)[:h] for _ in range(rows)]
    return torch.stack(draws).to(device)


def _shuffle_rows(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """An independent permutation of dim 1 for every row of x (P, n, ...) and y (P, n)."""
    P, n = y.shape
    order = _positions(n, P, n, generator, y.device)
    x_order = order.view(P, n, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, x_order), y.gather(1, order)


def pair_sample(
    data: PackData, a: Tensor, b: Tensor, n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """n training examples per pair, half from each member's own set (with its labels),
    shuffled together: x (P, n', ...), y (P, n'), n' = min(n, 2 n_train)."""
    h_a = min(n // 2, data.n_train)
    h_b = min(n - h_a, data.n_train)
    P, device = len(a), data.train_idx.device
    xa, ya = _gather(data, a, _positions(data.n_train, P, h_a, generator, device))
    xb, yb = _gather(data, b, _positions(data.n_train, P, h_b, generator, device))
    return _shuffle_rows(torch.cat([xa, xb], 1), torch.cat([ya, yb], 1), generator)


class PairBatches:
    """Epochs of training batches for P pairs: each step takes batch_size/2 examples from each
    member's own shuffled training set; an epoch is n_train // batch_size steps."""

    def __init__(self, data: PackData, a: Tensor, b: Tensor, batch_size: int):
        self.data, self.a, self.b = data, a, b
        self.half = max(1, min(batch_size // 2, data.n_train))
        self.steps_per_epoch = max(1, data.n_train // (2 * self.half))
        self.step = 0
        self.perm_a = self.perm_b = None

    def __call__(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        k = self.step % self.steps_per_epoch
        device = self.data.train_idx.device
        if k == 0:  # a new epoch: fresh shuffles of both members' training sets
            n = self.data.n_train
            self.perm_a = _positions(n, len(self.a), n, generator, device)
            self.perm_b = _positions(n, len(self.b), n, generator, device)
        self.step += 1
        window = slice(k * self.half, (k + 1) * self.half)
        xa, ya = _gather(self.data, self.a, self.perm_a[:, window])
        xb, yb = _gather(self.data, self.b, self.perm_b[:, window])
        return torch.cat([xa, xb], 1), torch.cat([ya, yb], 1)


def _bn_batch_count(pack: TrainedPack, specs: MetricsSpec) -> int:
    """Training inputs needed for BN recomputation; 0 when the model has no BatchNorm."""
    bn = specs.batch_norm
    return bn.n_batches * bn.batch_size if bn.enabled and has_batchnorm(pack.net) else 0


def _pair_bn_x(
    pack: TrainedPack, specs: MetricsSpec, a: Tensor, b: Tensor, g: torch.Generator
) -> Tensor | None:
    """BN recomputation batches (P, m, B, ...) from each pair's training data, or None."""
    n = _bn_batch_count(pack, specs)
    if n == 0:
        return None
    x, _ = pair_sample(pack.data, a, b, n, g)
    return bn_batches(x, specs.batch_norm.n_batches, specs.batch_norm.batch_size)


def _member_bn_x(
    pack: TrainedPack, specs: MetricsSpec, idx: Tensor, g: torch.Generator
) -> Tensor | None:
    """BN recomputation batches (K', m, B, ...) from the members' own training data, or None."""
    n = _bn_batch_count(pack, specs)
    if n == 0:
        return None
    x, _ = pack.data.train_sample(n, g)
    return bn_batches(x[idx], specs.batch_norm.n_batches, specs.batch_norm.batch_size)


def _cka_inputs(
    data: PackData, a: Tensor, b: Tensor, spec: CKASpec, generator: torch.Generator
) -> Tensor:
    if spec.inputs == "test":
        x, _ = data.test_sample(spec.n_inputs, generator)  # shared by all members: (K, n, ...)
        return x[0].expand(len(a), *x.shape[1:])
    x, _ = pair_sample(data, a, b, spec.n_inputs, generator)
    # token ids cannot be mixed (a mix of two ids is no input): CKA on token data compares the
    # models' representations of the real training inputs (docs/metrics.md)
    mix = spec.inputs == "mixup" and x.is_floating_point()
    return mixup_inputs(x, generator, spec.mixup_concentration) if mix else x


def _path_rows(
    a: Tensor, b: Tensor, kind: str, alphas: Tensor, loss: Tensor, acc: Tensor
) -> list[dict]:
    rows = []
    losses, accs = loss.tolist(), acc.tolist()  # one device sync, not one per value
    for p, (ma, mb) in enumerate(zip(a.tolist(), b.tolist())):
        for i, alpha in enumerate(alphas.tolist()):
            row = {"member_a": ma, "member_b": mb, "kind": kind, "alpha": alpha}
            rows.append({**row, "loss": losses[p][i], "accuracy": accs[p][i]})
    return rows


BEZIER_COLUMNS = ("mc", "bezier_loss_prev", "bezier_loss_last", "bezier_improvement")


def _bezier(
    pack: TrainedPack,
    A: Stack,
    B: Stack,
    a: Tensor,
    b: Tensor,
    specs: MetricsSpec,
    g: torch.Generator,
) -> tuple[dict[str, Tensor], list[dict]]:
    """Bezier curves for all pairs, ``pairs_per_stack`` at a time: (P,) columns (mc and the
    curve's convergence, ``bezier.convergence``) and path rows."""
    spec = specs.bezier
    cols: dict[str, list[Tensor]] = {k: [] for k in BEZIER_COLUMNS}
    rows = []
    for start in range(0, len(a), spec.pairs_per_stack):
        sel = list(range(start, min(start + spec.pairs_per_stack, len(a))))
        sa, sb = a[sel], b[sel]
        batches = PairBatches(pack.data, sa, sb, spec.batch_size)
        x, y = pair_sample(pack.data, sa, sb, spec.n_samples, g)
        bn_x = _pair_bn_x(pack, specs, sa, sb, g)
        res = bezier_connectivity(
            pack.net,
            A.select(sel),
            B.select(sel),
            batches,
            spec.epochs * batches.steps_per_epoch,
            x,
            y,
            g,
            ts=spec.ts,
            bn_x=bn_x,
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            chunk=specs.eval_chunk,
            batch_size=specs.eval_batch_size,
            precision=pack.variants[0].train.precision,
            cuda_graphs=pack.variants[0].train.cuda_graphs,
        )
        cols["mc"].append(res.mc)
        cols["bezier_loss_prev"].append(res.loss_prev.to(res.mc))
        cols["bezier_loss_last"].append(res.loss_last.to(res.mc))
        cols["bezier_improvement"].append(res.improvement.to(res.mc))
        rows += _path_rows(sa, sb, "bezier", res.ts, res.curve_loss, res.curve_accuracy)
    return {k: torch.cat(v) for k, v in cols.items()}, rows


def measure_pairs(
    pack: TrainedPack,
    group_members: list[list[int]],
    specs: MetricsSpec,
    generator: torch.Generator,
    pairs: list[tuple[int, int]] | None = None,
) -> PairsResult:
    """Global metrics between pairs of alive members of each replicate group (positions in the
    pack), all pairs of the pack evaluated as one stack: those :func:`select_pairs` chooses,
    or the given ``pairs`` (of alive members). See the module docstring for data and units,
    the metrics' registered columns for the columns."""
    if pairs is None:
        pairs = select_pairs(group_members, pack.alive, specs.max_pairs, generator)
    else:
        alive = pack.alive.tolist()
        pairs = [(a, b) for a, b in pairs if alive[a] and alive[b]]
    out = PairsResult()
    if not pairs:
        return out
    device = pack.data.train_idx.device
    a = torch.tensor([p[0] for p in pairs], device=device)
    b = torch.tensor([p[1] for p in pairs], device=device)
    A, B = pack.final.select(a), pack.final.select(b)
    cols: dict[str, Tensor] = {}
    if specs.distance.enabled:
        cols["l2_distance"] = l2_distance(A.params, B.params)
    if specs.cka.enabled:
        c = specs.cka
        x = _cka_inputs(pack.data, a, b, c, generator)
        cka = pair_cka(
            pack.net,
            A,
            B,
            x,
            kinds=c.representations,
            unbiased_batch_size=c.unbiased_batch_size if c.unbiased else None,
            rbf_threshold=c.rbf_threshold if c.rbf else None,
            batch_size=specs.eval_batch_size,
        )
        cols.update({f"cka_{k}": v for k, v in cka.items()})
    if specs.barrier.enabled:
        x, y = pair_sample(pack.data, a, b, specs.barrier.n_samples, generator)
        bn_x = _pair_bn_x(pack, specs, a, b, generator)
        res = linear_barrier(
            pack.net,
            A,
            B,
            x,
            y,
            n_alphas=specs.barrier.n_alphas,
            bn_x=bn_x,
            chunk=specs.eval_chunk,
            batch_size=specs.eval_batch_size,
        )
        cols["barrier_loss"], cols["barrier_error"] = res.loss, res.error
        out.surfaces += _path_rows(
            a, b, "interpolation", res.alphas, res.curve_loss, res.curve_accuracy
        )
    if specs.bezier.enabled:
        curved = _curved_pairs(pack, pairs, specs.bezier.max_pairs)
        idx = torch.tensor(curved, dtype=torch.long, device=device)
        curves, rows = _bezier(pack, A.select(idx), B.select(idx), a[idx], b[idx], specs, generator)
        for k, v in curves.items():
            cols[k] = torch.full((len(pairs),), float("nan"), device=v.device).index_copy(
                0, idx.to(v.device), v
            )
        out.surfaces += rows
    values = {k: v.tolist() for k, v in cols.items()}
    for p, (ma, mb) in enumerate(pairs):
        out.rows.append(
            {"member_a": ma, "member_b": mb, **{k: float(v[p]) for k, v in values.items()}}
        )
    return out


def _curved_pairs(pack: TrainedPack, pairs: list[tuple[int, int]], per_group: int) -> list[int]:
    """Positions in ``pairs`` that get a Bezier curve: the first ``per_group`` pairs of each
    replicate group in seed order (every pair when ``per_group`` is 0)."""
    if per_group == 0:
        return list(range(len(pairs)))
    seeds = [v.seed for v in pack.variants]
    by_group: dict[str, list[int]] = {}
    for i, (ma, _) in enumerate(pairs):
        by_group.setdefault(pack.variants[ma].group_id, []).append(i)
    keep = [
        i
        for members in by_group.values()
        for i in sorted(members, key=lambda i: sorted((seeds[pairs[i][0]], seeds[pairs[i][1]])))[
            :per_group
        ]
    ]
    return sorted(keep)


def _surface_rows(
    members: list[int],
    kind: str,
    alphas: list[float],
    betas: list[float | None],
    loss: Tensor,
    acc: Tensor,
) -> list[dict]:
    """Rows for loss/acc shaped (K, G) at G points (alphas[i], betas[i])."""
    rows = []
    losses, accs = loss.tolist(), acc.tolist()  # one device sync, not one per value
    for k, m in enumerate(members):
        for i, (alpha, beta) in enumerate(zip(alphas, betas)):
            row = {"member": m, "kind": kind, "alpha": alpha, "beta": beta}
            rows.append({**row, "loss": losses[k][i], "accuracy": accs[k][i]})
    return rows


def _spread(values: Tensor, members: list[int], n: int) -> list:
    """Per-alive-member values -> one entry per pack member, None for the dead."""
    out: list = [None] * n
    for m, v in zip(members, values.tolist()):
        out[m] = v
    return out


def measure_member_surfaces(
    pack: TrainedPack, specs: MetricsSpec, generator: torch.Generator
) -> SurfacesResult:
    """Per-member global metrics: distance to the initialisation, MLI, filter-normalised 1-D
    and 2-D surfaces and the roughness index (the metrics' registered columns)."""
    out = SurfacesResult()
    K = pack.data.members
    members = pack.alive.nonzero().flatten().tolist()
    if not members:
        return out
    idx = torch.tensor(members, device=pack.data.train_idx.device)
    final, init = pack.final.select(idx), pack.init.select(idx)
    kw = {"chunk": specs.eval_chunk, "batch_size": specs.eval_batch_size}
    if specs.distance.enabled:
        out.columns["dist_to_init"] = _spread(l2_distance(final.params, init.params), members, K)
    if specs.mli.enabled:
        x, y = pack.data.train_sample(specs.mli.n_samples, generator)
        bn_x = _member_bn_x(pack, specs, idx, generator)
        res = monotonic_linear_interpolation(
            pack.net,
            init,
            final,
            x[idx],
            y[idx],
            n_alphas=specs.mli.n_alphas,
            tol=specs.mli.tol,
            bn_x=bn_x,
            **kw,
        )
        out.columns["mli_monotonic"] = _spread(res.monotonic, members, K)
        out.columns["mli_max_bump"] = _spread(res.max_bump, members, K)
        alphas = res.alphas.tolist()
        out.surfaces += _surface_rows(
            members, "mli", alphas, [None] * len(alphas), res.loss, res.accuracy
        )
    if specs.surface.enabled:
        rows, roughness = _filter_surfaces(pack, final, idx, members, specs, generator)
        out.surfaces += rows
        out.columns.update({k: _spread(v, members, K) for k, v in roughness.items()})
    return out


def _filter_surfaces(
    pack: TrainedPack,
    final: Stack,
    idx: Tensor,
    members: list[int],
    specs: MetricsSpec,
    generator: torch.Generator,
) -> tuple[list[dict], dict[str, Tensor]]:
    """Filter-normalised 1-D and 2-D surface rows of the living members, and their roughness
    columns (per living member)."""
    s = specs.surface
    kw = {"chunk": specs.eval_chunk, "batch_size": specs.eval_batch_size}
    x, y = pack.data.train_sample(s.n_samples, generator)
    x, y = x[idx], y[idx]
    d1 = filter_normalized_direction(final.params, generator, s.one_dim)
    d2 = filter_normalized_direction(final.params, generator, s.one_dim)
    rows: list[dict] = []
    if s.points_1d:
        alphas = symmetric_grid(s.span, s.points_1d)
        loss, acc = surface_1d(pack.net, final, d1, alphas, x, y, **kw)
        rows += _surface_rows(members, "1d", alphas.tolist(), [None] * s.points_1d, loss, acc)
    if s.points_2d:
        grid = symmetric_grid(s.span, s.points_2d)
        loss, acc = surface_2d(pack.net, final, d1, d2, grid, grid, x, y, **kw)
        a, b = torch.meshgrid(grid, grid, indexing="ij")
        rows += _surface_rows(
            members,
            "2d",
            a.flatten().tolist(),
            b.flatten().tolist(),
            loss.flatten(1),
            acc.flatten(1),
        )
    if s.roughness_directions:
        r = roughness_index(
            pack.net,
            final,
            x,
            y,
            generator,
            n_directions=s.roughness_directions,
            n_points=s.roughness_points,
            span=s.span,
            one_dim=s.one_dim,
            **kw,
        )
        return rows, {"roughness": r.index, "roughness_std": r.std}
    return rows, {}
