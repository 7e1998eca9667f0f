"""Learning-rate range test (Smith 2017, "Cyclical learning rates for training neural
networks", section 3.3): train briefly from the trained point while the learning rate
grows, and record the loss. Smith grows it linearly over a few epochs; we grow it
exponentially over a few hundred steps, as fastai's ``lr_find`` does (there: 1e-7 to 10 in
100 steps, stopping when the loss exceeds 4x its best), so that every decade gets the same
number of steps.

Smith and fastai start from the initialisation, where the best loss is near chance (``ln C``
for ``C`` classes) and "4x the best loss" is a clear blow-up. Run on a trained model (as a
sweep measures it), the best loss is about 0.01 and 4x that is within minibatch noise at the
smallest rates: the test stopped after two or three steps at lr 1e-6 and said nothing. So the
stop line is the larger of ``stop_factor`` times the best loss and a *reference* loss,
by default the chance loss ``ln C`` (the uniform predictor's): a trained model is followed
until the rate has undone its training (its loss is worse than a guess) or has blown up
relative to its best, whichever comes later. From the initialisation the best loss is near
``ln C`` and the rule is fastai's; ``reference=0`` gives fastai's rule everywhere.

The registered local metric ``lr_range`` (``landscape.metrics.registry``) runs the test on
every member of a pack into the ``lr_range`` table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from landscape.functional import FunctionalNet, Stack
from landscape.metrics.registry import Metric, check_ranges, register
from landscape.optim import MemberHypers
from landscape.pack import PackData
from landscape.train import OptimState, StepFn, init_state, train_step
from landscape.variant import ConfigError, OptimSpec

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer


@dataclass
class LRRangeCurve:
    lr: Tensor  # (S,) learning rate of each step
    loss: Tensor  # (K, S) minibatch training loss before each step; NaN once a member stopped


def lr_range_test(
    net: FunctionalNet,
    stack: Stack,
    data: PackData,
    optim: OptimSpec,
    hypers: MemberHypers,
    *,
    lr_min: float = 1e-6,
    lr_max: float = 10.0,
    steps: int = 200,
    batch_size: int = 64,
    stop_factor: float = 4.0,
    reference: float | None = None,
    generator: torch.Generator,
) -> LRRangeCurve:
    """Loss while the learning rate grows as lr_min (lr_max / lr_min)^(t / (steps - 1)).

    Starts from a copy of ``stack`` (it is left untouched) and trains every member with
    its own optimiser settings (``optim.name`` and its pack-wide knobs; momentum and weight
    decay per member from ``hypers``; the rate from the schedule), in training mode (BatchNorm on batch statistics, running statistics of
    the copy updated). Each step draws ``batch_size`` positions, shared by the members,
    uniformly with replacement from each member's own training set. A member stops (NaN
    from then on, parameters frozen) once its loss is not finite or exceeds
    ``max(stop_factor * best so far, reference)``, ``reference`` by default the chance loss
    ``ln(data.num_classes)`` (module docstring); the step that reveals it is still taken
    (the engine's step updates before the stop is known), which changes no recorded loss.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got lr_min={lr_min}, lr_max={lr_max}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if reference is None:
        reference = math.log(data.num_classes)
    if not (math.isfinite(reference) and reference >= 0):
        raise ValueError(f"reference must be a finite loss >= 0, got {reference}")
    device = data.y_train.device
    work = stack.clone()
    lrs = lr_min * (lr_max / lr_min) ** torch.linspace(0, 1, steps, dtype=torch.float64)
    K = work.members
    losses = torch.full((K, steps), float("nan"), device=device)
    best = torch.full((K,), float("inf"), device=device)
    # the engine's own training step (landscape.train): one step for sweeps, tests and this
    opt = OptimState(
        spec=optim,
        hypers=hypers,
        state=init_state(optim, work.params),
        alive=torch.ones(K, dtype=torch.bool, device=device),
        diverged_step=torch.full((K,), -1, dtype=torch.long, device=device),
    )
    step_fn = StepFn(net)
    for t in range(steps):
        pos = torch.randint(
            0, data.n_train, (batch_size,), generator=generator, device=generator.device
        )
        x, y = data.train_batch(pos.to(device).expand(K, batch_size))
        running = opt.alive.clone()
        lr = torch.full((K,), float(lrs[t]), device=device)
        loss, _ = train_step(step_fn, work, opt, x, y, lr, "fp32")  # loss before the step
        best = torch.where(running, torch.minimum(best, loss), best)
        line = torch.clamp(stop_factor * best, min=reference)
        stopped = ~(running & torch.isfinite(loss) & (loss <= line))
        losses[:, t] = torch.where(stopped, float("nan"), loss)
        opt.alive = opt.alive & ~stopped  # frozen from the next step on
        if not opt.alive.any():
            break
    return LRRangeCurve(lrs.to(device), losses)


def lr_range_rows(curve: LRRangeCurve, members: list[int] | None = None) -> list[dict]:
    """Rows for the ``lr_range`` table (member, step, lr, loss), up to each member's stop."""
    K = curve.loss.shape[0]
    members = list(range(K)) if members is None else members
    lrs, losses = curve.lr.tolist(), curve.loss.tolist()
    return [
        {"member": member, "step": t, "lr": lrs[t], "loss": loss}
        for k, member in enumerate(members)
        for t, loss in enumerate(losses[k])
        if loss == loss  # NaN: stopped
    ]


@dataclass(frozen=True)
class LRRangeSpec:
    """Learning-rate range test (Smith 2017), exponential as fastai's lr_find. Off by
    default: it trains a copy of every member for ``steps`` steps."""

    enabled: bool = False
    lr_min: float = 1e-6
    lr_max: float = 10.0
    steps: int = 200
    batch_size: int = 0  # 0: the pack's optim.batch_size
    # stop a member once its loss exceeds max(this x its best, ln C): lr_range module docstring
    stop_factor: float = 4.0

    def __post_init__(self) -> None:
        check_ranges(
            self, "lr_range", ("lr_min", "lr_max", "steps", "stop_factor"), ("batch_size",)
        )
        if not self.lr_min < self.lr_max:
            raise ConfigError(
                "metrics.lr_range.lr_min must be < metrics.lr_range.lr_max, "
                f"got {self.lr_min} and {self.lr_max}"
            )


def _lr_range(
    m: Measurer, s: LRRangeSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    alive = [m.pack.variants[k] for k in m.alive]
    data = m.pack.data
    idx = torch.as_tensor(m.alive, device=data.train_idx.device)
    own = PackData(
        data.x_train,
        data.train_idx[idx],
        data.y_train[idx],
        data.x_test,
        data.y_test,
        data.num_classes,
    )
    hypers = MemberHypers.from_specs([v.optim for v in alive], m.device)
    curve = lr_range_test(
        m.pack.net,
        m.stack,
        own,
        alive[0].optim,
        hypers,
        lr_min=s.lr_min,
        lr_max=s.lr_max,
        steps=s.steps,
        batch_size=m.batch_size(s.batch_size),
        stop_factor=s.stop_factor,
        generator=sample_g,
    )
    m.table("lr_range", lr_range_rows(curve, m.alive))


register(
    Metric(
        name="lr_range",
        spec=LRRangeSpec,
        family="local",
        order=6,
        hashed_when_off=True,
        tables=("lr_range",),
        measure=_lr_range,
    )
)
