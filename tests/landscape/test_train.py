import dataclasses
import math

import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.measure import MetricsSpec
from landscape.metrics.hessian import HessianTraceSpec
from landscape.metrics.registry import TRAINING_COLUMNS
from landscape.run import run_pack
from landscape.train import StepFn, new_optim_state, train_pack, train_step
from tests.landscape.step_modes import (
    RESNET,
    TRANSFORMER,
    batches,
    fresh_stack,
    max_diff,
    relative_diff,
    stacks_by_mode,
    step_gradients,
)

FAST = MetricsSpec(hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32))


def _max_diff(a, b):
    return max([(a[n].float() - b[n].float()).abs().max().item() for n in a], default=0.0)


def _assert_pack_equals_solo(variants, dataset, atol=2e-5):
    """A pack trained end to end (train_pack, float32, the sweeps' path) against each member
    trained alone. These nets (MLP width 8, CNN width 4, at most 12 steps) have no unit near
    ReLU's kink for rounding to flip: packs and solo runs differ by at most 2.5e-7 (measured
    with 1 and 2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512), 80x inside ``atol``;
    a member that saw another's data or knobs is off by ~1e-2. Nets that do amplify rounding
    are compared in float64 (test_step_modes_train_the_same_pack_in_float64)."""
    packed = train_pack(variants, dataset)
    for k, v in enumerate(variants):
        solo = train_pack([v], dataset)
        member = packed.pack.final.member(k)
        assert _max_diff(member.params, solo.pack.final.params) < atol, f"member {k} params"
        assert _max_diff(member.buffers, solo.pack.final.buffers) < atol, f"member {k} buffers"
        for key, values in solo.final_metrics.items():
            assert packed.final_metrics[key][k] == pytest.approx(values[0], abs=1e-5)
    return packed


def test_the_catalogues_training_columns_are_what_training_writes(tiny_variant):
    variant = tiny_variant(train=TrainSpec(epochs=1))
    result = train_pack([variant], load_dataset(variant.data))
    assert sorted(result.final_metrics) == sorted(c.name for c in TRAINING_COLUMNS)


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
    """The live members of a pack with a diverging one equal their solo runs (measured:
    exactly, on an AMD EPYC with every CPU kernel set; see _assert_pack_equals_solo)."""
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


MODELS = [
    (ModelSpec("mlp", width=8, depth=2, batch_norm=True), (6,)),
    (ModelSpec("mlp", width=8, depth=2), (1, 4, 4)),  # images flattened per member
    (ModelSpec("cnn", width=4, batch_norm=True), (1, 8, 8)),
    RESNET,
    (ModelSpec("resnet18", width=2, batch_norm=True, skip=False), (3, 16, 16)),
    (ModelSpec("vgg9", width=2, batch_norm=True), (3, 16, 16)),
    TRANSFORMER,  # tokens; LayerNorm has no packed layout, so vmap and loop only
    (ModelSpec("transformer", width=8, depth=1, heads=2, patch=2), (1, 4, 4)),  # a ViT
]
MODEL_IDS = ["mlp-bn", "mlp-images", "cnn-bn", "resnet18", "resnet18-noskip", "vgg9-bn"]
MODEL_IDS += ["transformer-tokens", "transformer-patches"]


def modes_of(model) -> tuple[str, ...]:
    return ("vmap", "loop") if model[0].name == "transformer" else ("vmap", "loop", "packed")


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_step_modes_train_the_same_pack_in_float64(model):
    """The ways of running a pack's members (vmap, loop, packed) compute the same training
    step: five SGD steps (momentum, weight decay, BatchNorm statistics) of a float64 pack.

    float64, not float32: in float32 these tiny ReLU nets amplify the modes' different
    summation orders (ResNet18: 1e-7 after one step, 3e-2 after three on an Intel Xeon), so
    a multi-step float32 comparison tests the CPU's kernels. In float64 the modes differ by
    at most 1.5e-14 after five steps (measured with 1 and 2 threads and with
    ATEN_CPU_CAPABILITY=default/avx2/avx512 on an AMD EPYC); 1e-10 leaves four orders of
    magnitude, while a wrong step moves parameters by ~1e-2."""
    stacks, fresh = stacks_by_mode("cpu", modes_of(model), model, steps=5)
    for mode in modes_of(model)[1:]:
        assert max_diff(stacks["vmap"].params, stacks[mode].params) < 1e-10, mode
        assert max_diff(stacks["vmap"].buffers, stacks[mode].buffers) < 1e-10, mode
    # the steps moved the parameters (the comparison is not between two initialisations)
    assert max_diff(stacks["vmap"].params, fresh()[1].params) > 1e-2


