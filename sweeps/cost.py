"""How much work a variant is, so that packs run biggest first and none is a long tail.

A variant's cost is an estimate of its floating-point operations: the model's forward
FLOPs per example (counted once per architecture, on the ``meta`` device, so nothing is
allocated) times the examples it touches, forward and backward (about 3x a forward)
while training, forward for the evaluations (after every epoch, or on ``train.eval_every`` /
``train.eval_points``'s schedule), and about 4x a forward per Hessian
probe sample. Only ratios matter: they order the packs (longest-processing-time-first
scheduling), and they split a pack that alone would be more than a fair share of the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from landscape.data import subset_size
from landscape.datasets import DATA_SETS, train_set_size
from landscape.measure import MetricsSpec
from landscape.models import model_forward_flops
from landscape.train import eval_steps
from landscape.variant import Variant

TAIL_SHARE = 0.5  # no pack may cost more than this fraction of one worker's fair share of the sweep


def forward_flops(v: Variant) -> float:
    """Forward FLOPs for one example of this variant's model and data."""
    record = DATA_SETS[v.data.name]
    return model_forward_flops(
        v.model, record.shape_of(v.data), record.classes_of(v.data), record.vocab_of(v.data)
    )


def _steps_per_epoch(v: Variant) -> tuple[int, int, int]:
    """(training examples, batch size, steps per epoch) of a variant."""
    n_train = subset_size(v.data, train_set_size(v.data))
    batch = v.optim.batch_for(n_train)  # 0: full batch
    return n_train, batch, n_train // batch if v.train.drop_last else math.ceil(n_train / batch)


def variant_cost(v: Variant, metrics: MetricsSpec) -> float:
    n_train, batch, steps = _steps_per_epoch(v)
    n_test = DATA_SETS[v.data.name].test_size_of(v.data)
    examples = 3.0 * v.train.epochs * steps * batch  # forward + backward
    evaluations = 1 + len(eval_steps(v.train, v.train.epochs * steps, steps))  # and step 0
    examples += evaluations * (n_train + n_test)  # by default after every epoch
    ht = metrics.hessian_trace
    if ht.enabled:
        examples += 4.0 * ht.n_probes * min(ht.n_samples, n_train)
    return forward_flops(v) * examples


def _split(pack: list[Variant]) -> list[list[Variant]] | None:
    """Two halves, cut between replicate groups (global metrics need a group together); None
    for a pack of one group."""
    groups: dict[str, list[Variant]] = {}
    for v in pack:
        groups.setdefault(v.group_id, []).append(v)
    if len(groups) < 2:
        return None
    ordered = list(groups.values())
    cut = len(ordered) // 2
    return [[v for g in ordered[:cut] for v in g], [v for g in ordered[cut:] for v in g]]


def schedule(
    packs: Sequence[list[Variant]], metrics: MetricsSpec, n_workers: int
) -> list[tuple[list[Variant], float]]:
    """Split packs that alone exceed ``TAIL_SHARE`` of a worker's fair share (between replicate
    groups only), then order all packs by estimated cost, biggest first. Returns (pack, cost)."""
    costs = {id(v): variant_cost(v, metrics) for p in packs for v in p}
    total = sum(costs.values())
    budget = TAIL_SHARE * total / max(1, n_workers)
    todo = [list(p) for p in packs]
    out: list[tuple[list[Variant], float]] = []
    while todo:
        pack = todo.pop()
        cost = sum(costs[id(v)] for v in pack)
        halves = _split(pack) if cost > budget else None
        if halves:
            todo.extend(halves)
        else:
            out.append((pack, cost))
    out.sort(key=lambda pc: -pc[1])
    return out


# What a variant costs one CPU core in seconds, roughly: a small model's training step costs
# about STEP_S whatever its FLOPs (Python and kernel launches: ~0.25 ms for a member of a pack
# of two, with the evaluations), its metrics about MEASURE_S (the demo's: Hessian trace and
# top eigenvalue, and its share of its seed pair's distance, CKA, barrier, Bezier curve and
# MLI); a large model costs its FLOPs at CPU_FLOPS. Fitted to the demo's grid on this
# project's 2-core x86_64 CPU (one thread): 8 variants of 2 epochs took 1.2 s one pack after
# another (estimate 1.2), the demo's 40 of 2 epochs 5.2 s (5.2), of 30 epochs 17.4 s (17.4),
# 160 of 2 epochs 17.9 s (20.9).
STEP_S = 3.3e-4
MEASURE_S = 0.11
CPU_FLOPS = 1e10


def cpu_seconds(variants: Sequence[Variant], metrics: MetricsSpec) -> float:
    """An estimate of the seconds one CPU core takes to train and measure ``variants`` one
    after another (what deciding whether to start Ray for them needs: its order of
    magnitude)."""
    total = 0.0
    for v in variants:
        steps = v.train.epochs * _steps_per_epoch(v)[2]
        total += max(STEP_S * steps + MEASURE_S, variant_cost(v, metrics) / CPU_FLOPS)
    return total
