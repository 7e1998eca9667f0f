"""Hessian of the loss at a trained point: trace, top eigenvalues, eigenvalue density.

Every function here measures K stacked members at once. The Hessian is never formed: all
three metrics are built from Hessian-vector products (:func:`batched_hvp`), either
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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap
from torch.utils._pytree import tree_map

from landscape.cudagraph import CudaGraphed
from landscape.functional import FunctionalNet, Params, Stack
from landscape.packed import PackedNet

LossFn = Callable[..., Tensor]  # loss(params, *args) -> scalar, for ONE member


# --- plumbing shared by the metric modules -------------------------------------------------


def take(tree: Any, index: Tensor) -> Any:
    """Members ``index`` of a stacked pytree (tensors, dicts, tuples, lists)."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, index.to(tree.device))
    if isinstance(tree, dict):
        return {k: take(v, index) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(take(v, index) for v in tree)
    raise TypeError(f"cannot index members of a {type(tree).__name__}")


def members(params: Params) -> int:
    return next(iter(params.values())).shape[0]


def flatten(tree: Params, start: int = 0) -> Tensor:
    """Concatenate a dict of tensors into one vector per leading index: (*lead, P)."""
    return torch.cat([t.flatten(start) for t in tree.values()], dim=start)


def unflatten(flat: Tensor, shapes: dict[str, torch.Size]) -> Params:
    """Inverse of :func:`flatten` for one vector per leading index: (*lead, P) -> dict."""
    lead = flat.shape[:-1]
    sizes = [math.prod(s) for s in shapes.values()]
    parts = flat.split(sizes, dim=-1)
    return {n: part.reshape(*lead, *s) for (n, s), part in zip(shapes.items(), parts)}


def member_shapes(params: Params) -> dict[str, torch.Size]:
    """Shapes of one member's parameters (the stacked dim dropped)."""
    return {n: p.shape[1:] for n, p in params.items()}


def hvp(loss: LossFn, params: Params, args: tuple, v: Params) -> Params:
    """Hessian-vector product of one member's loss: ``H(params) v`` by forward-over-reverse."""
    return jvp(lambda p: grad(loss)(p, *args), (params,), (v,))[1]


HVP_MODES = ("vmap", "loop", "packed")


@dataclass(frozen=True)
class PackedLoss:
    """The losses of K stacked members in one call: ``fn(params (K, ...), *args) -> (K,)``,
    member k's loss depending only on member k's parameters and arguments, computed without
    vmap (e.g. by :class:`landscape.packed.PackedNet`, or in closed form). Its Hessian-vector
    products come from plain double backward through a retained graph (:func:`batched_hvp`)."""

    fn: Callable[..., Tensor]


def batched_hvp(
    loss: LossFn | PackedLoss, shapes: dict[str, torch.Size], shared: bool, mode: str = "vmap"
) -> Callable[..., Tensor]:
    """``(params (K,..), args (K,..), V) -> HV (K, c, P)`` with flat probe rows.

    ``V`` is (c, P) shared by every member when ``shared``, else (K, c, P) per member.

    For a per-member :data:`LossFn`, products are forward-over-reverse and the probes of a
    member are always vmapped (their tangents fold into the batch and output channels of
    ordinary kernels); ``mode`` says how members share kernels: ``vmap`` batches them too
    (grouped kernels: best for small models), ``loop`` takes one member after another on
    views of the stacked tensors (ordinary kernels, and the memory of one member at a time).
    On an H100, CIFAR ResNet18 up to width 16, ``vmap`` was the faster by 1.1-2.4x (README,
    benchmarks), so it is the default and ``loop`` the way to fit a pack that does not fit.

    A :class:`PackedLoss` (``mode`` ``packed``) is differentiated by reverse-over-reverse, the
    way PyHessian does it for one model, here for K members at once: one forward and one
    backward with ``create_graph`` per set of ``(params, args)``, kept while the same objects
    come back (a trace's probe chunks, a power iteration's steps), then one more backward
    through that graph per probe. So a call costs a second backward per probe, not a whole
    forward-over-reverse pass.

    On a CUDA device the call is replayed from a CUDA graph per argument shape (the metrics
    call it with the same shapes again and again; see :mod:`landscape.cudagraph`), which
    removes the launches.
    """
    if mode not in HVP_MODES:
        raise ValueError(f"hvp mode must be one of {', '.join(HVP_MODES)}, got {mode!r}")
    if isinstance(loss, PackedLoss) != (mode == "packed"):
        need = "a PackedLoss" if mode == "packed" else "a per-member loss, not a PackedLoss"
        raise ValueError(f"hvp mode {mode!r} needs {need}")
    if isinstance(loss, PackedLoss):
        return _RetainedProducts(loss, shapes, shared)

    def member(p: Params, a: tuple, rows: Tensor) -> Tensor:  # rows (c, P)
        return vmap(lambda v: flatten(hvp(loss, p, a, unflatten(v, shapes))))(rows)

    if mode == "vmap":
        return CudaGraphed(vmap(member, in_dims=(0, 0, None if shared else 0)))

    def looped(params: Params, args: tuple, rows: Tensor) -> Tensor:
        return torch.stack(
            [
                member(
                    {n: t[k] for n, t in params.items()},
                    tree_map(lambda t, k=k: t[k], args),
                    rows if shared else rows[k],
                )
                for k in range(members(params))
            ]
        )

    return CudaGraphed(looped)


class _RetainedProducts:
    """Hessian-vector products of a :class:`PackedLoss` by double backward (see
    :func:`batched_hvp`). The retained graph belongs to the last ``(params, args)`` objects
    seen (compared by identity: the metrics pass the same objects while their members do not
    change); on a CUDA device it is built, and the products recorded and replayed, on one
    stream of its own, as autograd runs a backward node on its forward's stream."""

    def __init__(self, loss: PackedLoss, shapes: dict[str, torch.Size], shared: bool):
        self.loss, self.shapes, self.shared = loss, shapes, shared
        self.bound: tuple[Params, tuple] | None = None  # kept alive, so ids are not reused
        self.stream: torch.cuda.Stream | None = None
        self.graphed: CudaGraphed | None = None

    def __call__(self, params: Params, args: tuple, rows: Tensor) -> Tensor:
        if self.bound is None or self.bound[0] is not params or self.bound[1] is not args:
            self._bind(params, args)
        assert self.graphed is not None
        return self.graphed(rows)

    def _bind(self, params: Params, args: tuple) -> None:
        self.bound = (params, args)
        like = next(iter(params.values()))
        if like.is_cuda and self.stream is None:
            self.stream = torch.cuda.Stream(like.device)
        if self.graphed is None:
            self.graphed = CudaGraphed(self._products, stream=self.stream)
        self.graphed.reset()  # recorded products read the old graph
        if self.stream is None:
            self._retain(params, args)
            return
        main = torch.cuda.current_stream(like.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            self._retain(params, args)
        main.wait_stream(self.stream)

    def _retain(self, params: Params, args: tuple) -> None:
        self.leaves = [p.detach().requires_grad_() for p in params.values()]
        with torch.enable_grad():
            total = self.loss.fn(dict(zip(params, self.leaves)), *args).sum()
            grads = torch.autograd.grad(total, self.leaves, create_graph=True, allow_unused=True)
        # a gradient that does not depend on the parameters has a zero Hessian row (and,
        # by symmetry, column): it takes no part in the second backward
        self.used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.used]

    def _products(self, rows: Tensor) -> Tensor:
        K = self.leaves[0].shape[0]
        out = []
        for j in range(rows.shape[-2]):
            v = rows[j].expand(K, rows.shape[-1]) if self.shared else rows[:, j]  # (K, P)
            parts = list(unflatten(v, self.shapes).values())
            hv = torch.autograd.grad(
                self.grads,
                self.leaves,
                grad_outputs=[parts[i] for i in self.used],
                retain_graph=True,
                allow_unused=True,
            )
            out.append(
                torch.cat(
                    [
                        (h if h is not None else torch.zeros_like(p)).flatten(1)
                        for h, p in zip(hv, self.leaves)
                    ],
                    dim=1,
                )
            )
        return torch.stack(out, dim=1)  # (K, c, P)


def resolve_hvp(net: FunctionalNet, hvp: str, device: torch.device) -> str:
    """``hvp`` of the ``hessian_*`` functions resolved: ``auto`` is ``packed`` on a CPU when
    the model's layers allow the packed layout, else ``vmap``. On this project's 2-core CPU,
    ``bench_hessian.py --quick`` (cnn, mlp, ResNet18; ``benchmarks/results/
    bench_hessian_cpu.json``) had the packed products 1.0-1.8x as fast as ``vmap`` for the
    trace and 1.8-3.4x for the top eigenvalue (the retained graph saves a forward and a
    backward per power iteration). On a CUDA device ``vmap``: on an H200 (ResNet18 width 4, 8
    members, a 100-probe trace) the packed products took 22.6 s against vmap's 1.95 s, since
    double backward through the retained graph launches its kernels one member-layer at a
    time where vmap's forward-over-reverse batches them (``benchmarks/NOTES.md``)."""
    if hvp not in ("auto", *HVP_MODES):
        raise ValueError(f"hvp must be one of auto, {', '.join(HVP_MODES)}, got {hvp!r}")
    if hvp != "auto":
        return hvp
    if device.type == "cuda":
        return "vmap"
    try:
        PackedNet(net)
    except ValueError:
        return "vmap"
    return "packed"


def net_loss(net: FunctionalNet, hvp: str) -> LossFn | PackedLoss:
    """The mean cross-entropy (eval mode) of ``net``'s members, ``(params, buffers, x, y)``, in
    the form ``hvp`` differentiates: per member for ``vmap`` and ``loop``, all members in the
    packed layout for ``packed`` (:class:`landscape.packed.PackedNet`)."""
    return PackedLoss(PackedNet(net).losses) if hvp == "packed" else net.loss


def take_active(tree: Any, active: Tensor, members: int) -> Any:
    """:func:`take` of the ``active`` members, or ``tree`` itself while all are active."""
    return tree if active.numel() == members else take(tree, active)


class _ActiveMembers:
    """``(params, args)`` of the active members, the same objects while the set is the same
    (so a :class:`PackedLoss`'s retained graph is built once per set, not once per call)."""

    def __init__(self, params: Params, args: tuple):
        self.params, self.args, self.K = params, args, members(params)
        self.key: tuple[int, ...] | None = None

    def __call__(self, active: Tensor) -> tuple[Params, tuple]:
        key = tuple(active.tolist())
        if key != self.key:
            self.key = key
            self.value = (
                take_active(self.params, active, self.K),
                take_active(self.args, active, self.K),
            )
        return self.value


def rademacher(n: int, size: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """(n, size) entries +-1 with probability 1/2, drawn on the generator's device."""
    r = torch.randint(0, 2, (n, size), generator=generator, device=generator.device)
    return (2 * r - 1).to(device=like.device, dtype=like.dtype)


def minibatch_members(
    stack: Stack, x: Tensor, y: Tensor, batch_size: int
) -> tuple[Stack, Tensor, Tensor]:
    """View K members on N examples as K*M members on disjoint minibatches of ``batch_size``.

    Member ``k * M + j`` is member k on its j-th minibatch (M = N // batch_size; a remainder
    is dropped). Parameters are repeated, so memory grows M-fold; results reshape to (K, M).
    """
    K, N = y.shape
    if not 0 < batch_size <= N:
        raise ValueError(f"batch_size must be in [1, {N}] (the sample size), got {batch_size}")
    M = N // batch_size
    idx = torch.arange(K, device=y.device).repeat_interleave(M)
    view = stack.select(idx)
    xb = x[:, : M * batch_size].reshape(K * M, batch_size, *x.shape[2:])
    return view, xb, y[:, : M * batch_size].reshape(K * M, batch_size)


def member_loss(loss: LossFn, params: Params, args: tuple) -> Tensor:
    """(K,) loss of every member at its own parameters."""
    return vmap(lambda p, a: loss(p, *a))(params, args)


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
    subset = _ActiveMembers(params, args)
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
    subset = _ActiveMembers(params, args)
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