@pytest.mark.parametrize(
    "model", [MODELS[0], MODELS[3], MODELS[6]], ids=[MODEL_IDS[i] for i in (0, 3, 6)]
)
def test_a_pack_of_one_takes_the_same_steps_in_every_mode(model):
    """A pack of one has its own fast paths: its parameters are views of the update's (1, P)
    matrix (SGD in place there on a CPU), and loop mode hands back its gradients as views
    with the member dimension. Five float64 SGD steps of every mode must agree as a pack of three's do (same tolerance and
    reasoning as test_step_modes_train_the_same_pack_in_float64), BatchNorm included."""
    stacks, fresh = stacks_by_mode("cpu", modes_of(model), model, steps=5, members=1)
    for mode in modes_of(model)[1:]:
        assert max_diff(stacks["vmap"].params, stacks[mode].params) < 1e-10, mode
        assert max_diff(stacks["vmap"].buffers, stacks[mode].buffers) < 1e-10, mode
    assert max_diff(stacks["vmap"].params, fresh()[1].params) > 1e-2


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_step_modes_give_the_same_float32_gradients(model):
    """The float32 path the sweeps run: one step's gradients of every mode against vmap's,
    from the same initialisation and batch (nothing compounds), and the BatchNorm statistics
    that step updated. Measured: at most 2.3e-6 relative (||g - g_vmap|| / ||g_vmap|| over
    all parameters; 1-2 threads, ATEN_CPU_CAPABILITY=default/avx2/avx512), so 1e-4 is a
    margin of 40 for other CPUs' summation orders; a wrong gradient is off by O(1)."""
    got = step_gradients("cpu", modes_of(model), model)
    grads, buffers, loss = got["vmap"]
    for mode in modes_of(model)[1:]:
        assert relative_diff(got[mode][0], grads) < 1e-4, mode
        assert max_diff(got[mode][1], buffers) < 1e-5, mode
        torch.testing.assert_close(got[mode][2], loss, rtol=1e-5, atol=0)


def test_packed_bf16_batchnorm_step_agrees_with_vmap_on_cpu():
    """CPU twin of the GPU test of bf16 BatchNorm in the packed layout (bf16 autocast runs
    on a CPU too): one step's bf16 gradients of the packed layout (BatchNorm on bf16
    activations) and vmap (BatchNorm cast to float32 and back) against the float32
    gradients. bf16 rounding moves this tiny net's gradients a lot (~70% relative, through
    BatchNorm's cancellations at batch 8), so the two bf16 layouts are compared on a scale
    that rounding sets: they must agree with each other far better than either agrees with
    float32. Measured: 0.03 of that distance (AMD EPYC); the limit is 0.25. A cast in the
    wrong place shows at the scale of the distance itself (the packed linear layer once added
    a float32 bias to a bf16 activation, promoting it: MLP gradients then differed by 100%)."""
    for model in (RESNET, MODELS[0]):
        bf16 = step_gradients("cpu", ("vmap", "packed"), model, precision="bf16")
        fp32 = step_gradients("cpu", ("vmap",), model)["vmap"][0]
        vmap, packed = bf16["vmap"][0], bf16["packed"][0]
        assert all(torch.isfinite(g).all() for g in packed.values())
        rounding = relative_diff(vmap, fp32)
        assert relative_diff(packed, vmap) < 0.25 * rounding, model[0].name
        assert relative_diff(bf16["packed"][1], bf16["vmap"][1]) < 1e-2  # BatchNorm statistics


