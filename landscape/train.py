"""The packed training engine: K variants trained as one stacked model, read top to bottom.

- :func:`train_pack`, the loop: per epoch each member's own shuffle, then per step a batch,
  the schedule's learning rates and one :func:`train_step`; evaluations on a schedule; the
  checkpoint the metrics measure.
- :func:`train_step`, one step in place: the gradient of every member's loss over the stacked
  parameters (:class:`StepFn`), one update of the whole pack (:func:`apply_update`), the
  deaths of this step. On a GPU it is recorded once as a CUDA graph and replayed
  (:class:`GraphedTrainStep`).
- The gradient, three ways that compute the same function (tests compare them): ``vmap``
  (functorch batches the members into each kernel), ``loop`` (members in turn, plain
  autograd on the module's own forward) and ``packed`` (members side by side in the channel
  dimension, :mod:`landscape.channel_layout`); :func:`step_mode` picks one.
- The update: the optimiser's state as (K, P) matrices (:class:`SlotState`) and
  :func:`apply_update`, which applies one of :mod:`landscape.optim`'s update rules (small
  pure functions, torch.optim's semantics) to the whole pack at once and checks divergence.
- Evaluation: eval-mode loss and accuracy of every member (:func:`evaluate_pack`).

Each member keeps its own seed (initialisation and data order), learning rate, momentum,
weight decay and label noise, so a pack of K ends where K solo runs would (tests check this).

A member whose loss turns NaN or inf, or whose update makes a parameter non-finite (or
larger than :data:`DIVERGED_ABOVE`), is marked diverged at that step; from then on its
parameters, optimiser state and BatchNorm statistics are zero (so no NaN of it can reach the
others through a batched kernel) and its losses and accuracies read NaN. The others go on
unchanged. No host sync in the hot loop on a GPU: divergence is tracked with tensor ops and
read once per epoch (on a CPU, where a read costs no wait, each step reads whether every
member is alive and skips the masking if so).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_flatten

from landscape.augment import augment_batch
from landscape.channel_layout import PackedNet, channels_last_images
from landscape.cudagraph import CudaGraphed
from landscape.data import Dataset, member_view, subset_size
from landscape.datasets import train_set_size
from landscape.functional import BoundModule, FunctionalNet, Params, Stack, init_stack
from landscape.models import build_model, model_forward_flops, native_norm
from landscape.objective import classification_loss, loss_precision
from landscape.optim import (
    LocalHypers,
    MemberHypers,
    lr_factor,
    lr_multiplier,
    sgd_in_place,
    update_rule,
)
from landscape.pack import PackData, TrainedPack, pack_key
from landscape.variant import ConfigError, ModelSpec, OptimSpec, TrainSpec, Variant

EVAL_CHUNK = 2048  # examples per member per vmapped evaluation call


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing for fp32. The cast cache is off: it may not outlive a CUDA
    graph capture, and no weight is used twice in one of our forward passes."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def make_pack_data(variants: Sequence[Variant], dataset: Dataset) -> PackData:
    """Per-member training views (subset and label noise seeded by each variant's seed)."""
    views = [member_view(dataset, v.data, v.seed) for v in variants]
    return PackData(
        x_train=dataset.x_train,
        train_idx=torch.stack([idx for idx, _ in views]),
        y_train=torch.stack([y for _, y in views]),
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        num_classes=dataset.num_classes,
        seeds=tuple(v.seed for v in variants),
    )


def pack_steps(variant: Variant, dataset: Dataset) -> tuple[int, int]:
    """(total steps, steps per epoch) of a pack whose first member is ``variant``."""
    n_train = subset_size(variant.data, len(dataset.y_train))
    spe = steps_per_epoch(n_train, variant.optim.batch_for(n_train), variant.train.drop_last)
    return spe * variant.train.epochs, spe


def log_spaced_steps(total: int, k: int) -> list[int]:
    """``k`` log-spaced steps from 1 to ``total`` (both included), rounded, repeats merged: the
    same points as ``metrics.trajectory.log_points = k + 1`` (which adds step 0)."""
    if k < 2:
        return [total]
    return sorted({round(math.exp(math.log(max(total, 1)) * i / (k - 1))) for i in range(k)})


def eval_steps(train: TrainSpec, total: int, spe: int) -> list[int]:
    """The steps after which the pack is evaluated (a curve row each; step 0, the
    initialisation, is always evaluated besides): every epoch's end by default
    (``train.eval_every = eval_points = 0``), every ``eval_every`` steps, or about
    ``eval_points`` log-spaced steps (:func:`log_spaced_steps`); always the last step."""
    if train.eval_points > 0:
        points = set(log_spaced_steps(total, train.eval_points))
    else:
        every = train.eval_every or spe
        points = set(range(every, total + 1, every))
    return sorted(points | {total})


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
    if batch_size > n_train:
        raise ConfigError(
            f"optim.batch_size must be <= the training set size ({n_train}), got {batch_size}"
        )
    return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)


@dataclass
class TrainResult:
    pack: TrainedPack
    final_metrics: dict[str, list[float]]  # at the chosen checkpoint, per member
    diverged_step: list[int | None]
    # epoch of the chosen checkpoint per member: the last epoch, or with best_train_loss the
    # best one (>= 1; 0 when no epoch qualified, the member diverged in its first)
    best_epoch: list[int]
    # rows: member, epoch, step, lr, train/test loss and accuracy, train_loss_running
    curves: list[dict]
    wall_time_s: float


