"""Cost estimates order packs biggest first and split only between replicate groups."""

import time

import pytest

from landscape.measure import MetricsSpec
from landscape.pack import make_packs
from landscape.variant import DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant
from sweeps.config import plan_sweep
from sweeps.cost import forward_flops, schedule, variant_cost


def _v(width, seed=0, lr=0.1, epochs=2, batch_size=64):
    return Variant(
        model=ModelSpec("mlp", width=width, depth=2),
        data=DataSpec("digits"),
        optim=OptimSpec(lr=lr, batch_size=batch_size),
        train=TrainSpec(epochs=epochs),
        seed=seed,
    )


@pytest.mark.parametrize("width", [4, 16])
def test_mlp_forward_flops_are_two_per_multiply_accumulate(width):
    # digits: 8x8 = 64 inputs, 10 classes; Linear(64, w), Linear(w, w), Linear(w, 10)
    assert forward_flops(_v(width)) == 2 * (64 * width + width * width + width * 10)


def test_cost_grows_with_width_epochs_and_smaller_batches_train_the_same_examples():
    metrics = MetricsSpec()
    assert variant_cost(_v(32), metrics) > variant_cost(_v(8), metrics)
    assert variant_cost(_v(8, epochs=4), metrics) > variant_cost(_v(8, epochs=2), metrics)
    # the same epochs touch about the same examples whatever the batch size (drop_last aside)
    assert variant_cost(_v(8, batch_size=16), metrics) == pytest.approx(
        variant_cost(_v(8, batch_size=64), metrics), rel=0.05
    )


def test_full_batch_and_evaluation_schedule_enter_the_cost():
    """digits trains on 1347 examples and tests on 450; full batch is a batch of all 1347, and
    over 100 one-step epochs evaluating at steps 0, 48, 96 and 100 instead of 0..100 saves 97
    full passes (forward only) over both sets."""
    metrics = MetricsSpec()
    full = _v(8, epochs=100, batch_size=0)
    f = forward_flops(full)
    assert variant_cost(full, metrics) == variant_cost(_v(8, epochs=100, batch_size=1347), metrics)
    scheduled = Variant(**{**full.__dict__, "train": TrainSpec(epochs=100, eval_every=48)})
    saved = variant_cost(full, metrics) - variant_cost(scheduled, metrics)
    assert saved == pytest.approx(f * (101 - 4) * (1347 + 450), rel=1e-12)


def test_packs_run_biggest_first():
    packs = make_packs([_v(w, seed=s) for w in (4, 64, 16) for s in (0, 1)], max_members=16)
    order = [p[0].model.width for p, _ in schedule(packs, MetricsSpec(), n_workers=1)]
    assert order == [64, 16, 4]


def test_a_pack_bigger_than_its_share_is_split_between_replicate_groups_only():
    # one pack key, 4 replicate groups (learning rates) of 2 seeds: one pack of 8
    variants = [_v(32, seed=s, lr=lr) for lr in (0.1, 0.2, 0.3, 0.4) for s in (0, 1)]
    (pack,) = make_packs(variants, max_members=16)
    scheduled = schedule([pack], MetricsSpec(), n_workers=2)  # budget: a quarter of the work
    assert sorted(len(p) for p, _ in scheduled) == [2, 2, 2, 2]
    for p, _ in scheduled:
        assert len({v.group_id for v in p}) == 1  # a group stays together
    # one group alone is never split, whatever its share
    (group,) = make_packs([_v(32, seed=s) for s in range(6)], max_members=16)
    assert [len(p) for p, _ in schedule([group], MetricsSpec(), n_workers=8)] == [6]


def test_ten_thousand_variants_expand_pack_and_order_in_seconds(tmp_path):
    t0 = time.perf_counter()
    plan = plan_sweep(
        [
            "model.width=range(1,101)",
            "optim.lr=range(1,11)",
            "seed=range(10)",
            "optim.batch_size=16",
            f"out_dir={tmp_path}",
        ]
    )
    packs = make_packs(plan.variants, plan.pack.max_members)
    scheduled = schedule(packs, plan.metrics, n_workers=2)
    elapsed = time.perf_counter() - t0
    assert sum(len(p) for p, _ in scheduled) == 10_000
    costs = [c for _, c in scheduled]
    assert costs == sorted(costs, reverse=True)
    assert elapsed < 30  # about 5 s on a busy 2-core machine; generous for CI
