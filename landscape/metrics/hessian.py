"""Hessian of the loss at a trained point: trace, top eigenvalues, eigenvalue density.

Every function here measures K stacked members at once. The Hessian is never formed: all
three metrics are built from Hessian-vector products (:func:`landscape.hvp.batched_hvp`), either
``Hv = jvp(grad(L), (w,), (v,))[1]`` (forward-over-reverse) vmapped over a chunk of probe
vectors and over the members, or, for a loss computed in the packed layout, by double
backward through a retained graph of all members at once (reverse-over-reverse).

Two layers:

- ``hutchinson_trace``, ``top_eigenvalues``, ``lanczos_quadrature`` take any per-member loss
  ``loss(params, *args) -> scalar`` with stacked ``params`` (K, ...) and stacked ``args``, or
  a :class:`PackedLoss` giving all K at once; the tests drive them with quadratics
  ``1/2 w'Aw`` whose answers are known.
- ``hessian_trace``, ``hessian_eigenvalues``, ``hessian_density`` bind that loss to a
  :class:`~landscape.functional.FunctionalNet` (mean cross-entropy, eval mode) and data
  ``x`` (K, N, ...), ``y`` (K, N); their ``hvp`` (``vmap``, ``loop`` or ``packed``) says how
  the products are computed. All give the same numbers (tests).

Random probe vectors are drawn from the explicit ``generator`` with the shape of ONE member
and shared by all members (common random numbers): a member's result does not depend on
which pack it sits in, and differences between members are not blurred by probe noise.

Three registered local metrics (``landscape.metrics.registry``) measure a pack with them:
``hessian_trace``, ``hessian_eigen`` (columns ``hessian_top_eig``, ``hessian_eig_2``, ...) and
``spectrum`` (the ``spectra`` table), each with its settings dataclass here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from landscape.functional import FunctionalNet, Params, Stack, member_shapes, members
from landscape.hvp import (
    HVP_MODES,
    ActiveMembers,
    LossFn,
    PackedLoss,
    batched_hvp,
    net_loss,
    rademacher,
    resolve_hvp,
    take_active,
)
from landscape.metrics.registry import Column, Metric, check_ranges, register
from landscape.variant import ConfigError, setting

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# --- trace -----------------------------------------------------------------------------------


@dataclass
class TraceEstimate:
    estimate: Tensor  # (K,) mean of v'Hv over Rademacher probes
    stderr: Tensor  # (K,) standard error of that mean
    n_probes: Tensor  # (K,) int64, probes used per member (tolerance-based stop)


def hutchinson_trace(
    loss: LossFn | PackedLoss,
    params: Params,
    args: tuple = (),
    *,
    n_probes: int = 100,
    tol: float = 1e-3,
    chunk: int = 10,
    min_probes: int = 10,
    generator: torch.Generator,
    mode: str = "vmap",
) -> TraceEstimate:
    """Hutchinson's estimator tr(H) = E[v'Hv], v Rademacher, for K stacked members.

    Probes come in chunks of ``chunk`` per call of the products (the memory bound for a
    per-member loss: one vmapped chunk holds ``chunk * K`` HVPs at once; a
    :class:`PackedLoss` takes them one after another through its retained graph). A member
    stops once it has at least ``min_probes`` probes and its standard error is
    <= ``tol * |estimate|``, or after ``n_probes``; only members still running are evaluated. Reference: Hutchinson (1989); PyHessian's ``trace``
    (Yao et al. 2020), whose defaults (100 iterations, tol 1e-3) these follow, though
    PyHessian stops on the change of the running mean rather than on its standard error.
    """
    for name, value in (("n_probes", n_probes), ("chunk", chunk), ("min_probes", min_probes)):
        _positive(name, value)
    K, shapes = members(params), member_shapes(params)
    like = next(iter(params.values()))
    size = sum(math.prod(s) for s in shapes.values())
    hv = batched_hvp(loss, shapes, shared=True, mode=mode)
    s1 = torch.zeros(K, dtype=torch.float64, device=like.device)  # running sum of v'Hv
    s2 = torch.zeros_like(s1)  # running sum of (v'Hv)^2
    used = torch.zeros(K, dtype=torch.long, device=like.device)
    active = torch.arange(K, device=like.device)
    subset = ActiveMembers(params, args)
    drawn = 0
    while drawn < n_probes and active.numel() > 0:
        c = min(chunk, n_probes - drawn)
        v = rademacher(c, size, generator, like)  # (c, P), the same probes for every member
        vhv = (hv(*subset(active), v) * v).sum(-1).double()  # (A, c)
        s1[active] += vhv.sum(1)
        s2[active] += vhv.square().sum(1)
        used[active] += c
        drawn += c
        mean, se = _mean_stderr(s1, s2, used)
        done = (used >= min_probes) & (se <= tol * mean.abs())
        active = active[~done[active]]
    mean, se = _mean_stderr(s1, s2, used)
    return TraceEstimate(mean, se, used)


def _mean_stderr(s1: Tensor, s2: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    n = n.double()
    mean = s1 / n
    var = ((s2 - s1 * mean) / (n - 1)).clamp_min(0)  # unbiased sample variance
    return mean, (var / n).sqrt()


def hessian_trace(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    n_probes: int = 100,
    tol: float = 1e-3,
    chunk: int = 10,
    min_probes: int = 10,
    generator: torch.Generator,
    hvp: str = "auto",
) -> TraceEstimate:
    """Trace of the Hessian of the mean cross-entropy (eval mode) on x (K, N, ...), y (K, N).

    Yang et al. (2021) used 100 probes on one batch of 200 training samples; the sample is
    the caller's choice (see ``HessianTraceSpec``). See :func:`hutchinson_trace`; ``hvp``:
    how the products are computed (:func:`batched_hvp`; ``auto``: :func:`resolve_hvp`).
    """
    hvp = resolve_hvp(net, hvp, x.device)
    return hutchinson_trace(
        net_loss(net, hvp),
        stack.params,
        (stack.buffers, x, y),
        n_probes=n_probes,
        tol=tol,
        chunk=chunk,
        min_probes=min_probes,
        generator=generator,
        mode=hvp,
    )


# --- top eigenvalues ---------------------------------------------------------------------------


@dataclass
class EigenEstimate:
    values: Tensor  # (K, k) eigenvalues of largest magnitude, largest magnitude first
    iterations: Tensor  # (K,) int64, iterations until all k converged (or max_iter)
    vectors: Tensor | None = (
        None  # (K, k, P) the last orthonormal block: a warm start for the next call
    )


def top_eigenvalues(
    loss: LossFn | PackedLoss,
    params: Params,
    args: tuple = (),
    *,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator,
    init: Tensor | None = None,
    mode: str = "vmap",
    shift: Tensor | None = None,
) -> EigenEstimate:
    """The k Hessian eigenvalues of largest magnitude, by subspace (block power) iteration.

    ``shift`` (K,): iterate with H + shift I instead and report its eigenvalues less the
    shift (:func:`largest_eigenvalue` uses it to find the largest signed one).

    ``init`` (K, k, P), e.g. the ``vectors`` of an earlier call, warm-starts the iteration
    (sharpness tracking during training: a few iterations per call then suffice).

    Each iteration applies H to an orthonormal block of k vectors (vmapped over the block
    and the members), takes Ritz values from the k x k projection, and re-orthonormalises
    by QR. With k = 1 this is exactly PyHessian's power iteration; for k > 1 it converges to
    the same values as PyHessian's power iteration with deflation, all k at once. A member
    stops when every Ritz value changed by less than ``tol`` relative to its previous value
    (PyHessian's criterion and defaults: 100 iterations, tol 1e-3). Like any power method it
    finds the largest |lambda|; at a trained minimum those are the top positive eigenvalues.
    Reference: Yao et al. (2020), PyHessian; Golub & Van Loan, "Matrix Computations" 8.2.
    """
    _positive("k", k)
    _positive("max_iter", max_iter)
    K, shapes = members(params), member_shapes(params)
    like = next(iter(params.values()))
    size = sum(math.prod(s) for s in shapes.values())
    if k > size:
        raise ValueError(f"k must be <= the number of parameters ({size}), got {k}")
    hv = batched_hvp(loss, shapes, shared=False, mode=mode)
    if init is not None:
        if init.shape != (K, k, size):
            raise ValueError(f"init must have shape {(K, k, size)}, got {tuple(init.shape)}")
        block = _orthonormal_rows(init.to(device=like.device, dtype=like.dtype))
    else:
        start = torch.randn(size, k, generator=generator, device=generator.device)
        block = torch.linalg.qr(start.to(device=like.device, dtype=like.dtype))[0].mT  # (k, P)
        block = block.expand(K, k, size).clone()  # (K, k, P) orthonormal rows
    values = torch.zeros(K, k, dtype=like.dtype, device=like.device)
    iterations = torch.zeros(K, dtype=torch.long, device=like.device)
    active = torch.arange(K, device=like.device)
    subset = ActiveMembers(params, args)
    for _ in range(max_iter):
        v = block[active]
        w = hv(*subset(active), v)  # (A, k, P)
        if shift is not None:
            w = w + shift[active, None, None].to(w.dtype) * v
        broken = ~w.isfinite().all(-1).all(-1)  # a diverged member: NaN values, stop it
        w = torch.where(broken[:, None, None], 0, w)
        theta, ritz = _ritz(v, w)
        theta = torch.where(broken[:, None], float("nan"), theta)
        prev = values[active]
        values[active] = theta
        iterations[active] += 1
        block[active] = _orthonormal_rows(ritz.mT @ w)  # orth(H u_i), largest first
        converged = ((theta - prev).abs() < tol * (prev.abs() + 1e-6)).all(-1) & (
            iterations[active] > 1
        )
        converged |= broken
        active = active[~converged]
        if active.numel() == 0:
            break
    if shift is not None:
        values = values - shift[:, None].to(values.dtype)
    return EigenEstimate(values, iterations, block)


def largest_eigenvalue(
    loss: LossFn | PackedLoss,
    params: Params,
    args: tuple = (),
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator,
    mode: str = "vmap",
) -> Tensor:
    """lambda_max, the largest signed Hessian eigenvalue, (K,).

    Power iteration (:func:`top_eigenvalues`, k = 1) finds the eigenvalue of largest
    magnitude; where that is negative (negative curvature dominating, as it can on one
    minibatch), the members go again on H + |lambda| I, whose dominant eigenvalue is
    lambda_max + |lambda| >= 0."""
    first = top_eigenvalues(
        loss, params, args, k=1, max_iter=max_iter, tol=tol, generator=generator, mode=mode
    ).values[:, 0]
    negative = (first < 0).nonzero().flatten()
    if negative.numel() == 0:
        return first
    K = members(params)
    again = top_eigenvalues(
        loss,
        take_active(params, negative, K),
        take_active(args, negative, K),
        k=1,
        max_iter=max_iter,
        tol=tol,
        generator=generator,
        mode=mode,
        shift=-first[negative],
    ).values[:, 0]
    return first.index_put((negative,), again)


def _orthonormal_rows(w: Tensor) -> Tensor:
    """The rows of w (..., k, P) made orthonormal in order: Gram-Schmidt, each projection
    done twice ("twice is enough", Giraud et al. 2005). Plain tensor ops on the device, no
    solver call per member (a batched QR of tall matrices loops over the batch on a GPU).
    A row in the span of the earlier ones (e.g. zeros) becomes zeros."""
    rows: list[Tensor] = []
    for i in range(w.shape[-2]):
        r = w[..., i, :]
        for _ in range(2):
            for q in rows:
                r = r - (r * q).sum(-1, keepdim=True) * q
        norm = r.norm(dim=-1, keepdim=True)
        rows.append(torch.where(norm > 0, r / norm.clamp_min(torch.finfo(r.dtype).tiny), 0))
    return torch.stack(rows, dim=-2)


def _ritz(v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Ritz values (largest magnitude first) and the rotation of v giving Ritz vectors."""
    t = v @ w.mT  # (A, k, k) = V H V'
    if t.shape[-1] == 1:  # power iteration: the Rayleigh quotient, no eigensolver
        return t[..., 0], torch.ones_like(t)
    # k x k problems, solved on the host in float64 (tiny; the loop syncs once per iteration)
    theta, u = torch.linalg.eigh(((t + t.mT) / 2).double().cpu())
    theta, u = theta.to(t), u.to(t)
    order = theta.abs().argsort(dim=-1, descending=True)
    return theta.gather(-1, order), u.gather(-1, order.unsqueeze(-2).expand_as(u))


def hessian_eigenvalues(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator,
    init: Tensor | None = None,
    hvp: str = "auto",
) -> EigenEstimate:
    """Top-k Hessian eigenvalues of the mean cross-entropy (eval mode); see
    :func:`top_eigenvalues` (and :func:`batched_hvp`, :func:`resolve_hvp` for ``hvp``)."""
    hvp = resolve_hvp(net, hvp, x.device)
    return top_eigenvalues(
        net_loss(net, hvp),
        stack.params,
        (stack.buffers, x, y),
        k=k,
        max_iter=max_iter,
        tol=tol,
        generator=generator,
        init=init,
        mode=hvp,
    )


# --- eigenvalue density --------------------------------------------------------------------------


@dataclass
class Quadrature:
    """Gauss quadrature of each member's spectral measure, one per Lanczos run.

    ``nodes`` are Ritz values, ``weights`` the squared first components of the Ritz vectors
    (each run's weights sum to 1). Runs that broke down early (the Krylov space was
    exhausted) are padded with NaN nodes and zero weights.
    """

    nodes: Tensor  # (K, n_v, m)
    weights: Tensor  # (K, n_v, m)


def lanczos_quadrature(
    loss: LossFn | PackedLoss,
    params: Params,
    args: tuple = (),
    *,
    n_iter: int = 100,
    n_v: int = 1,
    generator: torch.Generator,
    mode: str = "vmap",
) -> Quadrature:
    """Stochastic Lanczos quadrature of the Hessian's spectral density.

    ``n_v`` runs of ``n_iter`` Lanczos steps with full re-orthogonalisation, each started
    from a normalised Rademacher vector (shared by the members), vmapped over runs and
    members. Memory: the Lanczos basis, K * n_v * n_iter * P numbers. Reference: Ghorbani,
    Krishnan & Xiao (2019), "An investigation into neural net optimization via Hessian
    eigenvalue density"; defaults from PyHessian's ``density(iter=100, n_v=1)``.
    """
    _positive("n_iter", n_iter)
    _positive("n_v", n_v)
    K, shapes = members(params), member_shapes(params)
    like = next(iter(params.values()))
    size = sum(math.prod(s) for s in shapes.values())
    hv = batched_hvp(loss, shapes, shared=False, mode=mode)
    m = min(n_iter, size)  # more steps than dimensions only repeats the basis
    v = (rademacher(n_v, size, generator, like) / math.sqrt(size)).expand(K, n_v, size)
    basis = torch.zeros(K, n_v, m, size, dtype=like.dtype, device=like.device)
    alpha = torch.zeros(K, n_v, m, dtype=like.dtype, device=like.device)
    beta = torch.zeros(K, n_v, m, dtype=like.dtype, device=like.device)  # beta[j] couples j, j+1
    for j in range(m):
        basis[:, :, j] = v
        w = hv(params, args, v)  # (K, n_v, P)
        scale = w.norm(dim=-1)
        alpha[:, :, j] = (w * v).sum(-1)
        q = basis[:, :, : j + 1]  # (K, n_v, j+1, P)
        for _ in range(2):  # full re-orthogonalisation, twice (one pass is not enough in fp32)
            w = w - ((q @ w.unsqueeze(-1)).mT @ q).squeeze(-2)
        b = w.norm(dim=-1)
        alive = b > 1e-5 * scale  # breakdown: the Krylov space is invariant
        beta[:, :, j] = torch.where(alive, b, 0)
        v = torch.where(alive.unsqueeze(-1), w / b.clamp_min(1e-30).unsqueeze(-1), 0)
    return _tridiagonal_quadrature(alpha, beta)


def _tridiagonal_quadrature(alpha: Tensor, beta: Tensor) -> Quadrature:
    """Nodes and weights of each tridiagonal T (cut at its first zero beta): (K, n_v, m).

    K * n_v small eigenproblems, solved on the CPU in float64; a non-finite T (a diverged
    member) keeps NaN nodes and zero weights.
    """
    a, b = alpha.detach().double().cpu(), beta.detach().double().cpu()
    K, n_v, m = a.shape
    nodes = torch.full_like(a, float("nan"))
    weights = torch.zeros_like(a)
    for i in range(K):
        for r in range(n_v):
            zeros = (b[i, r, :-1] == 0).nonzero()
            n = int(zeros[0]) + 1 if len(zeros) else m
            off = b[i, r, : n - 1]
            t = torch.diag(a[i, r, :n]) + torch.diag(off, 1) + torch.diag(off, -1)
            if not t.isfinite().all():
                continue
            theta, u = torch.linalg.eigh(t)
            nodes[i, r, :n] = theta
            weights[i, r, :n] = u[0].square()
    return Quadrature(nodes.to(alpha), weights.to(alpha))


@dataclass
class SpectralDensity:
    grid: Tensor  # (K, G) bin centres (eigenvalue)
    density: Tensor  # (K, G) density at each bin; sum(density * bin width) = 1
    quadrature: Quadrature


def broadened_density(
    q: Quadrature, *, n_grid: int = 1000, sigma2: float = 1e-5, margin: float = 0.01
) -> SpectralDensity:
    """Gaussian-broadened density of a quadrature on a per-member grid.

    As PyHessian's ``density_generate``: the Gaussian variance is ``sigma2 * max(1, w)`` with
    w the width of [smallest node - margin, largest node + margin]; runs are averaged and the
    result normalised to integrate to 1. Two deliberate differences: the grid spans that
    interval widened by 4 standard deviations of the Gaussian (and the extreme nodes of all
    runs, not their mean), so no mass falls off the ends and the density's mean equals the
    quadrature's; and each grid value is the Gaussian mass in its bin divided by the bin
    width, so a narrow peak between two grid points is not lost on a coarse grid.
    PyHessian uses 10,000 bins; ``n_grid`` is a knob.
    """
    _positive("n_grid", n_grid)
    nodes, weights = q.nodes.double(), q.weights.double()
    lo = nodes.nan_to_num(float("inf")).amin((-2, -1)) - margin  # (K,)
    hi = nodes.nan_to_num(float("-inf")).amax((-2, -1)) + margin
    sigma = (sigma2 * (hi - lo).clamp_min(1)).sqrt()
    lo, hi = lo - 4 * sigma, hi + 4 * sigma
    frac = torch.linspace(0, 1, n_grid + 1, dtype=torch.float64, device=nodes.device)
    edges = lo[:, None] + (hi - lo)[:, None] * frac  # (K, G+1)
    z = (edges[:, None, None, :] - nodes.nan_to_num(0)[..., None]) / sigma[:, None, None, None]
    cdf = torch.special.ndtr(z)  # (K, n_v, m, G+1)
    mass = ((cdf[..., 1:] - cdf[..., :-1]) * weights[..., None]).sum(2).mean(1)  # (K, G)
    width = (hi - lo) / n_grid
    density = mass / (mass.sum(-1, keepdim=True) * width[:, None])
    grid = (edges[:, 1:] + edges[:, :-1]) / 2
    return SpectralDensity(grid.to(q.nodes.dtype), density.to(q.nodes.dtype), q)


def hessian_density(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    *,
    n_iter: int = 100,
    n_v: int = 1,
    n_grid: int = 1000,
    sigma2: float = 1e-5,
    generator: torch.Generator,
    hvp: str = "auto",
) -> SpectralDensity:
    """Hessian eigenvalue density of the mean cross-entropy (eval mode) by stochastic Lanczos
    quadrature; see :func:`lanczos_quadrature` and :func:`broadened_density`."""
    hvp = resolve_hvp(net, hvp, x.device)
    q = lanczos_quadrature(
        net_loss(net, hvp),
        stack.params,
        (stack.buffers, x, y),
        n_iter=n_iter,
        n_v=n_v,
        generator=generator,
        mode=hvp,
    )
    return broadened_density(q, n_grid=n_grid, sigma2=sigma2)


# ---- the registered metrics: settings, the step that measures a pack, its columns ----


def _check_hvp(value: str, name: str) -> None:
    allowed = ("auto", *HVP_MODES)
    if value not in allowed:
        raise ConfigError(f"metrics.{name}.hvp must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class HessianTraceSpec:
    """Hutchinson trace. Yang et al. (2021) used 100 probes on one batch of 200 training
    samples; PyHessian's maintainer warns 200 samples is noisy, so our sample is larger."""

    enabled: bool = True
    n_samples: int = 512  # training examples per member
    n_probes: int = 100  # Yang et al., PyHessian
    tol: float = 1e-3  # stop a member once its standard error <= tol * |estimate| (PyHessian's tol)
    chunk: int = 10  # probes per call: the memory bound (vmap: chunk * K HVPs at once)
    min_probes: int = 10  # never stop before this many probes
    # how Hessian-vector products are computed (landscape.hvp.resolve_hvp), not what
    hvp: str = setting("auto", launch=True)

    def __post_init__(self) -> None:
        check_ranges(
            self, "hessian_trace", ("n_samples", "n_probes", "chunk", "min_probes"), ("tol",)
        )
        _check_hvp(self.hvp, "hessian_trace")


@dataclass(frozen=True)
class HessianEigenSpec:
    """Top-k Hessian eigenvalues by power (subspace) iteration; PyHessian: 100 iterations,
    tol 1e-3, top_n 1. Yang et al. report the top eigenvalue."""

    enabled: bool = True
    n_samples: int = 512
    k: int = 1  # columns hessian_top_eig, hessian_eig_2, ..., hessian_eig_k
    max_iter: int = 100
    tol: float = 1e-3  # relative change of every Ritz value between iterations
    # how Hessian-vector products are computed (landscape.hvp.resolve_hvp), not what
    hvp: str = setting("auto", launch=True)

    def __post_init__(self) -> None:
        check_ranges(self, "hessian_eigen", ("n_samples", "k", "max_iter"), ("tol",))
        _check_hvp(self.hvp, "hessian_eigen")


@dataclass(frozen=True)
class SpectrumSpec:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019); PyHessian's
    ``density(iter=100, n_v=1)`` with Gaussian broadening sigma^2 = 1e-5 (times the spectrum's
    width when wider than 1). Off by default: it writes n_grid rows per member."""

    enabled: bool = False
    n_samples: int = 512
    n_iter: int = 100  # Lanczos steps (memory: K * n_v * n_iter * P numbers)
    n_v: int = 1  # independent Lanczos runs, averaged
    n_grid: int = 1000  # grid points per member (PyHessian uses 10,000)
    sigma2: float = 1e-5
    # how Hessian-vector products are computed (landscape.hvp.resolve_hvp), not what
    hvp: str = setting("auto", launch=True)

    def __post_init__(self) -> None:
        check_ranges(self, "spectrum", ("n_samples", "n_iter", "n_v", "n_grid", "sigma2"))
        _check_hvp(self.hvp, "spectrum")


def _trace(
    m: Measurer, s: HessianTraceSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    est = hessian_trace(
        m.pack.net,
        m.stack,
        x,
        y,
        n_probes=s.n_probes,
        tol=s.tol,
        chunk=m.probe_chunk(s.chunk, x.shape[1]),
        min_probes=s.min_probes,
        generator=probe_g,
        hvp=s.hvp,
    )
    m.column("hessian_trace", est.estimate)
    m.column("hessian_trace_se", est.stderr)
    m.column("hessian_trace_probes", est.n_probes)


# Second derivatives of the loss (nats) in the weights' own coordinates.
HESSIAN_UNIT = "nats / weight^2"
TRACE_COLUMNS = (
    Column(
        "hessian_trace",
        "Hessian trace",
        unit=HESSIAN_UNIT,
        log=True,
        report=0,
        summary=True,
        phase_diagram=True,
    ),
    Column("hessian_trace_se", "standard error of the Hessian trace"),
    Column("hessian_trace_probes", "Hutchinson probes the Hessian trace took"),
)
register(
    Metric(
        name="hessian_trace",
        spec=HessianTraceSpec,
        family="local",
        order=0,
        hashed_when_off=True,
        on_by_default=True,
        columns=lambda s: TRACE_COLUMNS,
        measure=_trace,
    )
)


def _eigen(
    m: Measurer, s: HessianEigenSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    est = hessian_eigenvalues(
        m.pack.net,
        m.stack,
        x,
        y,
        k=s.k,
        max_iter=s.max_iter,
        tol=s.tol,
        generator=probe_g,
        hvp=s.hvp,
    )
    for column, values in zip(_eigen_columns(s), est.values.T):
        m.column(column.name, values)


TOP_EIGENVALUE = Column(
    "hessian_top_eig",
    "top Hessian eigenvalue",
    unit=HESSIAN_UNIT,
    log=True,
    report=1,
    summary=True,
    phase_diagram=True,
)


def _eigen_columns(s: HessianEigenSpec) -> tuple[Column, ...]:
    """hessian_top_eig, then hessian_eig_j for the j-th largest-magnitude eigenvalue, j <= k."""
    more = (
        Column(f"hessian_eig_{j}", f"Hessian eigenvalue {j} by magnitude")
        for j in range(2, s.k + 1)
    )
    return (TOP_EIGENVALUE, *more)


register(
    Metric(
        name="hessian_eigen",
        spec=HessianEigenSpec,
        family="local",
        order=1,
        hashed_when_off=True,
        columns=_eigen_columns,
        measure=_eigen,
    )
)


def _spectrum(
    m: Measurer, s: SpectrumSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    x, y = m.train_sample(s.n_samples, sample_g)
    d = hessian_density(
        m.pack.net,
        m.stack,
        x,
        y,
        n_iter=s.n_iter,
        n_v=s.n_v,
        n_grid=s.n_grid,
        sigma2=s.sigma2,
        generator=probe_g,
        hvp=s.hvp,
    )
    grid, density = d.grid.tolist(), d.density.tolist()
    rows = [
        {"member": k, "eigenvalue": e, "density": p}
        for i, k in enumerate(m.alive)
        for e, p in zip(grid[i], density[i])
    ]
    m.table("spectra", rows)


register(
    Metric(
        name="spectrum",
        spec=SpectrumSpec,
        family="local",
        order=2,
        hashed_when_off=True,
        tables=("spectra",),
        measure=_spectrum,
    )
)