def _check_pack(variants: Sequence[Variant]) -> None:
    if not variants:
        raise ValueError("a pack needs at least one variant")
    keys = {pack_key(v) for v in variants}
    if len(keys) > 1:
        raise ValueError(
            f"variants of one pack must share shapes and step counts; got {len(keys)} pack keys"
        )


def _epoch_orders(generators: list[torch.Generator], n: int, device: torch.device) -> Tensor:
    """Each member's own shuffle of its n training positions: (K, n)."""
    return torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)


class TrajectoryRecorderLike(Protocol):
    """What the loop asks of an observer (``landscape.recorder.TrajectoryRecorder``)."""

    def wants(self, step: int) -> bool: ...

    def observe(self, step: int, pack: TrainedPack, lr: Tensor) -> None: ...

    @property
    def records_lca(self) -> bool: ...

    def record_lca(self, step: int, before: Params, pack: TrainedPack) -> None: ...


def train_pack(
    variants: Sequence[Variant],
    dataset: Dataset,
    device: torch.device | str = "cpu",
    *,
    on_epoch: Callable[[int, dict[str, Tensor]], None] | None = None,
    recorder: TrajectoryRecorderLike | None = None,
) -> TrainResult:
    """Train every variant of a pack together and return the checkpoint the metrics use.

    ``dataset`` should already live on ``device`` (a worker caches it there).

    The pack is evaluated by a full pass (eval mode) over each member's training set and the
    test set (the ``curves`` rows) at the initialisation and after each step of
    :func:`eval_steps`: every epoch's end by default, or on the ``train.eval_every`` /
    ``train.eval_points`` schedule. The mean of the minibatch losses as training saw them
    (train mode, weighted by batch size) since the previous evaluation is kept as
    ``train_loss_running`` (by default: the epoch's). ``train.checkpoint=best_train_loss``
    keeps, per member, the evaluation with the lowest ``train_loss_running`` among those it
    reached alive (Yang et al.'s rule, their ``train.py``: the initialisation is not a
    candidate; by default the candidates are the epochs), and ``best_epoch`` is the epoch that
    evaluation fell in (its row's ``epoch``; with full batch, its step); a member that
    diverges later keeps that checkpoint and is measured on it (its ``diverged_step`` is
    still reported). ``on_epoch`` is called at each epoch's end with the latest evaluation.
    """
    _check_pack(variants)
    if dataset.tokens and variants[0].data.augment:
        raise ConfigError(
            f"data.augment must be false for token data (data.name={dataset.name}), got True: "
            "crops and flips are for images"
        )
    t0 = time.perf_counter()
    device = torch.device(device)
    first = variants[0]
    K = len(variants)
    data = make_pack_data(variants, dataset.to(device))
    B = first.optim.batch_for(data.n_train)  # 0: the whole training set
    spe = steps_per_epoch(data.n_train, B, first.train.drop_last)
    total = spe * first.train.epochs

    net, stack = init_stack(
        lambda: build_model(first.model, dataset.input_shape, dataset.num_classes, dataset.vocab),
        [v.seed for v in variants],
        device,
    )
    init = stack.clone()
    opt = new_optim_state([v.optim for v in variants], stack)
    mode = step_mode(
        first, dataset.input_shape, dataset.num_classes, device, dataset.vocab, members=K
    )
    step_fn = StepFn(
        net,
        accuracy=False,  # training reads the minibatch loss alone
        compile=first.train.compile,
        mode=mode,
        channels_last=mode != "vmap",
        streams=first.train.pack_streams,
    )
    graphs = first.train.cuda_graphs and device.type == "cuda"
    precision = first.train.precision
    # one step in place on stack and opt: (x, y, lr) -> (loss, accuracy)
    if graphs:
        step = GraphedTrainStep(step_fn, stack, opt, precision)
    else:
        step = functools.partial(train_step, step_fn, stack, opt, precision=precision)
    generators = [torch.Generator().manual_seed(v.seed) for v in variants]
    # augmentation draws on the device, from each member's own stream (packed = solo)
    aug_generators = [torch.Generator(device).manual_seed(v.seed + 7_000_003) for v in variants]
    pad = dataset.pad_value.to(device) if first.data.augment else 0.0
    base = opt.hypers.lr  # (K,) peak rates; the schedule's factor scales them each step
    keep_best = first.train.checkpoint == "best_train_loss"

    curves: list[dict] = []
    metrics = evaluate_pack(net, stack, data, precision)
    nan = torch.full((K,), float("nan"), device=device)
    best_epoch = torch.zeros(K, dtype=torch.long, device=device)
    if keep_best:  # no candidate yet: a member without a qualifying epoch is measured on nothing
        best = stack.clone()
        best_metrics = {k: nan.clone() for k in metrics}
        best_loss = torch.full((K,), float("inf"), device=device)
    _record(
        curves, 0, 0, base * lr_factor(first.optim, 0, total, spe),
        {**metrics, "train_loss_running": nan},
    )  # fmt: skip

    def view() -> TrainedPack:
        return TrainedPack(list(variants), net, init, stack, data, opt.alive.clone())

    def observe(lr: Tensor) -> None:
        if recorder is not None and recorder.wants(opt.step):
            recorder.observe(opt.step, view(), lr)

    observe(base * lr_factor(first.optim, 0, total, spe))

    evaluated = set(eval_steps(first.train, total, spe))
    loss_sum, seen = torch.zeros(K, device=device), 0  # since the last evaluation
    for epoch in range(1, first.train.epochs + 1):
        order = _epoch_orders(generators, data.n_train, device)
        for b in range(spe):
            factor = lr_factor(first.optim, opt.step, total, spe)
            x, y = data.train_batch(order[:, b * B : (b + 1) * B])
            x = augment_batch(x, first.data, aug_generators, fill=pad)
            lca = recorder is not None and recorder.records_lca
            before = {n: p.detach().clone() for n, p in stack.params.items()} if lca else None
            loss, _ = step(x, y, base * factor)
            loss_sum += loss.detach().float() * x.shape[1]
            seen += x.shape[1]
            if before is not None:
                recorder.record_lca(opt.step, before, view())
            observe(base * factor)
            if opt.step not in evaluated:
                continue
            running = torch.where(opt.alive, loss_sum / seen, float("nan"))
            loss_sum, seen = torch.zeros(K, device=device), 0
            metrics = _dead_as_nan(evaluate_pack(net, stack, data, precision), opt.alive)
            _record(
                curves, epoch, opt.step, base * factor, {**metrics, "train_loss_running": running}
            )
            if keep_best:
                better = opt.alive & torch.isfinite(running) & (running < best_loss)
                best = _where_members(better, stack, best)
                best_metrics = {
                    k: torch.where(better, metrics[k], best_metrics[k]) for k in metrics
                }
                best_loss = torch.where(better, running, best_loss)
                best_epoch = torch.where(better, epoch, best_epoch)
            else:
                best_epoch.fill_(epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    chosen, chosen_metrics = (best, best_metrics) if keep_best else (stack, metrics)
    measured = best_epoch > 0 if keep_best else opt.alive.clone()
    diverged = [int(s) if s >= 0 else None for s in opt.diverged_step.tolist()]
    return TrainResult(
        pack=TrainedPack(list(variants), net, init, chosen, data, measured),
        final_metrics={k: v.tolist() for k, v in chosen_metrics.items()},
        diverged_step=diverged,
        best_epoch=best_epoch.tolist(),
        curves=curves,
        wall_time_s=time.perf_counter() - t0,
    )


def _dead_as_nan(metrics: dict[str, Tensor], alive: Tensor) -> dict[str, Tensor]:
    """A diverged member's (zeroed) model measures nothing: NaN."""
    return {k: torch.where(alive, v, float("nan")) for k, v in metrics.items()}


def _where_members(mask: Tensor, a: Stack, b: Stack) -> Stack:
    """Per member: a where mask else b."""

    def pick(x: Tensor, y: Tensor) -> Tensor:
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y)

    return Stack(
        {n: pick(a.params[n], b.params[n]) for n in a.params},
        {n: pick(a.buffers[n], b.buffers[n]) for n in a.buffers},
    )


