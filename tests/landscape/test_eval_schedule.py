"""Evaluation on a schedule (train.eval_every, train.eval_points): which steps get a curve row,
that the default reproduces the per-epoch curves, that rows on a schedule are exactly the
per-step quantities, best_train_loss among the evaluations, and the trajectory recorder's
log-spaced points coinciding with the evaluation points."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from landscape.data import load_dataset
from landscape.recorder import TrajectorySpec, scheduled_steps
from landscape.train import eval_steps, log_spaced_steps, train_pack
from landscape.variant import ConfigError, DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant

SPEC = DataSpec(name="synthetic", n_train=48, n_test=16, n_features=6, n_classes=3)


def test_default_schedule_is_every_epoch_end():
    assert eval_steps(TrainSpec(), total=12, spe=4) == [4, 8, 12]


def test_eval_every_adds_the_last_step():
    assert eval_steps(TrainSpec(eval_every=5), total=12, spe=4) == [5, 10, 12]
    assert eval_steps(TrainSpec(eval_every=4), total=12, spe=4) == [4, 8, 12]


def test_eval_points_are_log_spaced_and_override_eval_every():
    # 10^4 full-batch steps: 200 points, rounding merges the early repeats (1, 1, 1, 2, ...)
    steps = eval_steps(TrainSpec(eval_points=200, eval_every=7), total=10_000, spe=1)
    assert steps[0] == 1 and steps[-1] == 10_000 and 100 < len(steps) <= 200
    assert steps == sorted(set(steps))
    assert log_spaced_steps(100, 3) == [1, 10, 100]  # exp(log(100) * i / 2), i = 0, 1, 2
    assert log_spaced_steps(9, 1) == [9]


def test_trajectory_log_points_follow_eval_points():
    """metrics.trajectory.log_points = train.eval_points + 1 measures at the evaluation steps
    (and at the initialisation, as the curves do)."""
    for total, k in ((10_000, 200), (37, 5), (3, 8)):
        ours = eval_steps(TrainSpec(eval_points=k), total=total, spe=1)
        assert scheduled_steps(TrajectorySpec(log_points=k + 1), total, 1) == [0, *ours]


@pytest.mark.parametrize("key", ["eval_every", "eval_points"])
def test_negative_schedules_are_refused(key):
    with pytest.raises(ConfigError, match=rf"^train.{key} must be an integer >= 0 .*got -1$"):
        TrainSpec(**{key: -1})


def test_schedule_knobs_leave_existing_ids_alone():
    identity = Variant().identity()
    assert "train.eval_every" not in identity and "train.eval_points" not in identity
    assert Variant(train=TrainSpec(eval_every=3)).variant_id != Variant().variant_id


def _run(train: TrainSpec, batch: int = 16, seeds=(0, 1)):
    ds = load_dataset(SPEC)
    v = Variant(model=ModelSpec(width=8), data=SPEC, optim=OptimSpec(batch_size=batch), train=train)
    return train_pack([dataclasses.replace(v, seed=s) for s in seeds], ds)


def _by_step(result, member=0):
    return {c["step"]: c for c in result.curves if c["member"] == member}


def test_rows_on_a_schedule_are_the_same_arithmetic_as_evaluating_every_step():
    """Evaluation is a pure function of the parameters (eval mode, no randomness), so the
    schedule changes which rows exist, not the training: the rows of eval_every=5 are
    bit-for-bit the rows of eval_every=1 at steps 5, 10 and the last, and the running loss is
    the batch-weighted mean of the per-step losses since the previous row."""
    train = TrainSpec(epochs=4, pack_step="vmap")  # 48 / 16: 3 steps per epoch, 12 in all
    every = _run(dataclasses.replace(train, eval_every=1))
    some = _run(dataclasses.replace(train, eval_every=5))
    epochs = _run(train)
    assert sorted(_by_step(every)) == list(range(13))
    assert sorted(_by_step(some)) == [0, 5, 10, 12]
    assert [(c["epoch"], c["step"]) for c in epochs.curves if c["member"] == 0] == [
        (0, 0), (1, 3), (2, 6), (3, 9), (4, 12),
    ]  # fmt: skip
    assert [c["epoch"] for c in some.curves if c["member"] == 1] == [0, 2, 4, 4]
    for m in (0, 1):
        full, part = _by_step(every, m), _by_step(some, m)
        for s in (5, 10, 12):
            for col in ("train_loss", "test_loss", "train_acc", "test_acc", "lr"):
                assert part[s][col] == full[s][col]
        per_step = [full[s]["train_loss_running"] for s in range(6, 11)]
        assert part[10]["train_loss_running"] == pytest.approx(sum(per_step) / 5, rel=1e-6)
    for name, p in some.pack.final.params.items():
        assert torch.equal(p, epochs.pack.final.params[name])


def test_best_train_loss_picks_among_the_evaluations():
    """best_epoch is the epoch of the evaluation with the lowest running loss; with full batch
    (one step per epoch) that is the step itself."""
    train = TrainSpec(epochs=10, checkpoint="best_train_loss", eval_every=3, pack_step="vmap")
    result = _run(train, batch=0, seeds=(0,))
    rows = [c for c in result.curves if c["step"] > 0]
    assert [c["step"] for c in rows] == [3, 6, 9, 10] and [c["epoch"] for c in rows] == [
        3,
        6,
        9,
        10,
    ]
    best = min(rows, key=lambda c: c["train_loss_running"])
    assert result.best_epoch == [best["epoch"]]
    assert result.final_metrics["train_loss"] == [best["train_loss"]]
