"""Hessian-vector products of K stacked members: the engine every curvature metric uses.

A product is ``Hv = jvp(grad(L), (w,), (v,))[1]`` (forward-over-reverse, :func:`hvp`) vmapped
over a chunk of probe vectors and over the members, the members in turn (``loop``), or, for a
loss computed in the packed layout (:class:`PackedLoss`), double backward through a retained
graph of all members at once (reverse-over-reverse). :func:`batched_hvp` builds the batched
product (replayed from a CUDA graph on a GPU), :func:`resolve_hvp` picks the way for
``hvp="auto"``, :func:`net_loss` binds a network's loss in the matching layout. The metrics
built on it live in :mod:`landscape.metrics.hessian` (trace, eigenvalues, density),
:mod:`landscape.metrics.gradients` and :mod:`landscape.metrics.sharpness`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap
from torch.utils._pytree import tree_map

from landscape.channel_layout import PackedNet
from landscape.cudagraph import CudaGraphed
from landscape.functional import FunctionalNet, Params, Stack, flatten, members, take, unflatten

LossFn = Callable[..., Tensor]  # loss(params, *args) -> scalar, for ONE member


def hvp(loss: LossFn, params: Params, args: tuple, v: Params) -> Params:
    """Hessian-vector product of one member's loss: ``H(params) v`` by forward-over-reverse."""
    return jvp(lambda p: grad(loss)(p, *args), (params,), (v,))[1]


HVP_MODES = ("vmap", "loop", "packed")


@dataclass(frozen=True)
class PackedLoss:
    """The losses of K stacked members in one call: ``fn(params (K, ...), *args) -> (K,)``,
    member k's loss depending only on member k's parameters and arguments, computed without
    vmap (e.g. by :class:`landscape.channel_layout.PackedNet`, or in closed form). Its Hessian-vector
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
    packed layout for ``packed`` (:class:`landscape.channel_layout.PackedNet`)."""
    return PackedLoss(PackedNet(net).losses) if hvp == "packed" else net.loss


def take_active(tree: Any, active: Tensor, members: int) -> Any:
    """:func:`take` of the ``active`` members, or ``tree`` itself while all are active."""
    return tree if active.numel() == members else take(tree, active)


class ActiveMembers:
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
