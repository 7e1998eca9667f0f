"""Quadratic Bezier mode connectivity between two trained models, trained for many pairs at once.

Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs" (NeurIPS): the curve

    phi(t) = (1-t)^2 w_a + 2t(1-t) w_c + t^2 w_b,   t in [0, 1],

with the endpoints fixed and the control point w_c trained to minimise E_{t~U(0,1)} L(phi(t)).
Protocol of Yang, Hodgkinson, Theisen, Zou, Gonzalez, Ramchandran, Mahoney (2021),
"Taxonomizing local versus global structure in neural network loss landscapes": w_c starts
at the midpoint, SGD with lr 0.01, momentum 0.9, weight decay 5e-4, one t per step,
the learning rate constant for the first 50% of training, then linearly down to 1% of its
value at 90%, then constant; the curve's training error (%) is read at t in {0, .25, .5,
.75, 1} with BatchNorm statistics recomputed at each t, and summarised by Yang's
:func:`yang_mc`. P pairs train together as one stack (vmap over pairs; on a CPU, up to
:data:`LOOP_PAIRS_CPU` pairs take their gradients pair by pair, :func:`curve_mode`).

Weight decay on a curve is Garipov et al.'s (their ``dnn-mode-connectivity``, which Yang et al.
ran): not the optimiser's decay of w_c but the penalty 0.5 wd ||phi(t)||^2 on the curve point
at the drawn t, every trainable tensor included (BatchNorm affine too), added to the loss;
its gradient with respect to w_c is wd 2t(1-t) phi(t).

The registered global metric ``bezier``: ``mc`` between the seeds of a replicate group, in
``pairs``, and the curves in ``surfaces``.
Its computation stays in ``landscape.metrics.pairs`` (``measure_pairs`` /
``measure_member_surfaces``), where the global metrics share each pair's data and the
BatchNorm recomputation of path points; this module registers its settings and columns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from landscape.cudagraph import CudaGraphed
from landscape.functional import (
    BoundModule,
    FunctionalNet,
    Params,
    Stack,
    flatten,
    loss_precision,
    member_shapes,
    unflatten,
)
from landscape.metrics.batchnorm import batch_stat_net
from landscape.metrics.registry import Column, Metric, register, require_positive
from landscape.metrics.surfaces import evaluate_combinations, stack_basis
from landscape.objective import classification_loss
from landscape.optim import MemberHypers
from landscape.train import apply_update, autocast, init_state
from landscape.variant import ConfigError, OptimSpec, setting

YANG_TS = (0.0, 0.25, 0.5, 0.75, 1.0)


def bezier_coeffs(ts: Tensor) -> Tensor:
    """(T,) -> (T, 3) coefficients of [w_a, w_c, w_b]: ((1-t)^2, 2t(1-t), t^2)."""
    return torch.stack([(1 - ts) ** 2, 2 * ts * (1 - ts), ts**2], dim=-1)


def bezier_lr_factor(step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at 0-based ``step`` of ``total_steps`` (Garipov et
    al.'s schedule, used by Yang et al.): 1 up to 50% of training, then linear to 0.01 at
    90%, then 0.01."""
    frac = step / max(total_steps, 1)
    if frac <= 0.5:
        return 1.0
    if frac <= 0.9:
        return 1.0 - 0.99 * (frac - 0.5) / 0.4
    return 0.01


def yang_mc(errors: Tensor) -> Tensor:
    """Yang et al.'s mode-connectivity scalar from errors (..., T) along the curve (first and
    last at the endpoints): mc = (e_0 + e_last)/2 - e_u with u = argmax_i |e_i - (e_0 + e_last)/2|.
    mc < 0: a barrier; mc > 0: the curve beats its endpoints; mc ~ 0: well connected."""
    mid = (errors[..., 0] + errors[..., -1]) / 2
    u = (errors - mid.unsqueeze(-1)).abs().argmax(-1, keepdim=True)
    return mid - errors.gather(-1, u).squeeze(-1)


