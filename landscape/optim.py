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

Each rule is a pure function of a stacked tensor, its gradient and its state slots that
returns the new values. :func:`apply_update` applies it once to the whole pack: every
parameter and gradient is laid side by side in one (K, P) matrix (member k's P parameters in
row k), the state slots live in such matrices from the start (:class:`SlotState`), and the
result is written back in place for live members only. A step is then a dozen whole-pack
kernels instead of a dozen per parameter tensor (a ResNet18 has 62 of them), which is most
of an update's cost for a small model, where each kernel's launch outweighs its work.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors

from landscape.functional import Params
from landscape.variant import ConfigError, OptimSpec

# A member with a parameter this large (in magnitude) after an update has diverged, like one
# with a non-finite parameter. Trained weights stay within O(100); far beyond, the next step
# overflows float32/bf16 activations (BatchNorm's squared deviations pass 3.4e38 from ~1e19)
# inside kernels shared with the other members, and on a GPU a grouped convolution carries the
# resulting NaN into their gradients: on an H200, a bf16 ResNet18 member with lr = 1e30
# (finite parameters of ~1e28 after one step) killed all three members of its pack at step 2.
# Caught here, the member is zeroed before its parameters reach a kernel.
DIVERGED_ABOVE = 1e8


@dataclass
class MemberHypers:
    """Per-member hyperparameters as (K,) float tensors on the pack's device; ``lr`` is the peak
    rate (:func:`base_lr`), which a step's schedule factor scales (``apply_update``'s ``lr``)."""

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
class _Local:
    """The per-member hyperparameters shaped (K, 1) against the pack's (K, P) matrix (the
    learning rate (K, P) when parameters have their own multipliers)."""

    lr: Tensor
    momentum: Tensor
    weight_decay: Tensor | None  # None: no member decays (MemberHypers.decays)


def _l2(g: Tensor, p: Tensor, h: _Local) -> Tensor:
    """The gradient with L2 weight decay added: g + wd * p."""
    return g if h.weight_decay is None else g + h.weight_decay * p


Slots = dict[str, Tensor]
Rule = Callable[[OptimSpec, Tensor, Tensor, Slots, _Local, Tensor], tuple[Tensor, Slots]]


