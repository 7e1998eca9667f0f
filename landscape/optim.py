"""Functional optimisers for stacked models: every hyperparameter is a per-member tensor.

Parameters are stacked ``(K, *shape)``; learning rate, momentum and weight decay are
``(K,)`` tensors, so members of one pack may differ in them. Betas, eps and alpha are
pack-wide (they are part of the pack key). The update rules follow ``torch.optim`` with its
default flags exactly (tests compare against it), so a packed run equals K solo runs:

- ``sgd``: torch.optim.SGD (dampening 0; ``nesterov`` from the spec).
- ``adam`` / ``adamw``: torch.optim.Adam (L2 weight decay added to the gradient) and
  torch.optim.AdamW (decoupled: p *= 1 - lr * wd first); no amsgrad.
- ``rmsprop``: torch.optim.RMSprop, not centered, momentum from ``optim.momentum``.
- ``adagrad``: torch.optim.Adagrad with lr_decay 0 and initial accumulator 0; its eps is
  ``optim.eps`` (torch's own default is 1e-10, ours 1e-8: set it to match torch).

Each rule is a small pure function of a stacked tensor, its gradient, its state slots and the
members' hyperparameters that returns the new values; :func:`landscape.train.apply_update`
applies one to a whole pack at once, laid out as (K, P) matrices. Besides the rules: the
per-member hyperparameters (:class:`MemberHypers`), the learning-rate schedule
(:func:`lr_factor`), per-parameter rate multipliers and the knobs each rule reads.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.variant import ConfigError, OptimSpec


@dataclass
class MemberHypers:
    """Per-member hyperparameters as (K,) float tensors on the pack's device; ``lr`` is the peak
    rate (:func:`base_lr`), which a step's schedule factor scales (the ``lr`` of
    :func:`landscape.train.apply_update`)."""

    lr: Tensor
    momentum: Tensor
    weight_decay: Tensor
    # whether any member decays its weights (known on the host): without, the update skips
    # the decay term, whose value would be + 0 * p (as torch.optim skips it for 0)
    decays: bool = True

    @staticmethod
    def from_specs(specs: Sequence[OptimSpec], device: torch.device | str) -> MemberHypers:
        def col(name: str) -> Tensor:
            return torch.tensor([float(getattr(s, name)) for s in specs], device=device)

        lr = torch.tensor([base_lr(s) for s in specs], device=device)
        decays = any(s.weight_decay != 0 for s in specs)
        return MemberHypers(lr, col("momentum"), col("weight_decay"), decays)


def base_lr(spec: OptimSpec) -> float:
    """The peak learning rate, after optional linear scaling with batch size."""
    if spec.lr_ref_batch_size > 0:
        return spec.lr * spec.batch_size / spec.lr_ref_batch_size
    return spec.lr


def lr_factor(spec: OptimSpec, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_epochs`` (factor (step + 1) / warm-up steps, capped at 1),
    then ``constant``; ``step``: times ``gamma`` at each fraction in ``step_at`` of training
    (Yang et al.: x0.1 at 75%); ``cosine``: half a cosine from 1 at the end of warm-up to 0
    at ``total_steps`` (torch's CosineAnnealingLR with T_max = total_steps when there is no
    warm-up).
    """
    warmup = spec.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup:
        return min(1.0, (step + 1) / warmup)
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "step":
        # milestones fall on epoch boundaries, as torch's MultiStepLR stepped once per epoch:
        # the first epoch e (0-based) with e >= f * epochs, Yang et al.'s test (ceil; the
        # 1e-9 keeps 0.1 * 30 = 3.0000000000000004 at 3)
        epochs = total_steps / steps_per_epoch
        passed = sum(step >= math.ceil(f * epochs - 1e-9) * steps_per_epoch for f in spec.step_at)
        return spec.gamma**passed
    # cosine from the end of warm-up to the end of training
    t = (step - warmup) / max(total_steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class LocalHypers:
    """The per-member hyperparameters shaped (K, 1) against the pack's (K, P) matrix (the
    learning rate (K, P) when parameters have their own multipliers)."""

    lr: Tensor
    momentum: Tensor
    weight_decay: Tensor | None  # None: no member decays (MemberHypers.decays)


def l2_decayed(g: Tensor, p: Tensor, h: LocalHypers) -> Tensor:
    """The gradient with L2 weight decay added: g + wd * p."""
    return g if h.weight_decay is None else g + h.weight_decay * p


Slots = dict[str, Tensor]
Rule = Callable[[OptimSpec, Tensor, Tensor, Slots, LocalHypers, Tensor], tuple[Tensor, Slots]]


def sgd(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; buf = mu*buf + g; p -= lr*(g + mu*buf if nesterov else buf). The buffer starts
    # at zeros, so step 1 gives buf = g exactly, as torch's clone of the first gradient does.
    g = l2_decayed(g, p, h)
    buf = h.momentum * s["momentum_buffer"] + g
    direction = g + h.momentum * buf if spec.nesterov else buf
    return p - h.lr * direction, {"momentum_buffer": buf}


def sgd_in_place(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    """:func:`sgd` written into ``p`` and its momentum buffer, which it returns: the same
    kernels on the same values (so the same bits) without a new matrix for each. ``g`` is
    consumed: the step lr * direction is written into its memory (a matrix of the size of
    the parameters allocated fresh each step costs its page faults on a CPU)."""
    g = l2_decayed(g, p, h)
    buf = s["momentum_buffer"].mul_(h.momentum).add_(g)
    direction = g.add_(h.momentum * buf) if spec.nesterov else buf
    p.sub_(torch.mul(h.lr, direction, out=g))
    return p, {"momentum_buffer": buf}


def _adam_core(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    # m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    beta1, beta2 = spec.betas
    m = s["exp_avg"].lerp(g, 1 - beta1)
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    t = step.double()  # a 0-dim device tensor; float64 keeps 1 - 0.999**t exact to float32
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    denom = v.sqrt() / bias2.sqrt() + spec.eps
    return p - (h.lr / bias1) * m / denom, {"exp_avg": m, "exp_avg_sq": v}


def adam(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    return _adam_core(spec, p, l2_decayed(g, p, h), s, h, step)  # L2: decay through the gradient


def adamw(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    decayed = p if h.weight_decay is None else p * (1 - h.lr * h.weight_decay)
    return _adam_core(spec, decayed, g, s, h, step)  # decoupled decay first


def rmsprop(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; sq = alpha*sq + (1-alpha)*g^2; buf = mu*buf + g/(sqrt(sq) + eps); p -= lr*buf
    # (with mu = 0 the buffer is exactly g/(sqrt(sq) + eps): torch's momentum-free update)
    g = l2_decayed(g, p, h)
    sq = s["square_avg"] * spec.alpha + (1 - spec.alpha) * g * g
    buf = h.momentum * s["momentum_buffer"] + g / (sq.sqrt() + spec.eps)
    return p - h.lr * buf, {"square_avg": sq, "momentum_buffer": buf}


def adagrad(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: LocalHypers, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; sum += g^2; p -= lr * g/(sqrt(sum) + eps)   (lr_decay 0, initial accumulator 0)
    g = l2_decayed(g, p, h)
    acc = s["sum"] + g * g
    return p - h.lr * g / (acc.sqrt() + spec.eps), {"sum": acc}


# name -> (update rule, state slots, each initialised to zeros like the parameter)
UPDATE_RULES: dict[str, tuple[Rule, tuple[str, ...]]] = {
    "sgd": (sgd, ("momentum_buffer",)),
    "adam": (adam, ("exp_avg", "exp_avg_sq")),
    "adamw": (adamw, ("exp_avg", "exp_avg_sq")),
    "rmsprop": (rmsprop, ("square_avg", "momentum_buffer")),
    "adagrad": (adagrad, ("sum",)),
}


# The optimiser-specific fields of OptimSpec that each update rule reads; the rest of
# OPTIMISER_KNOBS it ignores (a sweep refuses them set away from their defaults).
OPTIMISER_KNOBS = ("momentum", "nesterov", "betas", "eps", "alpha")
READS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("betas", "eps"),
    "adamw": ("betas", "eps"),
    "rmsprop": ("momentum", "eps", "alpha"),
    "adagrad": ("eps",),
}


def ignored_knobs(spec: OptimSpec) -> dict[str, Any]:
    """Optimiser-specific fields set away from their defaults that ``spec.name`` never reads
    (``optim=adam optim.momentum=0.5`` trains what ``optim=adam`` trains): name -> value."""
    default = OptimSpec()
    return {
        knob: getattr(spec, knob)
        for knob in OPTIMISER_KNOBS
        if knob not in READS.get(spec.name, OPTIMISER_KNOBS)
        and getattr(spec, knob) != getattr(default, knob)
    }


def update_rule(spec: OptimSpec) -> tuple[Rule, tuple[str, ...]]:
    """``spec.name``'s update rule and its state slots."""
    if spec.name not in UPDATE_RULES:
        raise ConfigError(f"optim.name must be one of {', '.join(UPDATE_RULES)}, got {spec.name!r}")
    return UPDATE_RULES[spec.name]


@torch.no_grad()
def lr_multiplier(spec: OptimSpec, name: str) -> float:
    """The learning-rate multiplier of parameter ``name``: among the ``optim.lr_multipliers``
    patterns (shell-style, e.g. ``head.*``) that match it, the longest (most specific) wins;
    1 when none matches. The fine-tuning recipe: a small base rate, ``{"head.*": 10}``."""
    table = dict(spec.lr_multipliers)
    matches = [pattern for pattern in table if fnmatch.fnmatchcase(name, pattern)]
    return table[max(matches, key=len)] if matches else 1.0