def _curve_loss(
    net: FunctionalNet,
    weight_decay: float,
    shapes: dict[str, torch.Size],
    logits_of: Callable[[Params, Params, Tensor], Tensor] | None = None,
) -> Callable[..., tuple[Tensor, Tensor]]:
    """One pair's training objective at t and, as the auxiliary output, its cross-entropy:
    cross-entropy + 0.5 wd ||phi(t)||^2 (Garipov et al.'s curve regulariser). The control
    point and the endpoints come flat (``landscape.functional.flatten``, one vector of every
    parameter): phi(t) and its norm are a handful of kernels on it, where per-tensor
    arithmetic is a handful per parameter tensor (about 60 in a ResNet18) in a step that is
    launch-bound; the network gets views of phi(t) (``unflatten``). ``logits_of(params,
    buffers, x)`` is the train-mode forward (BatchNorm on batch statistics); by default
    :func:`landscape.metrics.batchnorm.batch_stat_net`'s, which vmap can batch."""
    if logits_of is None:  # train mode: BatchNorm normalises with batch statistics
        logits_of = batch_stat_net(net).logits

    def loss(
        c: Tensor, a: Tensor, b: Tensor, buffers: Params, x: Tensor, y: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        phi = (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b  # (N,)
        logits = logits_of(unflatten(phi, shapes), buffers, x)
        ce = classification_loss(logits, y, accuracy=False)[0]
        l2 = loss_precision(phi).square().sum()
        return ce + 0.5 * weight_decay * l2, ce

    return loss


# Pairs of at most this many curves train pair by pair on a CPU (``curve_mode``).
LOOP_PAIRS_CPU = 4


def curve_mode(device: torch.device, pairs: int) -> str:
    """How :class:`CurveStep` takes its gradients: ``loop`` (pair by pair, plain autograd
    through the module's own forward) on a CPU for at most :data:`LOOP_PAIRS_CPU` pairs, else
    ``vmap``. Measured on this project's 2-core x86_64 CPU (Intel Xeon, torch 2.14.1, one
    thread; 2-hidden-layer MLPs on 64 inputs, batch 64, microseconds per curve step, vmap /
    loop, width 16 and 64): one pair 1,446 / 437 and 1,586 / 560; two 1,462 / 761 and
    1,662 / 1,029; four 1,590 / 1,462 and 2,055 / 1,938; eight 1,758 / 2,680 and
    2,607 / 3,673. On a GPU the vmapped step is one CUDA graph of batched kernels."""
    return "loop" if device.type != "cuda" and pairs <= LOOP_PAIRS_CPU else "vmap"


def _looped_curves(
    net: FunctionalNet, weight_decay: float, shapes: dict[str, torch.Size]
) -> Callable[..., tuple[Tensor, tuple[Tensor, Tensor]]]:
    """The vmapped gradient of :func:`_curve_loss` computed pair by pair: each pair's control
    point as an autograd leaf, the objective with the train-mode forward of a private copy of
    the architecture that phi(t)'s views are set into (:class:`landscape.functional.BoundModule`,
    BatchNorm on batch statistics as :func:`landscape.metrics.batchnorm.batch_stat_net`'s),
    and one ``torch.autograd.grad``; results stacked as vmap's: (gradients (P, N),
    (objective (P,), cross-entropy (P,)))."""
    bound = BoundModule(net, copy.deepcopy(batch_stat_net(net).module))
    loss = _curve_loss(
        net, weight_decay, shapes, lambda params, buffers, x: bound(params, buffers, x, True)
    )

    def grad_fn(
        c: Tensor, a: Tensor, b: Tensor, buffers: Params, x: Tensor, y: Tensor, t: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        grads, objectives, ces = [], [], []
        for p in range(c.shape[0]):
            cp = c[p].detach().requires_grad_()
            pair_buffers = {n: v[p] for n, v in buffers.items()}
            objective, ce = loss(cp, a[p], b[p], pair_buffers, x[p], y[p], t[p])
            (g,) = torch.autograd.grad(objective, cp)
            grads.append(g)
            objectives.append(objective.detach())
            ces.append(ce.detach())
        return torch.stack(grads), (torch.stack(objectives), torch.stack(ces))

    return grad_fn


class CurveStep:
    """One training step of P curves' control points, in place: the gradient of each pair's
    curve objective at its own t (vmapped over pairs, or pair by pair: ``mode``, resolved by
    :func:`curve_mode` when ``auto``), then one SGD update
    (``landscape.train.apply_update``) of the control points and their momentum.

    Every state change is in place on tensors that live across steps and nothing is read back
    to the host, so on a CUDA device the step is recorded once as a CUDA graph and replayed
    (``landscape.cudagraph.CudaGraphed``): a curve step of a small model is hundreds of tiny
    kernels, like a training step, and is launch-bound the same way. Batches, t and the
    learning rates are copied into the graph's input buffers on each call. On a CPU the step
    runs as is; both compute the same kernels (tests compare them).
    """

    def __init__(
        self,
        net: FunctionalNet,
        control: Params,
        a: Stack,
        b: Stack,
        hypers: MemberHypers,
        *,
        weight_decay: float,
        precision: str = "fp32",
        cuda_graphs: bool = True,
        mode: str = "auto",
    ):
        device = next(iter(control.values())).device
        shapes = member_shapes(control)
        self.flat = {"control": flatten(control, 1)}  # (P, N), trained in place
        self.control = unflatten(self.flat["control"], shapes)  # {name: (P, *shape)} views
        self.ends = (flatten(a.params, 1), flatten(b.params, 1))
        self.buffers, self.hypers = a.buffers, hypers
        self.spec = OptimSpec(name="sgd")  # the rule; lr and momentum are per pair, in hypers
        self.state = init_state(self.spec, self.flat)
        P = self.flat["control"].shape[0]
        self.alive = torch.ones(P, dtype=torch.bool, device=device)
        self.step_t = torch.zeros((), dtype=torch.long, device=device)
        self.mode = curve_mode(device, P) if mode == "auto" else mode
        if self.mode == "vmap":
            self.grad_fn = vmap(
                grad_and_value(_curve_loss(net, weight_decay, shapes), has_aux=True)
            )
        elif self.mode == "loop":
            self.grad_fn = _looped_curves(net, weight_decay, shapes)
        else:
            raise ValueError(f"CurveStep mode must be auto, vmap or loop, got {mode!r}")
        self.precision = precision
        self.graphed = (
            CudaGraphed(self._device_step, warmup=3, max_graphs=1)
            if cuda_graphs and device.type == "cuda"
            else None
        )

    def _device_step(self, x: Tensor, y: Tensor, t: Tensor, lr: Tensor) -> Tensor:
        """x (P, B, *input), y (P, B), t (P,), lr (P,) -> cross-entropy (P,)."""
        with autocast(x.device, self.precision):
            grads, (_, loss) = self.grad_fn(self.flat["control"], *self.ends, self.buffers, x, y, t)
        self.step_t.add_(1)
        alive = apply_update(
            self.spec, self.flat, {"control": grads}, self.state, self.hypers, lr, self.step_t,
            self.alive & torch.isfinite(loss),
        )  # fmt: skip
        self.alive.copy_(alive)
        return loss

    def __call__(self, x: Tensor, y: Tensor, t: Tensor, lr: Tensor) -> Tensor:
        if self.graphed is not None:
            return self.graphed(x, y, t, lr)
        return self._device_step(x, y, t, lr)


def train_bezier(
    net: FunctionalNet,
    a: Stack,
    b: Stack,
    draw_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    steps: int,
    generator: torch.Generator,
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    precision: str = "fp32",
    cuda_graphs: bool = True,
    history: list[Tensor] | None = None,
) -> tuple[Params, Tensor]:
    """Train the control points of P curves (pairs stacked in ``a`` and ``b``, leading dim P).

    ``draw_batch(generator)`` returns one training batch per pair: x (P, B, *input), y (P, B).
    One t ~ U(0, 1) per pair per step, drawn from ``generator``. The update is
    ``landscape.train.apply_update`` (torch.optim.SGD semantics, no decay of its own) on the
    gradient of cross-entropy + 0.5 ``weight_decay`` ||phi(t)||^2 (module docstring), one
    :class:`CurveStep` per step (a CUDA graph replay on a GPU unless ``cuda_graphs`` is off;
    ``precision`` bf16 runs the curve's forward and backward under bf16 autocast, as the
    pack trained). Returns the control points (P, *shape) and the last step's cross-entropy
    (P,). A pair whose loss or updated control point turns non-finite stops training there,
    and comes back with a NaN control point and loss (so its curve and ``mc`` read NaN).
    ``history``, when given, receives every step's cross-entropy (P,) in order (read by
    :func:`convergence`).
    """
    if steps < 1:
        raise ValueError(f"bezier training needs >= 1 step, got {steps}")
    P = a.members
    device = next(iter(a.params.values())).device
    c = {n: (a.params[n] + b.params[n]) / 2 for n in a.params}  # w_c starts at the midpoint
    hypers = MemberHypers(*(torch.full((P,), float(v), device=device) for v in (lr, momentum, 0)))
    curve_step = CurveStep(
        net, c, a, b, hypers, weight_decay=weight_decay, precision=precision,
        cuda_graphs=cuda_graphs,
    )  # fmt: skip
    c = curve_step.control
    loss = torch.full((P,), float("nan"), device=device)
    for step in range(steps):
        x, y = draw_batch(generator)
        t = torch.rand(P, generator=generator).to(device)
        loss = curve_step(x, y, t, hypers.lr * bezier_lr_factor(step, steps))
        if history is not None:
            history.append(loss.detach())
    alive = curve_step.alive
    nan = float("nan")
    c = {n: torch.where(alive.view(-1, *([1] * (p.dim() - 1))), p, nan) for n, p in c.items()}
    return c, torch.where(alive, loss.detach(), nan)


def convergence(history: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(previous, last, improvement), each (P,): the mean training loss of a curve over the
    fifth of its steps before the last fifth, over the last fifth, and the relative
    improvement (previous - last) / previous. A window of at least one step each (fewer than
    2 steps: NaN). Means over many steps average the loss over the drawn t, which alone
    differs between t = 0 and t = 0.5 by the barrier; a curve whose mean loss still falls by
    more than a tolerance (the analysis's ``mc_converge_tol``) over its last fifth was still
    being trained and its ``mc`` measures under-training as well as the landscape. Part of
    the fall is the learning-rate schedule's last decay (Yang et al.'s, module docstring),
    which is why the tolerance is relative and set well above the noise of a mean over
    steps."""
    steps = len(history)
    w = steps // 5
    if w < 1:
        nan = torch.full_like(history[-1], float("nan")) if steps else torch.tensor([])
        return nan, nan, nan
    losses = torch.stack(list(history[-2 * w :]))  # (2w, P)
    prev, last = losses[:w].mean(0), losses[w:].mean(0)
    return prev, last, (prev - last) / prev


def evaluate_bezier(
    net: FunctionalNet,
    a: Stack,
    control: Params,
    b: Stack,
    ts: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    bn_x: Tensor | None = None,
    chunk: int = 64,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy (P, T) at phi(t) for every t; BatchNorm statistics recomputed at each
    t from ``bn_x`` (P, m, B, *input) when given (otherwise buffers follow the curve, the
    control point's being the endpoints' mean)."""
    mid_buffers = {
        n: (a.buffers[n] + b.buffers[n]) / 2 if a.buffers[n].is_floating_point() else a.buffers[n]
        for n in a.buffers
    }
    basis = Stack(
        stack_basis(a.params, control, b.params), stack_basis(a.buffers, mid_buffers, b.buffers)
    )
    return evaluate_combinations(
        net, basis, bezier_coeffs(ts), x, y, bn_x=bn_x, chunk=chunk, batch_size=batch_size
    )


@dataclass
class BezierResult:
    mc: Tensor  # (P,) Yang's scalar, in training-error percentage points
    ts: Tensor  # (T,)
    curve_loss: Tensor  # (P, T)
    curve_error: Tensor  # (P, T) training error in %
    curve_accuracy: Tensor  # (P, T) training accuracy, a fraction
    control: Params  # (P, *shape) trained control points
    train_loss: Tensor  # (P,) last training step's loss
    loss_prev: Tensor | None = None  # (P,) mean training loss, the fifth before the last
    loss_last: Tensor | None = None  # (P,) mean training loss, the last fifth of the steps
    improvement: Tensor | None = None  # (P,) (loss_prev - loss_last) / loss_prev


def bezier_connectivity(
    net: FunctionalNet,
    a: Stack,
    b: Stack,
    draw_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    steps: int,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    ts: Sequence[float] = YANG_TS,
    bn_x: Tensor | None = None,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    chunk: int = 64,
    batch_size: int = 512,
    precision: str = "fp32",
    cuda_graphs: bool = True,
) -> BezierResult:
    """Train P Bezier curves (:func:`train_bezier`), evaluate them on x (P, N, *input),
    y (P, N) at ``ts`` (:func:`evaluate_bezier`) and summarise with :func:`yang_mc`.
    ``precision`` and ``cuda_graphs`` are the curve training's (:func:`train_bezier`)."""
    if len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0:
        raise ValueError(f"bezier.ts must run from 0.0 to 1.0, got {tuple(ts)}")
    history: list[Tensor] = []
    control, train_loss = train_bezier(
        net, a, b, draw_batch, steps, generator, lr=lr, momentum=momentum,
        weight_decay=weight_decay, precision=precision, cuda_graphs=cuda_graphs, history=history,
    )  # fmt: skip
    prev, last, improvement = convergence(history)
    t = torch.tensor(ts, dtype=torch.float64)
    # A curve whose training blew up is evaluated with a zero control point and reads NaN:
    # its NaN weights must not share a batched kernel with the other pairs.
    dead = torch.isnan(train_loss)
    safe = {n: torch.where(dead.view(-1, *([1] * (p.dim() - 1))), 0, p) for n, p in control.items()}
    loss, acc = evaluate_bezier(
        net, a, safe, b, t, x, y, bn_x=bn_x, chunk=chunk, batch_size=batch_size
    )
    nan = torch.tensor(float("nan"), device=loss.device)
    loss, acc = torch.where(dead[:, None], nan, loss), torch.where(dead[:, None], nan, acc)
    error = 100 * (1 - acc)
    return BezierResult(
        yang_mc(error), t, loss, error, acc, control, train_loss, prev, last, improvement
    )


@dataclass(frozen=True)
class BezierSpec:
    """Quadratic Bezier mode connectivity (Garipov et al. 2018) with Yang et al.'s protocol and
    scalar mc. Yang et al. train 50 epochs on the full data; 2 epochs is a CPU default."""

    enabled: bool = True
    epochs: int = 2  # an epoch = one member's training-set size in examples
    batch_size: int = 128  # half from each member
    lr: float = 0.01  # Yang et al.
    momentum: float = 0.9  # Yang et al.
    weight_decay: float = 5e-4  # Yang et al., on the control point
    ts: tuple[float, ...] = (
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
    )  # where training error is read (Yang et al.)
    n_samples: int = 2048  # training examples the curve is evaluated on, half from each member
    pairs_per_stack: int = 16  # curves trained together (memory bound)
    # curves per replicate group, the first pairs in seed order; 0: every measured pair.
    # Yang et al. trained one curve per cell (their taxonomy preset sets 1); the other pairs'
    # ``mc`` is NaN, while CKA, distances and barriers still cover every pair. Added after
    # results existed: 0 (every pair, as before) keeps metrics_id as it was.
    max_pairs: int = setting(0, before=0)

    def __post_init__(self) -> None:
        require_positive("metrics.bezier.epochs", self.epochs)
        if not (isinstance(self.max_pairs, int) and self.max_pairs >= 0):
            raise ConfigError(
                f"metrics.bezier.max_pairs must be an integer >= 0 (0: every pair), got {self.max_pairs!r}"
            )
        if self.batch_size < 2:
            raise ConfigError(f"metrics.bezier.batch_size must be >= 2, got {self.batch_size}")
        require_positive("metrics.bezier.lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"metrics.bezier.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"metrics.bezier.weight_decay must be >= 0, got {self.weight_decay}")
        ts = tuple(self.ts)
        if len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0 or list(ts) != sorted(ts):
            raise ConfigError(f"metrics.bezier.ts must increase from 0.0 to 1.0, got {ts!r}")
        require_positive("metrics.bezier.n_samples", self.n_samples)
        require_positive("metrics.bezier.pairs_per_stack", self.pairs_per_stack)


COLUMNS = (
    Column(
        "mc",
        "mode connectivity mc",
        table="pairs",
        unit="percentage points",
        report=17,
        summary=True,
        phase_diagram=True,
        centre=0.0,
    ),
    # the curve's convergence (:func:`convergence`); NaN for pairs without a curve
    Column(
        "bezier_loss_prev", "curve training loss, fifth before last", table="pairs", unit="nats"
    ),
    Column("bezier_loss_last", "curve training loss, last fifth", table="pairs", unit="nats"),
    Column("bezier_improvement", "curve loss improvement over its last fifth", table="pairs"),
)
register(
    Metric(
        name="bezier",
        spec=BezierSpec,
        family="global",
        order=103,
        hashed_when_off=True,
        columns=lambda s: COLUMNS,
        tables=("surfaces",),
        passes=("pairs",),
    )
)