def _sgd(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; buf = mu*buf + g; p -= lr*(g + mu*buf if nesterov else buf). The buffer starts
    # at zeros, so step 1 gives buf = g exactly, as torch's clone of the first gradient does.
    g = _l2(g, p, h)
    buf = h.momentum * s["momentum_buffer"] + g
    direction = g + h.momentum * buf if spec.nesterov else buf
    return p - h.lr * direction, {"momentum_buffer": buf}


def _sgd_in_place(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, alive: Tensor
) -> Tensor:
    """:func:`_sgd` written into ``p`` and the buffer (the same kernels on the same values, so
    the same bits, without a new matrix for each and the copies back), then the divergence
    check of :func:`apply_update` on the result: a pack of one laid out in one matrix on a
    CPU, where the check's host read costs no wait. Returns the (K,) bool still alive."""
    g = _l2(g, p, h)
    buf = s["momentum_buffer"]
    buf.mul_(h.momentum).add_(g)
    p.sub_(h.lr * (g + h.momentum * buf if spec.nesterov else buf))
    finite = alive.bool() & (p.abs().amax(1) < DIVERGED_ABOVE)  # False for NaN and inf too
    if not bool(finite.all()):
        keep = finite[:, None]
        buf.copy_(torch.where(keep, buf, 0))
        p.copy_(torch.where(keep, p, 0))
    return finite


def _adam_core(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    # m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    beta1, beta2 = spec.betas
    m = s["exp_avg"].lerp(g, 1 - beta1)
    v = s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    t = step.double()  # a 0-dim device tensor; float64 keeps 1 - 0.999**t exact to float32
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    denom = v.sqrt() / bias2.sqrt() + spec.eps
    return p - (h.lr / bias1) * m / denom, {"exp_avg": m, "exp_avg_sq": v}


def _adam(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    return _adam_core(spec, p, _l2(g, p, h), s, h, step)  # L2: decay through the gradient


def _adamw(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    decayed = p if h.weight_decay is None else p * (1 - h.lr * h.weight_decay)
    return _adam_core(spec, decayed, g, s, h, step)  # decoupled decay first


def _rmsprop(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; sq = alpha*sq + (1-alpha)*g^2; buf = mu*buf + g/(sqrt(sq) + eps); p -= lr*buf
    # (with mu = 0 the buffer is exactly g/(sqrt(sq) + eps): torch's momentum-free update)
    g = _l2(g, p, h)
    sq = s["square_avg"] * spec.alpha + (1 - spec.alpha) * g * g
    buf = h.momentum * s["momentum_buffer"] + g / (sq.sqrt() + spec.eps)
    return p - h.lr * buf, {"square_avg": sq, "momentum_buffer": buf}


def _adagrad(
    spec: OptimSpec, p: Tensor, g: Tensor, s: Slots, h: _Local, step: Tensor
) -> tuple[Tensor, Slots]:
    # g += wd*p; sum += g^2; p -= lr * g/(sqrt(sum) + eps)   (lr_decay 0, initial accumulator 0)
    g = _l2(g, p, h)
    acc = s["sum"] + g * g
    return p - h.lr * g / (acc.sqrt() + spec.eps), {"sum": acc}


# name -> (update rule, state slots, each initialised to zeros like the parameter)
UPDATE_RULES: dict[str, tuple[Rule, tuple[str, ...]]] = {
    "sgd": (_sgd, ("momentum_buffer",)),
    "adam": (_adam, ("exp_avg", "exp_avg_sq")),
    "adamw": (_adamw, ("exp_avg", "exp_avg_sq")),
    "rmsprop": (_rmsprop, ("square_avg", "momentum_buffer")),
    "adagrad": (_adagrad, ("sum",)),
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


def _rule(spec: OptimSpec) -> tuple[Rule, tuple[str, ...]]:
    if spec.name not in UPDATE_RULES:
        raise ConfigError(f"optim.name must be one of {', '.join(UPDATE_RULES)}, got {spec.name!r}")
    return UPDATE_RULES[spec.name]


class SlotState(Mapping[str, "dict[str, Tensor]"]):
    """An optimiser's state for a pack: one (K, P) matrix per slot, zeros at the start.

    ``state[slot][name]`` is parameter ``name``'s (K, *shape) view into the slot's matrix
    (for reading; the update writes the matrices). ``names``/``shapes`` fix the order and
    shapes of the parameters the matrices lay side by side, and ``lr_row`` is each column's
    learning-rate multiplier (``optim.lr_multipliers``), or None when there are none.
    """

    def __init__(self, spec: OptimSpec, params: Params):
        _, slots = _rule(spec)
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
        if spec.lr_multipliers:
            mult = [lr_multiplier(spec, n) for n in self.names]
            self.lr_row = torch.repeat_interleave(
                torch.tensor(mult, dtype=first.dtype), torch.tensor(self.sizes)
            ).to(first.device)[None]

    def adopt(self, params: dict[str, Tensor]) -> None:
        """Lay a pack of one's parameters out in one (1, P) matrix, in this state's order, and
        put its views in ``params`` in place of the tensors (the same values, contiguous, so
        nothing that reads them can tell): :func:`apply_update` then updates the matrix
        itself, without concatenating the parameters and copying the result back (a dozen
        kernels and views a step, which on a small model cost more than the rule). Packs of
        several members keep their tensors: a member's block of a (K, P) row would not be
        contiguous. Replacing a tensor in ``params`` later undoes it (an identity check)."""
        first = params[self.names[0]]
        if first.shape[0] != 1 or any(params[n].dtype != first.dtype for n in self.names):
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


@torch.no_grad()
def lr_multiplier(spec: OptimSpec, name: str) -> float:
    """The learning-rate multiplier of parameter ``name``: among the ``optim.lr_multipliers``
    patterns (shell-style, e.g. ``head.*``) that match it, the longest (most specific) wins;
    1 when none matches. The fine-tuning recipe: a small base rate, ``{"head.*": 10}``."""
    table = dict(spec.lr_multipliers)
    matches = [pattern for pattern in table if fnmatch.fnmatchcase(name, pattern)]
    return table[max(matches, key=len)] if matches else 1.0


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
    rule, slots = _rule(spec)
    if not isinstance(step, Tensor):
        step = torch.tensor(step, device=alive.device)
    flat = state.laid_out(params)  # params are views of state.params_flat: no concatenation
    p = state.params_flat if flat else state.flatten(params)
    dtype = p.dtype
    lr_p = lr.to(dtype)[:, None]
    if state.lr_row is not None:
        lr_p = lr_p * state.lr_row
    h = _Local(lr_p, *state.columns(hypers, dtype))
    if flat and spec.name == "sgd" and p.device.type == "cpu":
        return _sgd_in_place(spec, p, state.flatten(grads).to(dtype), state.flat, h, alive)
    new_p, new = rule(spec, p, state.flatten(grads).to(dtype), state.flat, h, step)
    finite = alive.bool() & (new_p.abs().amax(1) < DIVERGED_ABOVE)  # False for NaN and inf too
    # every member alive (a host read costs no wait on a CPU): nothing to zero
    everyone = p.device.type == "cpu" and bool(finite.all())
    keep = finite[:, None]

    def kept(t: Tensor) -> Tensor:
        return t if everyone else torch.where(keep, t, 0)

    for slot in slots:
        state.flat[slot].copy_(kept(new[slot]))
    if flat:
        p.copy_(kept(new_p))
        return finite
    new_views = state.unflatten(kept(new_p))
    torch._foreach_copy_([params[n] for n in state.names], [new_views[n] for n in state.names])
    return finite
