"""Trajectory PCA: a path in a known plane is recovered exactly, the decomposition agrees with
an SVD of the explicit matrix, and the PCA surface is the final loss at its origin."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from landscape.functional import Stack, unstack
from landscape.metrics.trajectory import (
    filter_normalize,
    pca_path_rows,
    pca_surface,
    trajectory_pca,
)
from tests.landscape.metrics.test_hessian import gen, tiny_mlp


def flat(p: dict) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in p.values()])


def plane_trajectory(T: int = 8):
    """Snapshots final + a_t e1 + b_t e2 of the tiny MLP's 43 parameters, e1/e2 random."""
    net, stack, x, y = tiny_mlp(members=1, n=24)
    final, _ = unstack(stack, 0)
    g = gen(11)
    e1, e2 = ({n: torch.randn(p.shape, generator=g) for n, p in final.items()} for _ in range(2))
    coef = torch.randn(T, 2, generator=g)
    snaps = [{n: final[n] + a * e1[n] + b * e2[n] for n in final} for a, b in coef.tolist()]
    return net, stack, x, y, final, snaps, e1, e2


def test_a_planar_trajectory_is_recovered() -> None:
    _, _, _, _, final, snaps, e1, e2 = plane_trajectory()
    pca = trajectory_pca(snaps, final)
    torch.testing.assert_close(pca.explained_variance_ratio.sum().item(), 1.0)
    d = torch.stack([flat(p) for p in pca.directions])  # (2, 43)
    torch.testing.assert_close(d @ d.T, torch.eye(2, dtype=torch.float64))  # orthonormal
    plane = torch.linalg.qr(torch.stack([flat(e1), flat(e2)]).T)[0]  # (43, 2) orthonormal basis
    torch.testing.assert_close(
        d.T - plane @ (plane.T @ d.T), torch.zeros(43, 2, dtype=torch.float64)
    )
    # the coordinates rebuild every snapshot: w_t = w_final + c_t1 d1 + c_t2 d2
    rebuilt = flat(final) + pca.path @ d
    torch.testing.assert_close(rebuilt, torch.stack([flat(s) for s in snaps]), rtol=0, atol=1e-5)


def test_matches_svd_of_the_explicit_centred_matrix() -> None:
    _, stack, _, _ = tiny_mlp(members=1)
    final, _ = unstack(stack, 0)
    g = gen(4)
    snaps = {n: p[None] + torch.randn(6, *p.shape, generator=g) for n, p in final.items()}
    pca = trajectory_pca(Stack(snaps, {}), final, n_components=3)
    m = torch.stack([flat({n: s[t] for n, s in snaps.items()}) for t in range(6)]) - flat(final)
    _, sv, vt = torch.linalg.svd(m - m.mean(0), full_matrices=False)
    torch.testing.assert_close(pca.explained_variance_ratio, sv[:3] ** 2 / (sv**2).sum())
    for j in range(3):  # equal up to sign; the sign puts the largest loading positive
        dj = flat(pca.directions[j])
        torch.testing.assert_close(dj * torch.sign(dj @ vt[j]), vt[j], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        pca.path, m @ torch.stack([flat(p) for p in pca.directions]).T, rtol=0, atol=1e-5
    )
    # a list of snapshots and a stacked dict give the same answer
    listed = trajectory_pca([{n: s[t] for n, s in snaps.items()} for t in range(6)], final)
    torch.testing.assert_close(listed.path, trajectory_pca(snaps, final).path)


def test_filter_normalised_directions() -> None:
    _, _, _, _, final, snaps, _, _ = plane_trajectory()
    pca = trajectory_pca(snaps, final, filter_normalize_pca=True)
    for d in pca.directions:
        assert torch.equal(d["body.0.bias"], torch.zeros(5)) and torch.equal(
            d["head.bias"], torch.zeros(3)
        )
        for name in ("body.0.weight", "head.weight"):
            torch.testing.assert_close(d[name].norm(dim=1), final[name].norm(dim=1))
    kept = filter_normalize(
        {"b": torch.ones(1, 3)}, {"b": torch.full((1, 3), 2.0)}, one_dim="weights"
    )
    assert kept["b"].tolist() == [[2.0, 2.0, 2.0]]
    with pytest.raises(ValueError, match="one_dim"):
        filter_normalize({}, {}, one_dim="bias")


def test_surface_origin_is_the_final_loss_and_the_grid_covers_the_path() -> None:
    net, stack, x, y, final, snaps, _, _ = plane_trajectory()
    pca = trajectory_pca(snaps, final)
    rows = pca_surface(net, stack, pca, x, y, points=5, margin=0.2, member=3)
    assert (
        len(rows) == 25
        and {r["kind"] for r in rows} == {"pca"}
        and {r["member"] for r in rows} == {3}
    )
    origin = next(r for r in rows if r["alpha"] == 0 and r["beta"] == 0)
    want = vmap(net.loss)(stack.params, stack.buffers, x, y)[0].item()
    assert origin["loss"] == pytest.approx(want, rel=1e-5)
    for j, key in enumerate(("alpha", "beta")):
        top = max(r[key] for r in rows)
        assert top == pytest.approx(1.2 * pca.path[:, j].abs().max().item())
    # any grid point is the loss at w_final + alpha d1 + beta d2; span fixes both axes
    fixed = pca_surface(net, stack, pca, x, y, points=3, span=0.7)
    assert (
        sorted({r["alpha"] for r in fixed}) == sorted({r["beta"] for r in fixed}) == [-0.7, 0, 0.7]
    )
    corner = fixed[2]  # alpha -0.7, beta 0.7
    point = {
        n: final[n] + corner["alpha"] * pca.directions[0][n] + corner["beta"] * pca.directions[1][n]
        for n in final
    }
    assert corner["loss"] == pytest.approx(net.loss(point, {}, x[0], y[0]).item(), rel=1e-5)
    path_rows = pca_path_rows(pca, member=3)
    assert len(path_rows) == 8
    assert path_rows[1] == {
        "member": 3,
        "snapshot": 1,
        "alpha": pca.path[1, 0].item(),
        "beta": pca.path[1, 1].item(),
        "explained_alpha": pca.explained_variance_ratio[0].item(),
        "explained_beta": pca.explained_variance_ratio[1].item(),
    }


def test_bad_arguments() -> None:
    _, stack, _, _ = tiny_mlp(members=1)
    final, _ = unstack(stack, 0)
    line = [{n: p + t for n, p in final.items()} for t in (1.0, 2.0, 3.0)]  # collinear
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        trajectory_pca(line, final)
    with pytest.raises(ValueError, match=r"n_components must be in \[1, 2\]"):
        trajectory_pca(line, final, n_components=3)
