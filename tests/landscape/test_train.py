import math

import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.measure import MetricsSpec
from landscape.metrics.local import HessianTraceSpec
from landscape.run import run_pack
from landscape.train import train_pack

FAST = MetricsSpec(hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32))


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


def test_best_train_loss_checkpoint_keeps_the_epoch_with_the_lowest_running_loss(tiny_variant):
    """Yang et al.'s rule: epochs ranked by the mean of their minibatch losses; the
    initialisation (epoch 0, no running loss) is never a candidate."""
    v = tiny_variant(train=TrainSpec(epochs=4, checkpoint="best_train_loss"))
    result = train_pack([v], load_dataset(v.data))
    running = {r["epoch"]: r["train_loss_running"] for r in result.curves if r["epoch"] > 0}
    best = min(running, key=running.get)
    assert result.best_epoch == [best]
    full = {r["epoch"]: r["train_loss"] for r in result.curves}
    assert result.final_metrics["train_loss"][0] == pytest.approx(full[best])
    assert math.isnan(next(r for r in result.curves if r["epoch"] == 0)["train_loss_running"])


def test_running_loss_is_the_epochs_minibatch_losses_averaged(tiny_variant):
    # lr ~ 0: every minibatch loss is the initial model's on that batch, and an epoch covers
    # the training set once (96 = 6 x 16), so the running mean equals the full pass at init.
    v = tiny_variant(optim=OptimSpec(lr=1e-30, batch_size=16), train=TrainSpec(epochs=1))
    curves = {r["epoch"]: r for r in train_pack([v], load_dataset(v.data)).curves}
    assert curves[1]["train_loss_running"] == pytest.approx(curves[0]["train_loss"], rel=1e-6)


def test_the_best_checkpoint_survives_a_later_divergence(tiny_variant):
    """x 1e6 on the learning rate after half of training blows member 1 up in epoch 3; its
    best epoch came before, so it is measured there (status ok) and its divergence is kept."""
    keep = TrainSpec(epochs=4, checkpoint="best_train_loss")
    calm = tiny_variant(train=keep, seed=0)
    wild = tiny_variant(
        optim=OptimSpec(lr=0.1, batch_size=16, schedule="step", step_at=(0.5,), gamma=1e6),
        train=keep,
        seed=1,
    )
    result = train_pack([wild], load_dataset(wild.data))
    assert result.diverged_step[0] is not None and result.diverged_step[0] > 2 * 6
    assert result.best_epoch[0] in (1, 2) and bool(result.pack.alive[0])
    assert all(torch.isfinite(p).all() for p in result.pack.final.params.values())
    rows = run_pack([calm, wild], FAST, load_dataset(calm.data)).tables["runs"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[1]["diverged_step"] is not None and rows[1]["hessian_trace"] is not None


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


RESNET = (ModelSpec("resnet18", width=2, batch_norm=True), (3, 32, 32))


def stacks_by_mode(
    device: str,
    modes=("vmap", "loop"),
    model=RESNET,
    steps: int = 3,
    channels_last: bool = False,
    precision: str = "fp32",
    streams: int = 1,
):
    """A pack of 3 trained ``steps`` steps on the same batches with each StepFn mode; and a
    function that builds the same pack fresh (its initialisation)."""
    from landscape.functional import init_stack
    from landscape.models import build_model
    from landscape.train import StepFn, new_optim_state, train_step

    spec, shape = model
    K, B = 3, 8
    stacks = {}
    for mode in modes:
        net, stack = init_stack(lambda: build_model(spec, shape, 10), range(K), device)
        optim = OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=B)
        opt = new_optim_state([optim] * K, stack)
        step_fn = StepFn(net, mode=mode, channels_last=channels_last, streams=streams)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            x = torch.randn(K, B, *shape, generator=g).to(device)
            y = torch.randint(10, (K, B), generator=g).to(device)
            lr = torch.full((K,), 0.05, device=device)
            train_step(step_fn, stack, opt, x, y, lr, precision)
        stacks[mode] = stack
    return stacks, lambda: init_stack(lambda: build_model(spec, shape, 10), range(K), device)


def test_loop_step_equals_vmap_step():
    """The ways of running a pack's members compute the same training step."""
    stacks, fresh = stacks_by_mode("cpu")
    assert _max_diff(stacks["vmap"].params, stacks["loop"].params) < 1e-5
    assert _max_diff(stacks["vmap"].buffers, stacks["loop"].buffers) < 1e-5
    # the step moved the parameters (the comparison is not between two initialisations)
    assert _max_diff(stacks["loop"].params, fresh()[1].params) > 1e-3


@pytest.mark.parametrize(
    "model,steps",
    [
        ((ModelSpec("mlp", width=8, depth=2, batch_norm=True), (6,)), 3),
        ((ModelSpec("mlp", width=8, depth=2), (1, 4, 4)), 3),  # images flattened per member
        ((ModelSpec("cnn", width=4, batch_norm=True), (1, 8, 8)), 3),
        ((ModelSpec("resnet18", width=2, batch_norm=True), (3, 16, 16)), 3),
        # without skips a few units sit at ReLU's kink: rounding flips them after 2 steps
        ((ModelSpec("resnet18", width=2, batch_norm=True, skip=False), (3, 16, 16)), 2),
        ((ModelSpec("vgg9", width=2, batch_norm=True), (3, 16, 16)), 3),
    ],
    ids=["mlp-bn", "mlp-images", "cnn-bn", "resnet18", "resnet18-noskip", "vgg9-bn"],
)
def test_packed_layout_step_equals_vmap_step(model, steps):
    stacks, fresh = stacks_by_mode("cpu", ("vmap", "packed"), model, steps)
    assert _max_diff(stacks["vmap"].params, stacks["packed"].params) < 1e-5
    assert _max_diff(stacks["vmap"].buffers, stacks["packed"].buffers) < 1e-5
    assert _max_diff(stacks["packed"].params, fresh()[1].params) > 1e-3


def test_packed_layout_refuses_a_layer_it_cannot_pack():
    from landscape.functional import FunctionalNet
    from landscape.packed import PackedNet

    net = FunctionalNet(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(4)))
    with pytest.raises(ValueError, match=r"packed layout does not support LayerNorm \(1\)"):
        PackedNet(net)


def test_device_step_count_follows_the_host_count_and_dates_divergence():
    """The step counter on the device (Adam's bias correction, divergence dates) equals the
    host's count after every step, and a member is dated at the step whose loss went NaN."""
    from landscape.functional import init_stack
    from landscape.models import build_model
    from landscape.train import StepFn, new_optim_state, train_step

    spec = ModelSpec("mlp", width=4, depth=1)
    net, stack = init_stack(lambda: build_model(spec, (6,), 3), range(2), "cpu")
    opt = new_optim_state([OptimSpec(name="adam", lr=0.01, batch_size=4)] * 2, stack)
    step_fn = StepFn(net)
    g = torch.Generator().manual_seed(0)
    for n in range(1, 5):
        x = torch.randn(2, 4, 6, generator=g)
        if n == 3:
            x[1, 0, 0] = float("nan")  # member 1's loss is NaN at step 3
        train_step(
            step_fn, stack, opt, x, torch.zeros(2, 4, dtype=torch.long), opt.hypers.lr, "fp32"
        )
        assert opt.step == n and int(opt.step_t) == n
    assert opt.diverged_step.tolist() == [-1, 3]
    assert opt.alive.tolist() == [True, False]