def test_packed_member_rows_round_bf16_as_the_plain_module_does():
    """In member rows (a model without BatchNorm or convolutions) each packed Linear is one
    batched product with its bias in the product's kernel, as ``nn.Linear``'s addmm, so
    under bf16 autocast its gradients round as the plain module's (``loop`` mode) do. Vmap
    adds the bias after the product's rounding: 0.26% apart, as far as either is from
    float32 (0.33%). Measured: packed and loop equal to the bit (AMD EPYC); the limit is
    0.1 of their distance to float32."""
    model = MODELS[1]
    bf16 = step_gradients("cpu", ("loop", "packed"), model, precision="bf16")
    fp32 = step_gradients("cpu", ("vmap",), model)["vmap"][0]
    rounding = relative_diff(bf16["loop"][0], fp32)
    assert rounding > 1e-3  # bf16 rounding moved them: the comparison has a scale
    assert relative_diff(bf16["packed"][0], bf16["loop"][0]) < 0.1 * rounding


def test_packed_layout_keeps_a_linear_only_model_in_member_rows():
    """A model whose parametrised layers are all Linear (no BatchNorm) runs member-major:
    inputs (K*N, ...) as a view, each Linear one batched product over (K, N, in) rows, the
    logits a (N, K, C) view; with BatchNorm (or a convolution) it is channels side by side.
    The step-mode tests check both compute vmap's step."""
    from landscape.channel_layout import PackedNet
    from landscape.functional import init_stack
    from landscape.models import build_model

    for batch_norm, rows in ((False, True), (True, False)):
        spec = ModelSpec("mlp", width=5, depth=2, batch_norm=batch_norm)
        net, stack = init_stack(lambda s=spec: build_model(s, (1, 4, 4), 3), range(2), "cpu")
        packed = PackedNet(net)
        assert packed.rows is rows
        x = torch.randn(2, 6, 1, 4, 4)
        xp = packed.inputs(x)
        assert xp.shape == ((12, 1, 4, 4) if rows else (6, 2, 4, 4))
        assert xp.data_ptr() == x.data_ptr() or not rows  # rows: a view, not a copy
        logits = packed.logits(stack.params, stack.buffers, xp, train=False)
        assert logits.shape == (6, 2, 3)
        for k in range(2):
            want = net.logits({n: p[k] for n, p in stack.params.items()},
                              {n: b[k] for n, b in stack.buffers.items()}, x[k], train=False)  # fmt: skip
            torch.testing.assert_close(logits[:, k], want, rtol=1e-5, atol=1e-6)


def test_packed_layout_refuses_a_layer_it_cannot_pack():
    from landscape.channel_layout import PackedNet
    from landscape.functional import FunctionalNet

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


