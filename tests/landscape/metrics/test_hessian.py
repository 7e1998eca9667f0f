"""Hessian trace, top eigenvalues and density against quadratics and exact small Hessians."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import hessian

from landscape.functional import (
    FunctionalNet,
    Stack,
    init_stack,
    member_shapes,
    unflatten,
    unstack,
)
from landscape.hvp import PackedLoss, batched_hvp, net_loss, resolve_hvp
from landscape.metrics.hessian import (
    broadened_density,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    hutchinson_trace,
    lanczos_quadrature,
    largest_eigenvalue,
    top_eigenvalues,
)
from landscape.models import MLP, build_model
from landscape.variant import ModelSpec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quadratic(p: dict, a: torch.Tensor) -> torch.Tensor:
    """1/2 w'Aw for one member: its Hessian is A (symmetric)."""
    w = p["w"]
    return 0.5 * w @ a @ w


def spd(n: int, eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(eigenvalues) Q' with a seeded random orthogonal Q."""
    q = torch.linalg.qr(torch.randn(n, n, generator=gen(seed), dtype=torch.float64))[0]
    return (q * eigenvalues) @ q.T


def quadratic_pack(mats: list[torch.Tensor]) -> tuple[dict, tuple]:
    k, n = len(mats), mats[0].shape[0]
    params = {"w": torch.randn(k, n, generator=gen(1), dtype=torch.float64)}
    return params, (torch.stack(mats),)


def tiny_mlp(
    members: int = 2, width: int = 5, n: int = 16, dtype: torch.dtype = torch.float32
) -> tuple[FunctionalNet, Stack, torch.Tensor, torch.Tensor]:
    """An MLP 4 -> 5 -> 3 (43 parameters: 4*5+5 + 5*3+3) and per-member data, in ``dtype``."""
    net, stack = init_stack(
        lambda: MLP(4, 3, width, 1, batch_norm=False), list(range(members)), "cpu"
    )
    x = torch.randn(members, n, 4, generator=gen(2))
    y = torch.randint(0, 3, (members, n), generator=gen(3))
    return net, stack.to("cpu", dtype), x.to(dtype), y


def exact_hessian(
    net: FunctionalNet, stack: Stack, x: torch.Tensor, y: torch.Tensor, k: int
) -> torch.Tensor:
    """The full Hessian of member k's loss w.r.t. its flattened parameters, (P, P)."""
    params, buffers = unstack(stack, k)
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.flatten() for p in params.values()])

    def loss(f: torch.Tensor) -> torch.Tensor:
        parts = f.split([math.prod(s) for s in shapes])
        return net.loss(
            {n: t.view(s) for n, t, s in zip(names, parts, shapes)}, buffers, x[k], y[k]
        )

    return hessian(loss)(flat)


# --- trace -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "eigs",
    [
        pytest.param(torch.linspace(0.1, 3.0, 30, dtype=torch.float64), id="psd"),
        pytest.param(torch.linspace(-2.0, 5.0, 30, dtype=torch.float64), id="indefinite"),
    ],
)
def test_hutchinson_on_quadratic_within_3_stderr(eigs: torch.Tensor) -> None:
    mats = [spd(30, eigs, seed=s) for s in (0, 1, 2)]
    params, args = quadratic_pack(mats)
    est = hutchinson_trace(
        quadratic, params, args, n_probes=200, tol=0.0, chunk=25, generator=gen()
    )
    assert est.n_probes.tolist() == [200, 200, 200]
    exact = eigs.sum()
    assert ((est.estimate - exact).abs() <= 3 * est.stderr).all(), (est.estimate, exact, est.stderr)
    assert (est.stderr > 0).all()


def test_hutchinson_diagonal_is_exact_and_stops_at_min_probes() -> None:
    # Rademacher v: v'Dv = tr(D) exactly for diagonal D, so the standard error is 0.
    d = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    params, args = quadratic_pack([d, 2 * d])
    est = hutchinson_trace(
        quadratic, params, args, n_probes=100, chunk=5, min_probes=10, generator=gen()
    )
    torch.testing.assert_close(est.estimate, torch.tensor([55.0, 110.0], dtype=torch.float64))
    assert est.n_probes.tolist() == [10, 10]