def _record(
    curves: list[dict], epoch: int, step: int, lr: Tensor, metrics: dict[str, Tensor]
) -> None:
    cols = {k: v.tolist() for k, v in metrics.items()}
    for k, lr_k in enumerate(lr.tolist()):
        curves.append(
            {"member": k, "epoch": epoch, "step": step, "lr": lr_k, **{c: cols[c][k] for c in cols}}
        )


# ---- one step ------------------------------------------------------------------------


@dataclass
class OptimState:
    spec: OptimSpec  # the pack's optimiser (kind and pack-wide settings)
    hypers: MemberHypers
    state: dict[str, Params]
    alive: Tensor  # (K,) bool
    diverged_step: Tensor  # (K,) int64, -1 while alive
    step: int = 0  # steps taken (the host's count: the schedule reads it)
    step_t: Tensor | None = None  # the same count as a 0-dim int64 tensor on the device

    def device_step(self) -> Tensor:
        """The device counter, made from the host count on first use (before a step)."""
        if self.step_t is None:
            self.step_t = torch.tensor(self.step, dtype=torch.long, device=self.alive.device)
        return self.step_t


def new_optim_state(specs: Sequence[OptimSpec], stack: Stack) -> OptimState:
    """Fresh optimiser state for a pack (one spec per member): every member alive, per-member
    hyperparameters. A pack's parameters are laid out in ``stack.params`` as views of the
    optimiser's (K, P) matrix (:meth:`SlotState.adopt`: the same values; on a GPU a pack of
    one only)."""
    device = next(iter(stack.params.values())).device
    K = len(specs)
    state = init_state(specs[0], stack.params)
    state.adopt(stack.params)  # the parameters as views of the update's (K, P) matrix
    return OptimState(
        spec=specs[0],
        hypers=MemberHypers.from_specs(specs, device),
        state=state,
        alive=torch.ones(K, dtype=torch.bool, device=device),
        diverged_step=torch.full((K,), -1, dtype=torch.long, device=device),
    )


def train_step(
    step_fn: StepFn,
    stack: Stack,
    opt: OptimState,
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    precision: str,
) -> tuple[Tensor, Tensor]:
    """One packed SGD-family step in place on ``stack`` and ``opt``. x (K, B, ...), y (K, B),
    lr (K,) this step's learning rates. Returns the members' minibatch loss and accuracy."""
    opt.device_step()  # made from the count of steps taken so far
    opt.step += 1
    return _device_step(step_fn, stack, opt, x, y, lr, precision)