@pytest.mark.parametrize("pack_step", ["vmap", "loop", "packed"])
def test_a_diverging_member_is_quarantined_in_bf16(tiny_variant, pack_step):
    """CPU twin of test_cuda.py's divergence checks (bf16 autocast, a BatchNorm ResNet):
    a member with lr = 1e30 (finite, as OptimSpec requires) is dated at step 1, when the
    update's 1e30 x gradient passes DIVERGED_ABOVE (left in, its parameters of ~1e28 made
    the next step's activations overflow, and on an H200 the NaN reached all members); from
    then on it is zero, and the live members are as in the same pack whose member 1 trains
    calmly. Same pack shape, so the same kernels on the live members' numbers: equal to 1e-6
    (measured: exactly equal), where a NaN reaching a neighbour would show as NaN."""
    model = ModelSpec("resnet18", width=2, batch_norm=True)
    train = TrainSpec(epochs=1, precision="bf16", pack_step=pack_step)
    data = DataSpec("digits", subset=128, label_noise=0.1)
    knobs = [(0, 0.05, 0.0), (1, 1e30, 5e-4), (2, 0.1, 1e-3)]
    variants = [
        tiny_variant(
            model=model,
            data=data,
            optim=OptimSpec(lr=lr, weight_decay=wd, batch_size=32, momentum=0.9),
            train=train,
            seed=seed,
        )
        for seed, lr, wd in knobs
    ]
    calm = [variants[0], dataclasses.replace(variants[1], optim=variants[0].optim), variants[2]]
    dataset = load_dataset(data)
    with_bad, without = train_pack(variants, dataset), train_pack(calm, dataset)
    assert with_bad.diverged_step == [None, 1, None] and without.diverged_step == [None] * 3
    assert with_bad.pack.alive.tolist() == [True, False, True]
    assert all(p[1].eq(0).all() for p in with_bad.pack.final.params.values())
    assert math.isnan(with_bad.final_metrics["train_loss"][1])
    for k in (0, 2):
        a, b = with_bad.pack.final.member(k), without.pack.final.member(k)
        assert max_diff(a.params, b.params) < 1e-6, k
        assert max_diff(a.buffers, b.buffers) < 1e-6, k
        assert with_bad.final_metrics["train_loss"][k] == without.final_metrics["train_loss"][k]
    assert max_diff(with_bad.pack.final.params, with_bad.pack.init.params) > 1e-2


def test_a_vmapped_pack_of_transformers_equals_each_member_trained_alone():
    """One float64 SGD step (momentum, weight decay) of a vmapped pack of three token
    transformers against each member stepped alone as a pack of one, from the same
    initialisation and batch: the same float64 arithmetic batched or not, ~1e-16 apart, so
    1e-12 holds; a member seeing another's batch or gradient is off by ~1e-2."""
    net, stack = fresh_stack("cpu", TRANSFORMER)
    x, y = next(batches("cpu", TRANSFORMER, 1, torch.float64))
    assert x.dtype == torch.long
    hypers = [OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4)]
    init = stack.clone()
    opt = new_optim_state(hypers * 3, stack)
    train_step(StepFn(net, mode="vmap"), stack, opt, x, y, opt.hypers.lr, "fp32")
    for k in range(3):
        alone = init.member(k)
        opt1 = new_optim_state(hypers, alone)
        train_step(StepFn(net, mode="loop"), alone, opt1, x[k : k + 1], y[k : k + 1], opt1.hypers.lr, "fp32")  # fmt: skip
        assert max_diff(stack.member(k).params, alone.params) < 1e-12, k
        assert max_diff(alone.params, init.member(k).params) > 1e-3, k  # it moved


@pytest.mark.parametrize("batch_norm", [False, True])
def test_member_by_member_evaluation_equals_the_vmapped_one(monkeypatch, batch_norm):
    """``evaluate`` on a CPU runs small packs member by member (``LOOP_EVAL_MEMBERS_CPU``);
    against the vmapped evaluation in float64, with a shared set gathered by ``idx`` and with
    each member's own rows, BatchNorm on its running statistics: the same per-member forward
    up to how a matrix product is batched, so equal to rounding (1e-12)."""
    import landscape.train as train
    from landscape.functional import init_stack
    from landscape.models import MLP

    net, stack = init_stack(lambda: MLP(5, 3, 6, 2, batch_norm).double(), [0, 1, 2], "cpu")
    for name, buf in stack.buffers.items():  # running statistics that differ per member
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn_like(buf))
        elif name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(40, 5, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(40, generator=g)[:30] for _ in range(3)])
    y = torch.randint(0, 3, (3, 30), generator=g)
    own = torch.randn(3, 30, 5, generator=g, dtype=torch.float64)
    got = [train.evaluate(net, stack, shared, y, idx=idx), train.evaluate(net, stack, own, y)]
    monkeypatch.setattr(train, "LOOP_EVAL_MEMBERS_CPU", 0)
    want = [train.evaluate(net, stack, shared, y, idx=idx), train.evaluate(net, stack, own, y)]
    assert got[0][0].shape == (3,) and not torch.equal(got[0][0], got[1][0])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