def test_tolerance_stops_members_independently() -> None:
    # member 0 is diagonal (exact after min_probes); member 1 is noisy and runs to n_probes
    eigs = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64) + 0.05
    params, args = quadratic_pack([torch.eye(20, dtype=torch.float64), spd(20, eigs, seed=4)])
    est = hutchinson_trace(
        quadratic, params, args, n_probes=40, tol=1e-3, chunk=10, generator=gen()
    )
    assert est.n_probes.tolist() == [10, 40]


def test_hessian_trace_mlp_matches_exact() -> None:
    net, stack, x, y = tiny_mlp()
    est = hessian_trace(net, stack, x, y, n_probes=300, tol=0.0, chunk=50, generator=gen())
    for k in range(2):
        exact = exact_hessian(net, stack, x, y, k).trace().double()
        assert abs(est.estimate[k] - exact) <= 3 * est.stderr[k], (
            k,
            est.estimate[k],
            exact,
            est.stderr[k],
        )


def test_hessian_trace_pack_equals_members() -> None:
    """Trace estimates of a pack against each member alone with the same probes: one evaluation
    of a tiny float32 MLP, so no rounding compounds; within 0.002 of the tolerance (measured
    with 1 and 2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3)
    pack = hessian_trace(net, stack, x, y, n_probes=30, tol=1e-2, chunk=10, generator=gen(7))
    for k in range(3):
        alone = hessian_trace(
            net,
            stack.member(k),
            x[k : k + 1],
            y[k : k + 1],
            n_probes=30,
            tol=1e-2,
            chunk=10,
            generator=gen(7),
        )
        torch.testing.assert_close(pack.estimate[k : k + 1], alone.estimate, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pack.stderr[k : k + 1], alone.stderr, rtol=1e-4, atol=1e-6)
        assert pack.n_probes[k] == alone.n_probes[0]


def test_trace_rejects_bad_knobs() -> None:
    params, args = quadratic_pack([torch.eye(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="chunk must be > 0"):
        hutchinson_trace(quadratic, params, args, chunk=0, generator=gen())


# --- top eigenvalues ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_match_eig_of_quadratic(k: int) -> None:
    eigs = [
        torch.tensor([10.0, 6.0, 4.0, 1.0, 0.5, -0.5, 0.2, 0.1], dtype=torch.float64),
        torch.tensor([3.0, -2.0, 1.5, 1.0, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64),
    ]
    params, args = quadratic_pack([spd(8, e, seed=i) for i, e in enumerate(eigs)])
    est = top_eigenvalues(quadratic, params, args, k=k, max_iter=1000, tol=1e-10, generator=gen())
    for member, e in enumerate(eigs):
        want = e[e.abs().argsort(descending=True)][:k]  # largest magnitude first
        torch.testing.assert_close(est.values[member], want, rtol=1e-4, atol=0)
    assert (est.iterations < 1000).all()


def test_largest_eigenvalue_is_the_largest_signed_one() -> None:
    """Where negative curvature dominates (member 1: -10 against a largest of 3), power
    iteration alone finds -10; the shifted second pass finds lambda_max = 3."""
    eigs = [
        torch.tensor([10.0, 6.0, 4.0, 1.0, 0.5, -0.5, 0.2, 0.1], dtype=torch.float64),
        torch.tensor([-10.0, 3.0, 1.5, 1.0, 0.5, -0.3, 0.2, 0.1], dtype=torch.float64),
        torch.tensor([-4.0, -2.0, -1.0, -0.5, -0.4, -0.3, -0.2, -0.1], dtype=torch.float64),
    ]
    params, args = quadratic_pack([spd(8, e, seed=i) for i, e in enumerate(eigs)])
    top = top_eigenvalues(quadratic, params, args, max_iter=2000, tol=1e-12, generator=gen())
    torch.testing.assert_close(top.values[:, 0], torch.tensor([10.0, -10.0, -4.0]).double())
    got = largest_eigenvalue(quadratic, params, args, max_iter=2000, tol=1e-12, generator=gen())
    torch.testing.assert_close(got, torch.tensor([10.0, 3.0, -0.1]).double(), rtol=1e-6, atol=0)


def test_top_eigenvalues_mlp_match_exact_hessian() -> None:
    net, stack, x, y = tiny_mlp()
    est = hessian_eigenvalues(net, stack, x, y, k=2, max_iter=2000, tol=1e-7, generator=gen())
    for member in range(2):
        exact = torch.linalg.eigvalsh(exact_hessian(net, stack, x, y, member).double())
        want = exact[exact.abs().argsort(descending=True)][:2].float()
        torch.testing.assert_close(est.values[member], want, rtol=1e-3, atol=1e-5)


def test_top_eigenvalues_pack_equals_members() -> None:
    """Power iteration in a pack against each member alone (50 iterations converge, they do not
    amplify rounding); within 0.003 of the tolerance (measured with 1 and 2 threads and
    ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3)
    pack = hessian_eigenvalues(net, stack, x, y, k=2, max_iter=50, generator=gen(5))
    for k in range(3):
        alone = hessian_eigenvalues(
            net, stack.member(k), x[k : k + 1], y[k : k + 1], k=2, max_iter=50, generator=gen(5)
        )
        torch.testing.assert_close(pack.values[k : k + 1], alone.values, rtol=1e-4, atol=1e-6)
        assert pack.iterations[k] == alone.iterations[0]