def _device_step(
    step_fn: StepFn,
    stack: Stack,
    opt: OptimState,
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    precision: str,
) -> tuple[Tensor, Tensor]:
    """The device half of :func:`train_step`: every state change is in place on tensors that
    live across steps and nothing is read back to the host, so it can be recorded once as a
    CUDA graph and replayed (:class:`GraphedTrainStep`). On a CPU, where reading a value
    costs no wait, the bookkeeping of deaths is skipped when every member is alive."""
    step = opt.device_step()
    with autocast(x.device, precision):
        grads, loss, acc = step_fn(stack.params, stack.buffers, x, y)
    step.add_(1)
    # dead from this step on: a non-finite loss, or parameters the update made non-finite/huge
    # (on a CPU the losses are read on the host, which costs no wait there)
    cpu = x.device.type == "cpu"
    if cpu and all(math.isfinite(v) for v in loss.tolist()):
        ok = opt.alive  # every loss finite
    else:
        ok = opt.alive & (loss.abs() < math.inf)  # torch.isfinite's truth in two kernels, not four
    alive = apply_update(opt.spec, stack.params, grads, opt.state, opt.hypers, lr, step, ok)
    if cpu and all(alive.tolist()):  # no one died now or before: nothing to change
        return loss, acc
    opt.diverged_step.copy_(torch.where(opt.alive & ~alive, step, opt.diverged_step))
    opt.alive.copy_(alive)
    for b in stack.buffers.values():  # BatchNorm statistics of a dead member: zero too
        b.copy_(torch.where(alive.view(-1, *([1] * (b.dim() - 1))), b, 0))
    return loss, acc


