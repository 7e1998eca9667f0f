"""Optimisation trajectories projected onto their principal plane, and the loss surface there.

Li, Xu, Taylor, Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS), section 7: random directions are nearly orthogonal to the path SGD takes, so to
see the path, take the parameter snapshots w_0 .. w_{T-1} of one run and the final w_n,
form the matrix M with rows w_t - w_n, and plot the path and the loss in the plane of M's
two leading principal directions. As in the authors' code (scikit-learn's PCA), the rows are
centred before the decomposition; the path coordinates are those of w_t - w_n (not centred),
so the final point sits at the origin and the surface is L(w_n + alpha d1 + beta d2).

M is never formed whole: its (T, T) Gram matrix is accumulated one parameter tensor at a
time in float64, centred and eigendecomposed (T is tens, P may be millions), and each
direction is the matching combination of centred rows, of unit norm over all parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.functional import FunctionalNet, Params, Stack
from landscape.metrics.surfaces import filter_normalize, surface_2d, symmetric_grid

RANK_TOL = 1e-10  # components with variance below this fraction of the first are "absent"


@dataclass
class TrajectoryPCA:
    directions: list[Params]  # n_components directions shaped like one member's params
    explained_variance_ratio: Tensor  # (n_components,) share of the centred rows' variance
    path: Tensor  # (T, n_components) float64 coordinates of w_t - w_final in the directions


def _as_stacked(snapshots: Stack | Params | Sequence[Params]) -> Params:
    if isinstance(snapshots, Stack):
        return snapshots.params
    if isinstance(snapshots, dict):
        return snapshots
    return {n: torch.stack([s[n] for s in snapshots]) for n in snapshots[0]}


def trajectory_pca(
    snapshots: Stack | Params | Sequence[Params],
    final: Params,
    *,
    n_components: int = 2,
    filter_normalize_pca: bool = False,
    one_dim: str = "zero",
) -> TrajectoryPCA:
    """Principal directions of one member's trajectory (Li et al. 2018, section 7).

    ``snapshots``: T parameter sets of ONE member, as a Stack or Params with leading dim T,
    or a list of unstacked Params; ``final``: that member's unstacked final parameters.
    Returns the ``n_components`` leading principal directions of the centred rows
    w_t - w_final (unit norm; each signed so that the snapshot furthest from the mean along
    it lies on its positive side, usually the initialisation), their
    explained variance ratios, and the path: each snapshot's coordinates, the least-squares
    fit of w_t - w_final in the directions (their dot products when orthonormal).

    With ``filter_normalize_pca`` the directions are filter-normalised to ``final``
    (:func:`filter_normalize`, ``one_dim`` for biases): comparable in scale with the random
    directions of :mod:`~landscape.metrics.surfaces`, but no longer orthonormal nor exactly
    in the PCA plane, so the path coordinates become a projection onto the new plane.
    """
    snaps = _as_stacked(snapshots)
    T = next(iter(snaps.values())).shape[0]
    if not 1 <= n_components < T:
        raise ValueError(
            f"n_components must be in [1, {T - 1}] for {T} snapshots, got {n_components}"
        )

    def rows(n: str) -> Tensor:  # w_t - w_final of one tensor, (T, numel), float64
        return (snaps[n] - final[n]).flatten(1).double()

    gram = sum(r @ r.T for r in map(rows, final))  # (T, T), one tensor's rows at a time
    centre = torch.eye(T, dtype=torch.float64) - 1 / T
    variance, u = torch.linalg.eigh(centre @ gram.cpu() @ centre)  # of the centred rows
    variance, u = variance.flip(0).clamp_min(0), u.flip(1)  # descending
    if variance[n_components - 1] <= RANK_TOL * variance[0]:
        raise ValueError(
            f"the trajectory spans fewer than {n_components} dimensions "
            f"(centred variances {variance[:n_components].tolist()})"
        )
    u = u[:, :n_components]
    u = u * u.gather(0, u.abs().argmax(0, keepdim=True)).sign()  # furthest snapshot > 0
    # direction j = sum_t u_tj (centred row t) / sqrt(variance_j); centring moved onto u
    coef = (centre @ u / variance[:n_components].sqrt()).to(gram.device)  # (T, n_components)
    dirs = {n: (coef.T @ rows(n)).view(n_components, *final[n].shape) for n in final}
    if filter_normalize_pca:
        dirs = filter_normalize(
            dirs, {n: final[n].double().expand_as(d) for n, d in dirs.items()}, one_dim
        )
    # least-squares coordinates: (D'D) c_t = D' r_t for every snapshot t
    flat = {n: d.flatten(1) for n, d in dirs.items()}
    overlap = sum(flat[n] @ flat[n].T for n in final)  # D'D, (n_components, n_components)
    projected = sum(flat[n] @ rows(n).T for n in final)  # D' r_t, (n_components, T)
    coords = torch.linalg.solve(overlap, projected).T.cpu()  # (T, n_components)
    directions = [
        {n: d[j].to(final[n].dtype) for n, d in dirs.items()} for j in range(n_components)
    ]
    return TrajectoryPCA(directions, variance[:n_components] / variance.sum(), coords)


def pca_surface(
    net: FunctionalNet,
    final: Stack,
    pca: TrajectoryPCA,
    x: Tensor,
    y: Tensor,
    *,
    points: int = 21,
    span: float | None = None,
    margin: float = 0.2,
    member: int = 0,
    chunk: int = 64,
    batch_size: int = 512,
) -> list[dict]:
    """Rows for the ``surfaces`` table, kind "pca": member, kind, alpha, beta, loss, accuracy
    of L(w_final + alpha d1 + beta d2) on a ``points`` x ``points`` grid, eval mode (via
    :func:`~landscape.metrics.surfaces.surface_2d`, BatchNorm statistics not recomputed).

    ``final``: the member as a stack of one; x (1, N, ...), y (1, N). The grid is symmetric
    about the final point; each axis spans [-s, s] with s = (1 + ``margin``) times the
    path's largest |coordinate| on that axis, so the whole path is covered, or s = ``span``
    on both axes when given. Odd ``points`` put the final point itself on the grid.
    """
    if final.members != 1:
        raise ValueError(f"final must be a stack of one member, got {final.members}")
    if len(pca.directions) < 2:
        raise ValueError(f"a surface needs 2 directions, got {len(pca.directions)}")
    if span is None:
        extent = pca.path[:, :2].abs().amax(0) * (1 + margin)
        spans = [s if s > 0 else 1.0 for s in extent.tolist()]
    else:
        spans = [span, span]
    alphas, betas = symmetric_grid(spans[0], points), symmetric_grid(spans[1], points)
    d1, d2 = ({n: t[None] for n, t in d.items()} for d in pca.directions[:2])
    loss, acc = surface_2d(
        net, final, d1, d2, alphas, betas, x, y, chunk=chunk, batch_size=batch_size
    )
    losses, accs = loss[0].tolist(), acc[0].tolist()
    return [
        {
            "member": member,
            "kind": "pca",
            "alpha": a,
            "beta": b,
            "loss": losses[i][j],
            "accuracy": accs[i][j],
        }
        for i, a in enumerate(alphas.tolist())
        for j, b in enumerate(betas.tolist())
    ]


def pca_path_rows(pca: TrajectoryPCA, member: int = 0) -> list[dict]:
    """Rows of the projected path: member, snapshot (index t), alpha, beta (None with a
    single component), and the share of the path's variance each direction explains
    (``explained_alpha``, ``explained_beta``; Li et al. 2018 print it on the axes)."""
    ratio = pca.explained_variance_ratio.tolist()
    shares = {"explained_alpha": ratio[0], "explained_beta": ratio[1] if len(ratio) > 1 else None}
    return [
        {
            "member": member,
            "snapshot": t,
            "alpha": c[0],
            "beta": c[1] if len(c) > 1 else None,
            **shares,
        }
        for t, c in enumerate(pca.path.tolist())
    ]