# --- eigenvalue density ------------------------------------------------------------------------


def test_lanczos_nodes_are_eigenvalues_when_krylov_space_is_full() -> None:
    # 12 distinct eigenvalues, more Lanczos steps than dimensions: Gauss quadrature is exact.
    e = torch.linspace(-1.0, 4.0, 12, dtype=torch.float64)
    params, args = quadratic_pack([spd(12, e, seed=0)])
    q = lanczos_quadrature(quadratic, params, args, n_iter=30, n_v=2, generator=gen())
    for r in range(2):
        nodes = q.nodes[0, r][~q.nodes[0, r].isnan()]
        torch.testing.assert_close(nodes.sort().values, e, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(q.weights[0, r].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_density_integrates_to_one_and_mean_is_trace_over_n() -> None:
    # diagonal A: a Rademacher start gives v'Av/n = tr(A)/n exactly, so the measure's mean is exact
    n = 40
    d = torch.linspace(0.0, 2.0, n, dtype=torch.float64) ** 2
    params, args = quadratic_pack([torch.diag(d), torch.diag(3 * d)])
    q = lanczos_quadrature(quadratic, params, args, n_iter=15, n_v=2, generator=gen())
    dens = broadened_density(q, n_grid=4000, sigma2=1e-5)
    width = dens.grid[:, 1] - dens.grid[:, 0]
    torch.testing.assert_close(
        (dens.density * width[:, None]).sum(-1), torch.ones(2, dtype=torch.float64)
    )
    mean = (dens.grid * dens.density * width[:, None]).sum(-1)
    torch.testing.assert_close(mean, torch.stack([d.mean(), 3 * d.mean()]), rtol=1e-3, atol=1e-4)
    quad_mean = (q.nodes.nan_to_num(0) * q.weights).sum(-1)  # (K, n_v), exact per run
    torch.testing.assert_close(
        quad_mean, torch.stack([d.mean(), 3 * d.mean()])[:, None].expand(2, 2)
    )


def test_density_mlp_pack_equals_members_and_is_normalised() -> None:
    """Lanczos densities of a pack against each member alone (8 iterations of a tiny MLP);
    within 0.04 of the tolerance (measured with 1 and 2 threads and
    ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=2)
    pack = hessian_density(net, stack, x, y, n_iter=20, n_grid=200, generator=gen(9))
    assert pack.grid.shape == pack.density.shape == (2, 200)
    assert (pack.density >= 0).all()
    for k in range(2):
        alone = hessian_density(
            net,
            stack.member(k),
            x[k : k + 1],
            y[k : k + 1],
            n_iter=20,
            n_grid=200,
            generator=gen(9),
        )
        torch.testing.assert_close(pack.grid[k : k + 1], alone.grid, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pack.density[k : k + 1], alone.density, rtol=1e-3, atol=1e-3)
    # the quadrature's extreme nodes bracket the extreme eigenvalues (Ritz values interlace)
    exact = torch.linalg.eigvalsh(exact_hessian(net, stack, x, y, 0).double())
    nodes = pack.quadrature.nodes[0, 0][~pack.quadrature.nodes[0, 0].isnan()].double()
    assert exact.min() - 1e-4 <= nodes.min() and nodes.max() <= exact.max() + 1e-4


@pytest.mark.parametrize("hvp", ["vmap", "packed"])
def test_a_nan_member_gives_nan_and_leaves_the_others_alone(hvp: str) -> None:
    """A NaN member's metrics read NaN and the others equal those of a clean pack of the same
    shape (same kernels on their numbers); within 0.03 of the tolerance (measured with 1 and 2
    threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3)
    poisoned = stack.clone()
    for p in poisoned.params.values():
        p[1] = float("nan")
    kwargs = {"generator": gen(1), "hvp": hvp}
    runs = {
        "trace": lambda st: hessian_trace(net, st, x, y, n_probes=20, **kwargs).estimate,
        "eig": lambda st: hessian_eigenvalues(net, st, x, y, k=2, max_iter=20, **kwargs).values,
        "density": lambda st: hessian_density(net, st, x, y, n_iter=8, n_grid=20, **kwargs).density,
    }
    for name, run in runs.items():
        kwargs["generator"] = gen(1)
        clean = run(stack)
        kwargs["generator"] = gen(1)
        dirty = run(poisoned)
        assert dirty[1].isnan().all(), name
        torch.testing.assert_close(dirty[[0, 2]], clean[[0, 2]], msg=name)


@pytest.mark.parametrize("mode", ["loop", "packed"])
def test_every_hvp_mode_equals_vmapped_hvp(mode: str) -> None:
    """Members in turn, or all members in the packed layout by double backward, give the
    trace, eigenvalues and density the vmapped forward-over-reverse products give. In
    float64: 30 Lanczos/power iterations amplify the modes' float32 rounding to 0.66 of a
    1e-4 tolerance (measured), which another CPU's kernels could pass; in float64 the modes
    agree to ~1e-13 relative, so 1e-9 holds on any CPU and a wrong product is off by O(1)."""
    net, stack, x, y = tiny_mlp(members=3, dtype=torch.float64)
    out = {}
    for m in ("vmap", mode):
        kw = {"generator": gen(3), "hvp": m}
        out[m] = (
            hessian_trace(net, stack, x, y, n_probes=20, tol=0.0, chunk=7, **kw).estimate,
            hessian_eigenvalues(net, stack, x, y, k=2, max_iter=30, tol=0.0, **kw).values,
            hessian_density(net, stack, x, y, n_iter=8, n_grid=50, **kw).density,
        )
    for a, b in zip(out["vmap"], out[mode]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["vmap", "loop", "packed"])
def test_hessian_of_a_batchnorm_cnn_in_float64_matches_the_exact_hessian(mode: str) -> None:
    """BatchNorm models run in float64 end to end (eval mode: running statistics), so their
    Hessian can be checked exactly: the top eigenvalue from every product mode equals the
    largest-magnitude eigenvalue of the full Hessian (torch.func.hessian), and the Hutchinson
    trace with P probes sits within its standard error of the exact trace."""
    spec = ModelSpec("cnn", width=2, batch_norm=True)
    net, stack = init_stack(lambda: build_model(spec, (1, 6, 6), 3), [0, 1], "cpu")
    stack = stack.to("cpu", torch.float64)
    stack.buffers = {  # running statistics away from (0, 1), as after training
        n: (b + 0.3 if "mean" in n else b * 1.5) if b.is_floating_point() else b
        for n, b in stack.buffers.items()
    }
    x = torch.randn(2, 12, 1, 6, 6, generator=gen(2), dtype=torch.float64)
    y = torch.randint(0, 3, (2, 12), generator=gen(3))
    top = hessian_eigenvalues(
        net, stack, x, y, k=1, max_iter=3000, tol=1e-12, generator=gen(), hvp=mode
    )
    trace = hessian_trace(net, stack, x, y, n_probes=400, tol=0.0, generator=gen(), hvp=mode)
    for member in range(2):
        h = exact_hessian(net, stack, x, y, member)
        assert h.dtype == torch.float64
        exact = torch.linalg.eigvalsh(h)
        want = exact[exact.abs().argmax()]
        torch.testing.assert_close(top.values[member, 0], want, rtol=1e-6, atol=0)
        err = abs(trace.estimate[member].item() - h.trace().item())
        assert err < 4 * trace.stderr[member].item()


@pytest.mark.parametrize(
    ("name", "width", "batch_norm", "skips"),
    [("cnn", 3, True, True), ("resnet18", 2, True, True), ("resnet18", 2, False, False),
     ("vgg9", 2, True, True)],
)  # fmt: skip
def test_packed_hvp_equals_vmapped_hvp_on_conv_nets(
    name: str, width: int, batch_norm: bool, skips: bool
) -> None:
    """Products by double backward in the packed layout (grouped convolutions, BatchNorm in
    eval mode over K*C channels) equal forward-over-reverse per member, probe by probe."""
    spec = ModelSpec(name, width=width, batch_norm=batch_norm, skip=skips)
    net, stack = init_stack(lambda: build_model(spec, (3, 8, 8), 5), [0, 1, 2], "cpu")
    for b in stack.buffers.values():  # running statistics away from (0, 1), as after training
        if b.is_floating_point():
            b.uniform_(0.5, 1.5, generator=gen(4))
    x, y = (
        torch.randn(3, 6, 3, 8, 8, generator=gen(5)),
        torch.randint(0, 5, (3, 6), generator=gen(6)),
    )
    shapes = member_shapes(stack.params)
    size = sum(math.prod(s) for s in shapes.values())
    rows = torch.randn(3, 4, size, generator=gen(7))
    args = (stack.buffers, x, y)
    want = batched_hvp(net.loss, shapes, shared=False)(stack.params, args, rows)
    packed = batched_hvp(net_loss(net, "packed"), shapes, shared=False, mode="packed")
    got = packed(stack.params, args, rows)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    again = packed(stack.params, args, rows[:, :2])  # the retained graph, used again
    torch.testing.assert_close(again, want[:, :2], rtol=1e-4, atol=1e-5)


def test_packed_hvp_follows_new_parameters() -> None:
    """The retained graph belongs to the parameters it was built from: other parameters
    (a shrunken set of active members, or a new point) get a graph of their own."""
    net, stack, x, y = tiny_mlp(members=3)
    shapes = member_shapes(stack.params)
    rows = torch.randn(2, 43, generator=gen(8))
    vmapped = batched_hvp(net.loss, shapes, shared=True)
    packed = batched_hvp(net_loss(net, "packed"), shapes, shared=True, mode="packed")
    moved = {n: p * 1.5 for n, p in stack.params.items()}
    for params in (stack.params, moved, stack.params):
        args = (stack.buffers, x, y)
        torch.testing.assert_close(packed(params, args, rows), vmapped(params, args, rows))


def test_packed_loss_on_quadratics() -> None:
    """A PackedLoss in closed form: trace, top eigenvalue and density mean of 1/2 w'Aw."""
    eigs = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    params, args = quadratic_pack([spd(5, eigs, 0), spd(5, eigs * 2, 1)])
    loss = PackedLoss(lambda p, a: 0.5 * torch.einsum("kp,kpq,kq->k", p["w"], a, p["w"]))
    est = hutchinson_trace(
        loss, params, args, n_probes=400, tol=0.0, generator=gen(), mode="packed"
    )
    want = torch.tensor([eigs.sum(), 2 * eigs.sum()], dtype=torch.float64)
    assert ((est.estimate - want).abs() <= 3 * est.stderr).all()
    top = top_eigenvalues(
        loss, params, args, k=2, max_iter=500, tol=1e-12, generator=gen(), mode="packed"
    )
    torch.testing.assert_close(top.values, torch.stack([eigs[:2], 2 * eigs[:2]]), rtol=1e-4, atol=0)
    # diagonal A: a Rademacher start gives v'Av/n = tr(A)/n exactly, the quadrature's mean
    params, args = quadratic_pack([torch.diag(eigs), torch.diag(2 * eigs)])
    q = lanczos_quadrature(loss, params, args, n_iter=5, n_v=2, generator=gen(), mode="packed")
    mean = (q.nodes.nan_to_num(0) * q.weights).sum(-1)  # (K, n_v)
    torch.testing.assert_close(mean, (want / 5)[:, None].expand(2, 2))
    with pytest.raises(ValueError, match="hvp mode 'vmap' needs a per-member loss, not a Packed"):
        hutchinson_trace(loss, params, args, generator=gen())


def test_unknown_hvp_mode_is_refused() -> None:
    net, stack, x, y = tiny_mlp()
    with pytest.raises(ValueError, match="hvp must be one of auto, vmap, loop, packed, got 'x'"):
        hessian_trace(net, stack, x, y, n_probes=2, generator=gen(), hvp="x")


def test_auto_hvp_is_packed_on_a_cpu_when_the_layers_allow_it() -> None:
    net, _, _, _ = tiny_mlp()
    assert resolve_hvp(net, "auto", torch.device("cpu")) == "packed"
    assert resolve_hvp(net, "auto", torch.device("cuda")) == "vmap"  # until measured there
    assert resolve_hvp(net, "loop", torch.device("cpu")) == "loop"
    odd = FunctionalNet(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(4)))
    assert resolve_hvp(odd, "auto", torch.device("cpu")) == "vmap"  # no packed LayerNorm


def test_packed_products_build_one_graph_per_set_of_active_members() -> None:
    """With tolerance stops, members leave at different times: packed products give what
    vmapped ones give, and build their retained graph once per set of members still running."""
    net, stack, x, y = tiny_mlp(members=3)
    losses = net_loss(net, "packed")
    built = []

    def counting(p, *rest):
        built.append(p["head.weight"].shape[0])  # members in this retained graph
        return losses.fn(p, *rest)

    counted = PackedLoss(counting)
    params, args = stack.params, (stack.buffers, x, y)
    for run in (
        lambda loss, mode: (
            hutchinson_trace(
                loss, params, args, n_probes=200, tol=0.1, chunk=5, generator=gen(4), mode=mode
            ).estimate
        ),
        lambda loss, mode: (
            top_eigenvalues(
                loss, params, args, k=1, max_iter=200, tol=1e-4, generator=gen(4), mode=mode
            ).values
        ),
    ):
        built.clear()
        want = run(net.loss, "vmap")
        torch.testing.assert_close(run(counted, "packed"), want, rtol=1e-4, atol=1e-6)
        assert built == sorted(set(built), reverse=True)  # 3, then fewer: never rebuilt
        assert len(built) >= 2, built  # members did leave early: the test saw a smaller set


TOKENS = ModelSpec("transformer", width=8, depth=1, heads=2, mlp_ratio=2)  # vocab 5, T = 3


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_transformer_hessian_products_and_trace_equal_the_exact_float64_hessian(mode) -> None:
    """A tiny float64 transformer on token ids (attention written out, so forward-mode
    derivatives exist on a CPU): every Hessian-vector product equals H v with H the exact
    Hessian of the flattened parameters (torch.autograd.functional.hessian: reverse over
    reverse, no vmap; torch.func.hessian was itself wrong on PyTorch's fused LayerNorm, which
    the model therefore writes out), and the Hutchinson trace is
    exactly the mean of v'Hv over the probes it drew (the same seeded Rademacher draws). Both
    sides are the same float64 sums in different orders: ~1e-13 apart, so 1e-9 holds; a
    wrong product (first order only, a missing term) is off by O(1). The packed products
    refuse the transformer (LayerNorm has no packed layout), so ``auto`` resolves to vmap."""
    net, stack = init_stack(lambda: build_model(TOKENS, (3,), 4, vocab=5), [0, 1], "cpu")
    stack = stack.to("cpu", torch.float64)
    x = torch.randint(0, 5, (2, 10, 3), generator=gen(2))
    y = torch.randint(0, 4, (2, 10), generator=gen(3))
    assert resolve_hvp(net, "auto", torch.device("cpu")) == "vmap"
    shapes = member_shapes(stack.params)
    size = sum(math.prod(s) for s in shapes.values())
    v = torch.randn(3, size, generator=gen(4), dtype=torch.float64)
    hv = batched_hvp(net.loss, shapes, shared=True, mode=mode)(
        stack.params, (stack.buffers, x, y), v
    )  # (K, 3, P)
    probes = torch.randint(0, 2, (6, size), generator=gen(5)).double() * 2 - 1  # rademacher(6)
    trace = hessian_trace(
        net, stack, x, y, n_probes=6, chunk=6, tol=0.0, generator=gen(5), hvp=mode
    )
    for k in range(2):
        params, buffers = unstack(stack, k)
        flat = torch.cat([p.flatten() for p in params.values()])
        h = torch.autograd.functional.hessian(
            lambda f, b=buffers, k=k: net.loss(unflatten(f, shapes), b, x[k], y[k]), flat
        )
        assert h.dtype == torch.float64 and h.shape == (size, size)
        torch.testing.assert_close(hv[k], v @ h, rtol=1e-9, atol=1e-12)
        want = ((probes @ h) * probes).sum(-1).mean()
        torch.testing.assert_close(trace.estimate[k], want, rtol=1e-9, atol=1e-12)