class GraphedTrainStep:
    """:func:`train_step` on a CUDA device, recorded once as a CUDA graph and then replayed.

    A packed step of a small model is hundreds of tiny kernels whose launch costs more than
    their work; a graph replay launches them all at once. The arithmetic is the same kernels
    as the eager step's, and every call is a real training step (see
    :class:`landscape.cudagraph.CudaGraphed`: the first calls run eagerly, the next records
    and replays). Batches and learning rates are copied into the graph's input buffers; the
    parameters, buffers and optimiser state are updated in place. On a CPU, or if recording
    fails (with a warning), it is :func:`train_step`.
    """

    def __init__(
        self, step_fn: StepFn, stack: Stack, opt: OptimState, precision: str, warmup: int = 3
    ):
        self.opt = opt
        opt.device_step()  # the step counter must exist before recording

        def device_step(x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
            return _device_step(step_fn, stack, opt, x, y, lr, precision)

        self.graphed = CudaGraphed(device_step, warmup=warmup, max_graphs=1)

    def __call__(self, x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        self.opt.step += 1
        return self.graphed(x, y, lr)


# ---- the gradient --------------------------------------------------------------------


@dataclass
class StepFn:
    """The gradient of the per-member training loss over a pack: (params, buffers, x, y)
    stacked over K -> (grads, loss (K,), accuracy (K,)).

    ``vmap`` (the default) batches the members into each kernel (a convolution becomes one
    grouped convolution over the pack): the fast way for small models, whose kernels are
    too small to fill a GPU. ``loop`` runs the members one after another on views of the
    stacked tensors, each with the library's ordinary kernels and plain autograd: on a CPU
    the fastest for one or two members (:func:`step_mode`), on a GPU for wide models whose
    kernels fill it on their own, recorded as one CUDA graph (:class:`GraphedTrainStep`);
    with ``streams`` > 1 the members are spread over that many CUDA streams.
    ``packed`` keeps the members side by side in the channel dimension between layers and
    takes ordinary autograd gradients (:mod:`landscape.channel_layout`): vmap's kernels
    without its layout copies, and BatchNorm on bf16 activations. All compute the same
    function (tests compare them)."""

    net: FunctionalNet
    compile: bool = False
    mode: str = "vmap"
    channels_last: bool = False  # loop/packed modes, images on CUDA: NHWC activations
    streams: int = 1  # loop mode on CUDA: members spread over this many side streams
    # the minibatch accuracy besides the loss (loop and packed skip it when False: acc None)
    accuracy: bool = True
    fn: Callable = field(init=False)

    def __post_init__(self) -> None:
        if self.mode == "vmap":
            g = _vmapped(self.net)
        elif self.mode == "loop":
            g = _looped(self.net, self.channels_last, self.streams, self.accuracy)
        elif self.mode == "packed":
            g = _packed(self.net, self.channels_last, self.accuracy)
        else:
            raise ValueError(f"StepFn mode must be vmap, loop or packed, got {self.mode!r}")
        self.fn = torch.compile(g) if self.compile else g

    def __call__(
        self, params: Params, buffers: Params, x: Tensor, y: Tensor
    ) -> tuple[Params, Tensor, Tensor | None]:
        return self.fn(params, buffers, x, y)


def _vmapped(net: FunctionalNet) -> Callable:
    """One member's loss and gradient by functorch (``grad_and_value`` of
    :meth:`FunctionalNet.logits`'s cross-entropy), vmapped over the pack."""

    def loss(params: Params, buffers: Params, x: Tensor, y: Tensor):
        logits = net.logits(params, buffers, x, train=True)  # BN running stats update in place
        value, acc = classification_loss(logits, y)
        return value, (value.detach(), acc)

    batched = vmap(grad_and_value(loss, has_aux=True))

    def run(params: Params, buffers: Params, x: Tensor, y: Tensor):
        grads, (_, (value, acc)) = batched(params, buffers, x, y)
        return grads, value, acc

    return run


def _looped(
    net: FunctionalNet, channels_last: bool, streams: int = 1, accuracy: bool = True
) -> Callable:
    """Each member's training loss and gradient in turn, by plain autograd on views of the
    stacked tensors (:class:`landscape.functional.BoundModule`: the module's own forward, no
    functorch), results stacked like vmap's; a pack of one costs what one ``nn.Module`` step
    costs. On a CUDA device with ``streams`` > 1, member k runs on side stream k % streams,
    so the small kernels of several members (the last stages of a ResNet, say) can share the
    GPU; the side streams fork from and join back into the calling stream, which a CUDA graph
    records too."""
    inputs = channels_last_images if channels_last else (lambda x: x)
    side: dict[torch.device, list[torch.cuda.Stream]] = {}
    bound = BoundModule(net)
    made: dict[int, tuple[list[Tensor], Params, Params]] = {}

    def member_tensors(params: Params, buffers: Params, k: int) -> tuple[Params, Params]:
        """Member k's parameters as autograd leaves and its buffers as views, made once per
        set of stacked tensors: they share the stack's storage, so its in-place updates
        reach them (the stacked tensors are held, so an identity check is sound)."""
        sources = [*params.values(), *buffers.values()]
        hit = made.get(k)
        if (
            hit is None
            or len(hit[0]) != len(sources)
            or any(a is not b for a, b in zip(hit[0], sources))
        ):
            leaves = {n: p[k].detach().requires_grad_() for n, p in params.items()}
            views = {n: b[k] for n, b in buffers.items()}  # BN statistics update in the stack
            made[k] = hit = (sources, leaves, views)
        return hit[1], hit[2]

    def one(params: Params, buffers: Params, x: Tensor, y: Tensor, k: int):
        leaves, views = member_tensors(params, buffers, k)
        with torch.enable_grad():
            logits = bound(leaves, views, inputs(x[k]), train=True)
            loss, acc = classification_loss(logits, y[k], accuracy=accuracy)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return dict(zip(leaves, grads)), loss.detach(), acc

    def run(params: Params, buffers: Params, x: Tensor, y: Tensor):
        K = x.shape[0]
        with native_norm():
            if streams > 1 and x.is_cuda and K > 1:
                if x.device not in side:
                    side[x.device] = [torch.cuda.Stream(x.device) for _ in range(streams)]
                outs = _on_streams(side[x.device], K, lambda k: one(params, buffers, x, y, k))
            else:
                outs = [one(params, buffers, x, y, k) for k in range(K)]
        if K == 1:  # views with the member dimension, not copies
            grads, loss, acc = outs[0]
            grads = {n: g.unsqueeze(0) for n, g in grads.items()}
            return grads, loss[None], acc[None] if accuracy else None
        grads = {n: torch.stack([o[0][n] for o in outs]) for n in params}
        loss = torch.stack([o[1] for o in outs])
        acc = torch.stack([o[2] for o in outs]) if accuracy else None
        return grads, loss, acc

    return run


def _on_streams(streams: list[torch.cuda.Stream], K: int, fn: Callable[[int], Any]) -> list:
    """``[fn(k) for k in range(K)]`` with call k on ``streams[k % len(streams)]``: forked from
    the current stream and joined back into it; results are marked as used by it (so the
    allocator does not hand their memory to a side stream while it still reads them)."""
    main = torch.cuda.current_stream(streams[0].device)
    for s in streams:
        s.wait_stream(main)
    outs = []
    for k in range(K):
        with torch.cuda.stream(streams[k % len(streams)]):
            outs.append(fn(k))
    for s in streams:
        main.wait_stream(s)
    for t in tree_flatten(outs)[0]:
        if isinstance(t, Tensor):
            t.record_stream(main)
    return outs


def _packed(net: FunctionalNet, channels_last: bool = False, accuracy: bool = True) -> Callable:
    """All members at once in the packed layout (:class:`landscape.channel_layout.PackedNet`:
    inputs (N, K*C, ...), one grouped kernel per layer, or member rows (K*N, ...) for a model
    of Linear layers), in train mode, gradients by plain autograd of the sum of the members'
    losses (each member's own gradient: they share no parameter). With ``channels_last``,
    image activations on a CUDA device are NHWC (in the channel layout)."""
    packed = PackedNet(net)
    channels_last = channels_last and not packed.rows

    def run(params: Params, buffers: Params, x: Tensor, y: Tensor):
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        xp = channels_last_images(packed.inputs(x)) if channels_last else packed.inputs(x)
        with torch.enable_grad():
            logits = packed.logits(leaves, buffers, xp, train=True)  # (N, K, C)
            loss, acc = classification_loss(logits, y, "members", accuracy)  # (K,) each
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), loss.detach(), acc

    return run


# Forward FLOPs of one member's batch from which ``auto`` runs members in turn on a GPU: between
# a CIFAR ResNet18 of width 32 (3.6e10 at batch 128) and width 64 (1.4e11), where the measured
# crossover lies (``step_mode``).
LOOP_FLOPS = 7e10
# Packs of at most this many members run member by member on a CPU (``step_mode``).
LOOP_MEMBERS_CPU = 2


def step_mode(
    variant: Variant,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    vocab: int = 0,
    members: int = 0,
) -> str:
    """``train.pack_step`` resolved. ``auto`` picks what ``bench_packing.py`` measured fastest
    among the modes that keep a diverging member to itself:

    - on a CPU, ``loop`` for a pack of one (a plain module's step), and for a pack of at
      most :data:`LOOP_MEMBERS_CPU` ``members`` whose packed layout keeps channels side by
      side: on MLPs with channels side by side (widths 8-64, batch 16 and 128, 8x8 digits,
      SGD momentum, one thread, 2-core x86_64 shared) ``loop`` ran at 1.6-1.8x ``packed``'s
      model-steps/s at one member and 1.1-1.2x at two, ``packed`` at 1.1-1.4x ``loop``'s at
      four and 1.8-3.5x at sixteen (``bench_packing.py``). A model of Linear layers packs in
      member rows (:mod:`landscape.channel_layout`), which at two members ran at 1.26-1.43x
      a plain step against loop's 1.08-1.28x on the demo's MLPs (session 13), so it runs
      ``packed`` from two members on. Larger packs run ``packed`` (1.3-1.6x vmap's speed on
      this project's CPU) when the model's layers allow it, else ``loop``: for a one-layer transformer (d_model 128, p = 97 token
      triples, full batch of 2,822, AdamW) ``bench_packing.py --model transformer`` measured
      loop at 0.89x, 0.92x and 0.87x a plain module's model-steps/s at 1, 4 and 16 members,
      vmap at 0.88x, 0.80x and 0.34x (2-core x86_64 shared, one thread);
    - on a CUDA device, ``loop`` when one member's batch is at least :data:`LOOP_FLOPS`
      forward FLOPs (its kernels fill the GPU alone), else ``vmap``. Measured on an H200
      (CIFAR ResNet18, batch 128, bf16, CUDA graphs, model-steps/s, vmap / packed / loop):
      width 4 2,000 / 3,400 / -; width 16 583 / 1,308 / -; width 32 - / 718 / 394; width 64
      - / 237 / 277. ``packed`` is faster below the threshold but is not picked: on the same
      H200 a member diverging in a bf16 packed (NHWC) pack made its healthy pack-mates
      non-finite in the same step (``tests/landscape/test_cuda.py``), so their rows would
      read ``diverged``; ask for it with ``train.pack_step=packed`` (``benchmarks/NOTES.md``).
    """
    if variant.train.pack_step != "auto":
        return variant.train.pack_step
    if device.type != "cuda":
        if members == 1:
            return "loop"  # a plain module's step: no layout to look up
        layout = _packed_layout(variant.model, tuple(input_shape), num_classes, vocab)
        if 0 < members <= LOOP_MEMBERS_CPU and layout != "rows":
            return "loop"
        return "packed" if layout else "loop"
    flops = model_forward_flops(variant.model, tuple(input_shape), num_classes, vocab)
    batch = variant.optim.batch_for(subset_size(variant.data, train_set_size(variant.data)))
    return "loop" if flops * batch >= LOOP_FLOPS else "vmap"


@functools.lru_cache(maxsize=256)
def _packed_layout(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab: int = 0
) -> str:
    """The packed layout a model runs in: ``rows`` (member rows: Linear layers only),
    ``channels`` (side by side in the channels), or "" when it has none."""
    with torch.device("meta"):
        net = FunctionalNet(build_model(spec, input_shape, num_classes, vocab))
    try:
        return "rows" if PackedNet(net).rows else "channels"
    except ValueError:
        return ""


# ---- the update ----------------------------------------------------------------------

# A member with a parameter this large (in magnitude) after an update has diverged, like one
# with a non-finite parameter. Trained weights stay within O(100); far beyond, the next step
# overflows float32/bf16 activations (BatchNorm's squared deviations pass 3.4e38 from ~1e19)
# inside kernels shared with the other members, and on a GPU a grouped convolution carries the
# resulting NaN into their gradients: on an H200, a bf16 ResNet18 member with lr = 1e30
# (finite parameters of ~1e28 after one step) killed all three members of its pack at step 2.
# Caught here, the member is zeroed before its parameters reach a kernel.
DIVERGED_ABOVE = 1e8


class SlotState(Mapping[str, "dict[str, Tensor]"]):
    """An optimiser's state for a pack: one (K, P) matrix per slot, zeros at the start.

    ``state[slot][name]`` is parameter ``name``'s (K, *shape) view into the slot's matrix
    (for reading; the update writes the matrices). ``names``/``shapes`` fix the order and
    shapes of the parameters the matrices lay side by side, and ``lr_row`` is each column's
    learning-rate multiplier (``optim.lr_multipliers``), or None when there are none.
    """

    def __init__(self, spec: OptimSpec, params: Params):
        # the rule and its slots, resolved once
        self.rule, slots = update_rule(spec)
        first = next(iter(params.values()))
        K, self.names = first.shape[0], list(params)
        self.shapes = [params[n].shape[1:] for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        P = sum(self.sizes)
        self.flat = {s: first.new_zeros(K, P) for s in slots}
        self.lr_row: Tensor | None = None
        self.params_flat: Tensor | None = None  # see adopt
        self.param_views: list[Tensor] | None = None
        self._columns: tuple[tuple, tuple[Tensor, Tensor | None]] | None = None  # see columns
        self._grads: Tensor | None = None  # see gather
        self._grad_views: list[Tensor] = []
        if spec.lr_multipliers:
            mult = [lr_multiplier(spec, n) for n in self.names]
            self.lr_row = torch.repeat_interleave(
                torch.tensor(mult, dtype=first.dtype), torch.tensor(self.sizes)
            ).to(first.device)[None]

    def adopt(self, params: dict[str, Tensor]) -> None:
        """Lay a pack's parameters out in one (K, P) matrix, in this state's order, and put
        its views in ``params`` in place of the tensors (the same values and shapes, so
        nothing that reads them can tell): :func:`apply_update` then updates the matrix
        itself, without concatenating the parameters and copying the result back (a dozen
        kernels and two passes over the parameters a step, which on a small model cost more
        than the rule). A pack of one's views are contiguous; a larger pack's are each
        member's contiguous block of a row (stride P between members), which the CPU
        kernels read as they are. So packs of several members are laid out on a CPU only:
        on a GPU they keep their tensors. Replacing a tensor in ``params`` later undoes it
        (an identity check)."""
        first = params[self.names[0]]
        if first.shape[0] != 1 and first.device.type != "cpu":
            return
        if any(params[n].dtype != first.dtype for n in self.names):
            return
        self.params_flat = self.flatten(params)
        views = self.unflatten(self.params_flat)
        for n in self.names:
            params[n] = views[n]
        self.param_views = [views[n] for n in self.names]

    def laid_out(self, params: Params) -> bool:
        """Whether ``params`` holds the views :meth:`adopt` made (so ``params_flat`` is them)."""
        return self.param_views is not None and all(
            params[n] is v for n, v in zip(self.names, self.param_views, strict=True)
        )

    def columns(self, hypers: MemberHypers, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The members' momentum and weight decay (None: no member decays) as (K, 1) columns
        in ``dtype``, kept from the last call for the same tensors: where they have ``dtype``
        already, the columns are views of them (no copy that could fall out of date)."""
        key = (hypers.momentum, hypers.weight_decay, hypers.decays, dtype)
        if self._columns is not None and all(a is b for a, b in zip(self._columns[0], key)):
            return self._columns[1]
        wd = hypers.weight_decay.to(dtype)[:, None] if hypers.decays else None
        cols = (hypers.momentum.to(dtype)[:, None], wd)
        same = hypers.momentum.dtype == dtype and hypers.weight_decay.dtype == dtype
        self._columns = (key, cols) if same else None
        return cols

    def flatten(self, tensors: Params) -> Tensor:
        """Stacked tensors (K, *shape) by name -> one (K, P) matrix in this state's order."""
        if tensors[self.names[0]].shape[0] == 1:
            # a pack of one: the tensors end to end, flattened and joined in one call
            return _flatten_dense_tensors([tensors[n] for n in self.names]).view(1, -1)
        return torch.cat([tensors[n].reshape(tensors[n].shape[0], -1) for n in self.names], 1)

    def gather(self, grads: Params, dtype: torch.dtype) -> Tensor:
        """The gradients as one (K, P) matrix of ``dtype`` in this state's order: a matrix
        this state keeps and overwrites at every call (the update consumes it within the
        step), so no matrix of the parameters' size is allocated, and page-faulted, per
        step; strided gradients (a transposed weight's) are copied in one pass."""
        K = grads[self.names[0]].shape[0]
        if self._grads is None or self._grads.shape[0] != K or self._grads.dtype != dtype:
            self._grads = grads[self.names[0]].new_empty(K, sum(self.sizes), dtype=dtype)
            self._grad_views = list(self.unflatten(self._grads).values())
        torch._foreach_copy_(self._grad_views, [grads[n] for n in self.names])
        return self._grads

    def unflatten(self, flat: Tensor) -> Params:
        """A (K, P) matrix -> (K, *shape) views by name."""
        K = flat.shape[0]
        parts = flat.split(self.sizes, 1)
        return {n: v.view(K, *s) for n, v, s in zip(self.names, parts, self.shapes, strict=True)}

    def __getitem__(self, slot: str) -> Params:
        return self.unflatten(self.flat[slot])

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat)

    def __len__(self) -> int:
        return len(self.flat)


def init_state(spec: OptimSpec, params: Params) -> SlotState:
    """The optimiser's state for stacked ``params``: its slots, zeros, as (K, P) matrices."""
    return SlotState(spec, params)


def apply_update(
    spec: OptimSpec,
    params: Params,
    grads: Params,
    state: SlotState,
    hypers: MemberHypers,
    lr: Tensor,
    step: int | Tensor,
    alive: Tensor,
) -> Tensor:
    """One in-place update of every member; returns the (K,) bool of members still alive.

    ``lr`` is the (K,) learning rate for this step (schedule applied). A member whose
    (K,) ``alive`` entry is False, or whose updated parameters are not all finite and below
    :data:`DIVERGED_ABOVE` in magnitude, is dead:
    its parameters and optimiser state are set to zero and stay there. Zero, not the last
    values: batched kernels (a grouped convolution on a GPU may compute several members in
    one tile) can carry a member's NaN or inf into its neighbours, and zeros carry nothing.
    ``step`` counts from 1 (Adam's bias correction uses it); given as a 0-dim tensor on the
    device, nothing here reads a value back to the host, so the update can be recorded in a
    CUDA graph. ``state`` comes from :func:`init_state` for these parameters."""
    if not isinstance(step, Tensor):
        step = torch.tensor(step, device=alive.device)
    flat = state.laid_out(params)  # params are views of state.params_flat: no concatenation
    p = state.params_flat if flat else state.flatten(params)
    dtype = p.dtype
    lr_p = lr.to(dtype)[:, None]
    if state.lr_row is not None:
        lr_p = lr_p * state.lr_row
    h = LocalHypers(lr_p, *state.columns(hypers, dtype))
    # SGD on a CPU writes p (the parameters laid out, or their fresh concatenation) and its
    # buffer in place: the same kernels on the same values, so the same bits, without a new
    # matrix for each and the copies back
    in_place = spec.name == "sgd" and p.device.type == "cpu"
    rule = sgd_in_place if in_place else state.rule
    new_p, new = rule(spec, p, state.gather(grads, dtype), state.flat, h, step)
    top = new_p.abs().amax(1)  # (K,) the largest parameter of each member, NaN for a NaN
    if p.device.type == "cpu":  # a host read costs no wait: with every member alive, no masks
        flags = [bool(a) and m < DIVERGED_ABOVE for a, m in zip(alive.tolist(), top.tolist())]
        everyone = all(flags)
        finite = alive.bool() if everyone else torch.tensor(flags)
    else:
        everyone, finite = False, alive.bool() & (top < DIVERGED_ABOVE)  # False for NaN, inf
    keep = finite[:, None]

    def write(into: Tensor, t: Tensor) -> None:
        if not everyone:
            into.copy_(torch.where(keep, t, 0))
        elif t is not into:  # an in-place rule wrote it already
            into.copy_(t)

    for slot, matrix in state.flat.items():
        write(matrix, new[slot])
    if flat:
        write(p, new_p)
        return finite
    new_views = state.unflatten(new_p if everyone else torch.where(keep, new_p, 0))
    torch._foreach_copy_([params[n] for n in state.names], [new_views[n] for n in state.names])
    return finite


# ---- evaluation ----------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    y: Tensor,
    precision: str = "fp32",
    idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Eval-mode mean loss and accuracy per member over x (K, N, ...), y (K, N), in chunks.

    With ``idx`` (K, N), x is a shared set (M, ...) and member k's examples are x[idx[k]],
    gathered one chunk at a time (never K copies of a training set at once)."""
    K, N = y.shape
    dtype = loss_precision(next(iter(stack.params.values()))).dtype  # float32 or float64
    total_loss = torch.zeros(K, device=y.device, dtype=dtype)
    total_correct = torch.zeros(K, device=y.device, dtype=dtype)

    in_turn = y.device.type != "cuda" and K <= LOOP_EVAL_MEMBERS_CPU
    logits_of = _eval_module(net) if in_turn else None

    def member(params: Params, buffers: Params, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        if logits_of is None:
            logits = net.logits(params, buffers, xb)
        else:
            logits = logits_of(params, buffers, xb, False)
        return classification_loss(logits, yb, reduction="sum")

    def members_in_turn(params: Params, buffers: Params, xb: Tensor, yb: Tensor):
        outs = []
        for k in range(K):
            own = {n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()}
            outs.append(member(*own, xb[k], yb[k]))
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    batched = members_in_turn if in_turn else vmap(member)
    for start in range(0, N, EVAL_CHUNK):
        part = slice(start, start + EVAL_CHUNK)
        xb = x[:, part] if idx is None else x[idx[:, part]]
        with autocast(y.device, precision):
            loss, correct = batched(stack.params, stack.buffers, xb, y[:, part])
        total_loss += loss
        total_correct += correct
    return total_loss / N, total_correct / N


# Packs of at most this many members are evaluated member by member on a CPU (``evaluate``):
# the module's own forward (``BoundModule``) where vmap batches each layer. Measured on this
# project's 2-core x86_64 CPU (Intel Xeon, torch 2.14.1, one thread; 2-hidden-layer MLPs of
# width 16 and 64 on 1,347 examples of 64 inputs, microseconds, vmap / loop): one member
# 858 / 425 and 1,296 / 731; two 1,233 / 780 and 2,017 / 1,292; eight 3,443 / 2,862 and
# 6,124 / 4,746; sixteen 6,098 / 5,397 and 13,890 / 9,411. The two differ by float32
# rounding (a batched against a plain matrix product: at most 5e-7 in a mean loss).
LOOP_EVAL_MEMBERS_CPU = 16
_EVAL_MODULES: weakref.WeakKeyDictionary[FunctionalNet, BoundModule] = weakref.WeakKeyDictionary()


def _eval_module(net: FunctionalNet) -> BoundModule:
    """The (cached) private module copy that evaluation calls member by member."""
    if net not in _EVAL_MODULES:
        _EVAL_MODULES[net] = BoundModule(net)
    return _EVAL_MODULES[net]


def evaluate_pack(
    net: FunctionalNet, stack: Stack, data: PackData, precision: str
) -> dict[str, Tensor]:
    """Train (each member's own subset and labels) and test loss and accuracy, per member."""
    K = data.members
    x_test = data.x_test.expand(K, *data.x_test.shape)
    y_test = data.y_test.expand(K, *data.y_test.shape)
    train_loss, train_acc = evaluate(
        net, stack, data.x_train, data.y_train, precision, idx=data.train_idx
    )
    test_loss, test_acc = evaluate(net, stack, x_test, y_test, precision)
    return {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
    }
