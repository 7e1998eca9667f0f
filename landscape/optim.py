"""Functional optimisers for stacked models: every hyperparameter is a per-member tensor.

Parameters are stacked ``(K, *shape)``; learning rate, momentum and weight decay are
``(K,)`` tensors, so members of one pack may differ in them. The update rules follow
``torch.optim`` exactly (tests compare against it), so a packed run equals K solo runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.functional import Params
from landscape.variant import OptimSpec


@dataclass
class MemberHypers:
    """Per-member hyperparameters as (K,) float tensors on the pack's device."""

    lr: Tensor
    momentum: Tensor
    weight_decay: Tensor

    @staticmethod
    def from_specs(specs: Sequence[OptimSpec], device: torch.device | str) -> MemberHypers:
        def col(name: str) -> Tensor:
            return torch.tensor([float(getattr(s, name)) for s in specs], device=device)

        lr = torch.tensor([base_lr(s) for s in specs], device=device)
        return MemberHypers(lr=lr, momentum=col("momentum"), weight_decay=col("weight_decay"))


def base_lr(spec: OptimSpec) -> float:
    """The peak learning rate, after optional linear scaling with batch size."""
    if spec.lr_ref_batch_size > 0:
        return spec.lr * spec.batch_size / spec.lr_ref_batch_size
    return spec.lr


def lr_factor(spec: OptimSpec, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``."""
    warmup = spec.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "step":
        passed = sum(step >= round(f * total_steps) for f in spec.step_at)
        return spec.gamma**passed
    # cosine from the end of warm-up to the end of training
    t = (step - warmup) / max(total_steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * t))


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(K,) -> (K, 1, ..., 1) to broadcast against a stacked tensor."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def init_state(spec: OptimSpec, params: Params) -> dict[str, Params]:
    if spec.name == "sgd":
        return {"momentum_buffer": {n: torch.zeros_like(p) for n, p in params.items()}}
    raise NotImplementedError(f"optim.name={spec.name!r} is not implemented yet")


@torch.no_grad()
def apply_update(
    spec: OptimSpec,
    params: Params,
    grads: Params,
    state: dict[str, Params],
    hypers: MemberHypers,
    lr: Tensor,
    step: int,
    alive: Tensor,
) -> None:
    """One in-place update of every member. ``lr`` is the (K,) learning rate for this step
    (schedule applied); members where the (K,) bool ``alive`` is False keep their parameters
    exactly (a diverged member is frozen, NaN gradients and all). ``step`` counts from 1."""
    if spec.name != "sgd":
        raise NotImplementedError(f"optim.name={spec.name!r} is not implemented yet")
    # torch.optim.SGD, dampening 0: g += wd*p; buf = mu*buf + g (buf = g at step 1); p -= lr*(g + mu*buf if nesterov else buf)
    for name, p in params.items():
        g = grads[name] + _bcast(hypers.weight_decay, p) * p
        buf = state["momentum_buffer"][name]
        mu = _bcast(hypers.momentum, p)
        if step == 1:
            buf.copy_(g)
        else:
            buf.mul_(mu).add_(g)
        direction = g + mu * buf if spec.nesterov else buf
        p.copy_(torch.where(_bcast(alive, p).bool(), p - _bcast(lr, p) * direction, p))
