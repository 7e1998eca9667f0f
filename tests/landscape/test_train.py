import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.train import train_pack


def _max_diff(a, b):
    return max([(a[n].float() - b[n].float()).abs().max().item() for n in a], default=0.0)


def _assert_pack_equals_solo(variants, dataset, atol=2e-5):
    packed = train_pack(variants, dataset)
    for k, v in enumerate(variants):
        solo = train_pack([v], dataset)
        member = packed.pack.final.member(k)
        assert _max_diff(member.params, solo.pack.final.params) < atol, f"member {k} params"
        assert _max_diff(member.buffers, solo.pack.final.buffers) < atol, f"member {k} buffers"
        for key, values in solo.final_metrics.items():
            assert packed.final_metrics[key][k] == pytest.approx(values[0], abs=1e-5)
    return packed


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
def test_pack_equals_solo_runs_with_different_per_member_knobs(tiny_variant, batch_norm):
    data = DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3)
    knobs = [(0, 0.1, 0.0, 0.0), (1, 0.05, 1e-3, 0.25), (2, 0.2, 5e-4, 0.0)]
    variants = [
        tiny_variant(
            model=ModelSpec("mlp", width=8, depth=2, batch_norm=batch_norm),
            data=DataSpec(**{**data.__dict__, "label_noise": noise}),
            optim=OptimSpec(lr=lr, weight_decay=wd, batch_size=16),
            seed=seed,
        )
        for seed, lr, wd, noise in knobs
    ]
    dataset = load_dataset(variants[0].data)
    packed = _assert_pack_equals_solo(variants, dataset)
    # members really differ (different seeds and knobs), so the comparison above is not vacuous
    assert _max_diff(packed.pack.final.member(0).params, packed.pack.final.member(1).params) > 1e-2


def test_cnn_with_batchnorm_and_augmentation_pack_equals_solo(tiny_variant):
    variants = [
        tiny_variant(
            model=ModelSpec("cnn", width=4, batch_norm=True),
            data=DataSpec("digits", subset=128, augment=True),
            optim=OptimSpec(lr=lr, batch_size=32, momentum=mom),
            train=TrainSpec(epochs=1),
            seed=s,
        )
        for s, lr, mom in [(0, 0.05, 0.9), (1, 0.1, 0.5)]
    ]
    _assert_pack_equals_solo(variants, load_dataset(variants[0].data), atol=5e-5)


def test_diverging_member_is_frozen_and_others_unchanged(tiny_variant):
    ok_a = tiny_variant(seed=0)
    bad = tiny_variant(optim=OptimSpec(lr=1e6, batch_size=16), seed=1)
    ok_b = tiny_variant(optim=OptimSpec(lr=0.05, batch_size=16), seed=2)
    dataset = load_dataset(ok_a.data)
    packed = train_pack([ok_a, bad, ok_b], dataset)
    assert packed.diverged_step[0] is None and packed.diverged_step[2] is None
    assert packed.diverged_step[1] is not None and packed.diverged_step[1] >= 1
    assert packed.pack.alive.tolist() == [True, False, True]
    for k, v in ((0, ok_a), (2, ok_b)):
        solo = train_pack([v], dataset)
        assert _max_diff(packed.pack.final.member(k).params, solo.pack.final.params) < 2e-5


def test_curves_have_a_row_per_member_and_epoch(tiny_variant):
    variants = [tiny_variant(seed=s, train=TrainSpec(epochs=3)) for s in range(2)]
    result = train_pack(variants, load_dataset(variants[0].data))
    assert len(result.curves) == 2 * 4  # epochs 0 (initialisation) .. 3
    steps_per_epoch = 96 // 16
    assert {r["step"] for r in result.curves if r["epoch"] == 3} == {3 * steps_per_epoch}


def test_best_train_loss_checkpoint_keeps_the_lowest_epoch(tiny_variant):
    v = tiny_variant(train=TrainSpec(epochs=4, checkpoint="best_train_loss"))
    result = train_pack([v], load_dataset(v.data))
    per_epoch = {r["epoch"]: r["train_loss"] for r in result.curves}
    best = min(per_epoch, key=per_epoch.get)
    assert result.best_epoch == [best]
    assert result.final_metrics["train_loss"][0] == pytest.approx(per_epoch[best])


def test_subset_and_label_noise_per_member(tiny_variant):
    a = tiny_variant(
        data=DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3, subset=0.5),
        seed=0,
    )
    b = tiny_variant(
        data=DataSpec(
            "synthetic",
            n_train=96,
            n_test=48,
            n_features=6,
            n_classes=3,
            subset=0.5,
            label_noise=0.5,
        ),
        seed=1,
    )
    dataset = load_dataset(a.data)
    data = train_pack([a, b], dataset).pack.data
    assert data.train_idx.shape == (2, 48)
    assert not torch.equal(data.train_idx[0], data.train_idx[1])  # each seed draws its own subset
    clean = dataset.y_train[data.train_idx[1]]
    assert int((clean != data.y_train[1]).sum()) == 24  # exactly half the labels changed
