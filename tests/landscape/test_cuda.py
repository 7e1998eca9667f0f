"""Checks that need a CUDA device (skipped without one): the CUDA-graph training step replays
exactly what the eager step computes, bf16 autocast with BatchNorm inside a pack, a pack
trained on the GPU agrees with the same pack trained on the CPU, and the graph-replayed
Hessian-vector products (vmapped forward-over-reverse, and double backward through a retained
graph in the packed layout) equal the eager ones for fresh probes at every call.

Comparisons across kernels (GPU against CPU, one step mode against another) are made where
rounding cannot compound: in float64, or on one step's gradients (see
``tests/landscape/step_modes.py``). What a CPU can check too has a twin in the default suite
(``test_train.py``: step modes, bf16 BatchNorm in the packed layout, divergence quarantine).
Needs torch, numpy and scikit-learn only (no Ray, no Hydra)."""

import dataclasses
import math

import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.functional import init_stack, member_shapes
from landscape.hvp import batched_hvp, net_loss
from landscape.metrics.hessian import hessian_trace
from landscape.models import build_model
from landscape.train import train_pack
from tests.landscape.step_modes import (
    RESNET,
    max_diff,
    relative_diff,
    stacks_by_mode,
    step_gradients,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


_max_diff = max_diff

# A finite learning rate (OptimSpec refuses inf) that makes member 1 diverge at once: the
# first update scales its gradient by 1e30, past landscape.train.DIVERGED_ABOVE, so it is
# zeroed at step 1 before its parameters reach a kernel (the CPU twin,
# test_train.py::test_a_diverging_member_is_quarantined_in_bf16, checks this).
DIVERGING_LR = 1e30


def _variants(
    tiny_variant, optim: str, precision: str, model: ModelSpec, pack_step="auto", streams=1
):
    knobs = [(0, 0.05, 0.0), (1, DIVERGING_LR, 5e-4), (2, 0.1, 1e-3)]  # member 1 diverges
    return [
        tiny_variant(
            model=model,
            data=DataSpec("digits", subset=256, augment=model.name == "cnn", label_noise=0.1),
            optim=OptimSpec(name=optim, lr=lr, weight_decay=wd, batch_size=32, momentum=0.9),
            train=TrainSpec(
                epochs=2,
                precision=precision,
                cuda_graphs=False,
                pack_step=pack_step,
                pack_streams=streams,
            ),
            seed=seed,
        )
        for seed, lr, wd in knobs
    ]


RESNET18 = ModelSpec("resnet18", width=2, batch_norm=True)
PACKED_BF16_REPLAY = (
    "open (issue 15): on an H200 a graph-replayed packed bf16 step differs from the eager one "
    "(cuDNN deterministic, 0.14 in the parameters after the first replayed step), while "
    "vmap and loop in bf16 and packed in fp32 replay exactly; not yet explained"
)


def _train_deterministic(first: list, second: list) -> tuple:
    """Two packs over the same data, trained on the GPU under deterministic cuDNN algorithms
    (so that equal arithmetic gives equal numbers)."""
    dataset = load_dataset(first[0].data)
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        return train_pack(first, dataset, "cuda"), train_pack(second, dataset, "cuda")
    finally:
        torch.backends.cudnn.deterministic = deterministic


@pytest.mark.parametrize(
    "optim,precision,model,pack_step,streams",
    [
        ("sgd", "fp32", ModelSpec("cnn", width=4, batch_norm=True), "vmap", 1),
        ("sgd", "bf16", RESNET18, "vmap", 1),
        ("adam", "fp32", ModelSpec("mlp", width=16, depth=2, batch_norm=True), "vmap", 1),
        ("sgd", "bf16", RESNET18, "loop", 1),
        ("sgd", "bf16", RESNET18, "loop", 2),
        ("sgd", "fp32", RESNET18, "packed", 1),
        pytest.param(
            "sgd",
            "bf16",
            RESNET18,
            "packed",
            1,
            marks=pytest.mark.xfail(reason=PACKED_BF16_REPLAY, strict=False),
        ),
    ],
    ids=[
        "sgd-cnn-fp32",
        "sgd-resnet18-bf16",
        "adam-mlp-fp32",
        "loop-bf16",
        "loop-2-streams-bf16",
        "packed-fp32",
        "packed-bf16",
    ],
)
def test_graph_replay_equals_eager_steps(tiny_variant, optim, precision, model, pack_step, streams):
    """Two epochs (16 steps) of a pack with a diverging member, eager and replayed from a CUDA
    graph. Not a comparison across kernels: the replay runs the recorded kernels on the same
    numbers (cuDNN deterministic, so no atomics reorder a sum), so the two agree to rounding
    (measured on an H200: exactly for the ResNet18 in vmap, loop and packed (fp32) layouts
    and the MLP, 1.2e-7 for the fp32 CNN).
    1e-5 only absorbs a library that picks another algorithm while capturing; that in bf16
    compounds over the steps, so a failure here means the replay computes something else
    (or, in bf16, that a kernel changed: check one replayed step)."""
    eager_variants = _variants(tiny_variant, optim, precision, model, pack_step, streams)
    graph_variants = [
        dataclasses.replace(v, train=dataclasses.replace(v.train, cuda_graphs=True))
        for v in eager_variants
    ]
    eager, graphed = _train_deterministic(eager_variants, graph_variants)
    assert eager.diverged_step == graphed.diverged_step
    assert eager.diverged_step == [None, 1, None]
    for k in (0, 2):  # the diverged member is zero; the live ones must agree
        e, g = eager.pack.final.member(k), graphed.pack.final.member(k)
        assert _max_diff(e.params, g.params) < 1e-5
        assert _max_diff(e.buffers, g.buffers) < 1e-5
    assert eager.final_metrics["train_loss"][0] == pytest.approx(
        graphed.final_metrics["train_loss"][0], abs=1e-5
    )


def test_cuda_pack_agrees_with_cpu_pack():
    """The same pack (ResNet18 width 2 and a BatchNorm CNN) trained five steps on the GPU and
    on the CPU, in float64 (the CPU twin compares step modes the same way): float32 runs of
    a tiny ReLU net part after a few steps whatever the kernels; float64 kernels of both
    devices agree to ~1e-13, and a wrong step is off by ~1e-2."""
    from landscape import ModelSpec as M

    for model in (None, (M("cnn", width=4, batch_norm=True), (1, 8, 8))):
        kw = {} if model is None else {"model": model}
        gpu, _ = stacks_by_mode("cuda", ("vmap",), steps=5, **kw)
        cpu, fresh = stacks_by_mode("cpu", ("vmap",), steps=5, **kw)
        assert _max_diff(gpu["vmap"].params, cpu["vmap"].params) < 1e-10
        assert _max_diff(gpu["vmap"].buffers, cpu["vmap"].buffers) < 1e-10
        assert _max_diff(cpu["vmap"].params, fresh()[1].params) > 1e-2


def _cnn_stack(device, members=3):
    spec = ModelSpec("cnn", width=4, batch_norm=True)
    net, stack = init_stack(lambda: build_model(spec, (1, 8, 8), 10), range(members), device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(members, 64, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (members, 64), generator=g)
    return net, stack, x.to(device), y.to(device)


def test_graph_replayed_hvp_equals_eager_for_fresh_probes():
    net, stack, x, y = _cnn_stack("cuda")
    hv = batched_hvp(net.loss, member_shapes(stack.params), shared=False)
    args = (stack.buffers, x, y)
    P = sum(p[0].numel() for p in stack.params.values())
    for _ in range(6):  # 2 eager warm-ups, the recording call, then replays
        v = torch.randn(3, 2, P, device="cuda")
        torch.testing.assert_close(hv(stack.params, args, v), hv.fn(stack.params, args, v))
    assert hv.graphs and not hv.failed  # it really replayed from a graph


def test_graph_replayed_double_backward_hvp_equals_eager_and_follows_new_parameters():
    """The packed products read a retained autograd graph: recorded and replayed on the
    stream that graph was built on, and recorded again when the parameters change."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net, stack, x, y = _cnn_stack("cuda")
    shapes = member_shapes(stack.params)
    hv = batched_hvp(net_loss(net, "packed"), shapes, shared=False, mode="packed")
    eager = batched_hvp(net.loss, shapes, shared=False)  # forward-over-reverse, graphed too
    P = sum(p[0].numel() for p in stack.params.values())
    moved = {n: p * 1.1 for n, p in stack.params.items()}
    args = (stack.buffers, x, y)
    for params in (stack.params, moved):
        for _ in range(5):  # 2 eager warm-ups, the recording call, then replays
            v = torch.randn(3, 2, P, device="cuda")
            want = eager.fn(params, args, v)
            torch.testing.assert_close(hv(params, args, v), want, rtol=1e-4, atol=1e-5)
        assert hv.graphed.graphs and not hv.graphed.failed


@pytest.mark.parametrize("hvp", ["vmap", "loop", "packed"])
def test_hessian_trace_on_cuda_matches_cpu(hvp):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for device in ("cpu", "cuda"):
        net, stack, x, y = _cnn_stack(device)
        gen = torch.Generator().manual_seed(0)  # probes drawn on the CPU: the same for both
        est = hessian_trace(
            net, stack, x, y, n_probes=40, tol=0.0, chunk=10, generator=gen, hvp=hvp
        )
        out[device] = est.estimate.cpu()
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-4, atol=1e-6)


def test_loop_and_packed_steps_with_channels_last_equal_the_vmap_step_on_cuda():
    """GPU version of test_train.py's step-mode tests: five float64 steps of each mode (NHWC
    activations for loop and packed, loop on 3 streams too) against vmap, and one float32
    step's gradients (TF32 off). float64 because float32 runs of a tiny ReLU net part after
    a few steps (see tests/landscape/step_modes.py)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    stacks, fresh = stacks_by_mode("cuda", ("vmap", "loop", "packed"), steps=5, channels_last=True)
    stacks["loop on 3 streams"] = stacks_by_mode(
        "cuda", ("loop",), steps=5, channels_last=True, streams=3
    )[0]["loop"]
    for mode in ("loop", "packed", "loop on 3 streams"):
        assert _max_diff(stacks["vmap"].params, stacks[mode].params) < 1e-10, mode
        assert _max_diff(stacks["vmap"].buffers, stacks[mode].buffers) < 1e-10, mode
    assert _max_diff(stacks["vmap"].params, fresh()[1].params) > 1e-2
    got = step_gradients("cuda", ("vmap", "loop", "packed"), channels_last=True)
    for mode in ("loop", "packed"):
        assert relative_diff(got[mode][0], got["vmap"][0]) < 1e-4, mode
        assert _max_diff(got[mode][1], got["vmap"][1]) < 1e-5, mode


def test_packed_step_runs_bf16_batchnorm():
    """bf16 BatchNorm fails under vmap's backward; the packed layout has no vmap and runs
    BatchNorm on bf16 activations. One step's bf16 gradients of packed and vmap (BatchNorm
    cast to float32) from the same initialisation and batch, on the scale rounding sets:
    they agree with each other far better than either agrees with float32 (bf16 moves this
    tiny net's gradients by tens of percent). Five steps compared directly differ by 0.24:
    that is rounding compounded, not a different function (CPU twin in test_train.py)."""
    for model in (None, (ModelSpec("mlp", width=8, depth=2, batch_norm=True), (6,))):
        kw = {} if model is None else {"model": model}
        bf16 = step_gradients(
            "cuda", ("vmap", "packed"), precision="bf16", channels_last=True, **kw
        )
        fp32 = step_gradients("cuda", ("vmap",), **kw)["vmap"][0]
        vmap, packed = bf16["vmap"][0], bf16["packed"][0]
        assert all(torch.isfinite(g).all() for g in packed.values())
        rounding = relative_diff(vmap, fp32)
        ratio = relative_diff(packed, vmap) / rounding
        print(f"bf16 packed vs vmap: {ratio:.3g} of their distance {rounding:.3g} to float32")
        assert ratio < 0.25
        assert relative_diff(bf16["packed"][1], bf16["vmap"][1]) < 1e-2


def test_diverging_member_leaves_the_others_as_in_a_pack_without_it(tiny_variant):
    """bf16 grouped convolutions on a GPU: a member whose parameters blow up is zeroed the
    same step, so its NaNs never meet the others in a kernel. Compared with the same pack
    (same shapes, so the same kernels) whose member 1 trains calmly: the live members'
    arithmetic is the same, so they agree to rounding (deterministic cuDNN algorithms), not
    to rounding compounded over two bf16 epochs as a pack of another size would."""
    model = ModelSpec("resnet18", width=2, batch_norm=True)
    variants = _variants(tiny_variant, "sgd", "bf16", model)
    calm = [variants[0], dataclasses.replace(variants[1], optim=variants[0].optim), variants[2]]
    with_bad, without = _train_deterministic(variants, calm)
    assert with_bad.diverged_step == [None, 1, None] and without.diverged_step == [None] * 3
    for k in (0, 2):
        a, b = with_bad.pack.final.member(k), without.pack.final.member(k)
        assert all(torch.isfinite(p).all() for p in a.params.values())
        assert _max_diff(a.params, b.params) < 1e-6
        assert _max_diff(a.buffers, b.buffers) < 1e-6
    assert math.isnan(with_bad.final_metrics["train_loss"][1])
    assert all(p[1].eq(0).all() for p in with_bad.pack.final.params.values())


@pytest.mark.parametrize("mode", ["vmap", "packed"])
def test_a_graph_replayed_bf16_step_differs_from_eager_by_rounding_only(mode):
    """One replayed step against one eager step from the same state: three eager steps on
    two copies of a pack (identical), then the fourth eagerly on one and replayed from a
    CUDA graph on the other. bf16 rounding moves this tiny BatchNorm net a lot (its bf16
    and fp32 gradients differ by tens of percent), so a kernel that cuDNN picks differently
    while capturing can move the replayed step visibly; what it may not do is compute
    another step. The replayed-vs-eager difference must stay well inside the distance
    between the same four steps in bf16 and in fp32 (the scale bf16 rounding sets)."""
    from landscape.train import GraphedTrainStep, StepFn, new_optim_state, train_step
    from tests.landscape.step_modes import K, batches, fresh_stack

    def run(precision: str, graphed: bool):
        net, stack = fresh_stack("cuda", dtype=torch.float32)
        opt = new_optim_state([OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4)] * K, stack)
        step_fn = StepFn(net, mode=mode, channels_last=True)
        lr = torch.full((K,), 0.05, device="cuda")
        replay = GraphedTrainStep(step_fn, stack, opt, precision, warmup=3) if graphed else None
        for x, y in batches("cuda", RESNET, 4, torch.float32):
            if replay is not None:
                replay(x, y, lr)
            else:
                train_step(step_fn, stack, opt, x, y, lr, precision)
        if replay is not None:
            assert replay.graphed.graphs and not replay.graphed.failed  # step 4 was replayed
        return stack.params

    eager, replayed, fp32 = run("bf16", False), run("bf16", True), run("fp32", False)
    ratio = relative_diff(replayed, eager) / relative_diff(eager, fp32)
    print(f"{mode}: replayed vs eager bf16 step = {ratio:.3g} of the bf16-fp32 distance")
    assert ratio < 0.5
