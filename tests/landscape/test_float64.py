"""Every model runs in float64 end to end: a stack made float64 (``Stack.to(device, dtype)``)
trains, evaluates, takes Hessian-vector products and is measured in float64, BatchNorm
included (its statistics stay float64; nothing casts to float32 on the way). Equivalence
tests rely on this to compare what rounding cannot move (tests/landscape/step_modes.py)."""

import pytest
import torch

from landscape import ModelSpec, OptimSpec
from landscape.functional import init_stack, unstack
from landscape.metrics.batchnorm import recompute_bn_stats
from landscape.metrics.cka import representations
from landscape.metrics.gradients import fisher_trace
from landscape.metrics.hessian import hessian_trace
from landscape.metrics.interpolation import linear_barrier
from landscape.models import build_model
from landscape.train import StepFn, evaluate, new_optim_state, train_step

F64 = torch.float64
MODELS = [
    (ModelSpec("mlp", width=8, depth=2, batch_norm=True), (6,)),
    (ModelSpec("mlp", width=8, depth=2), (1, 4, 4)),  # no BatchNorm: packed in member rows
    (ModelSpec("cnn", width=3, batch_norm=True), (1, 8, 8)),
    (ModelSpec("resnet18", width=2, batch_norm=True), (3, 8, 8)),
    (ModelSpec("resnet18", width=2, batch_norm=True, skip=False), (3, 8, 8)),
    (ModelSpec("vgg9", width=2, batch_norm=True), (3, 8, 8)),
    # token ids (vocab 5): no BatchNorm, no buffers; LayerNorm has no packed layout
    (ModelSpec("transformer", width=8, depth=1, heads=2, mlp_ratio=2), (3,), 5),
]


def _floats(tensors) -> list[torch.dtype]:
    return [t.dtype for t in tensors.values() if t.is_floating_point()]


@pytest.mark.parametrize("model", MODELS, ids=[f"{m[0].name}-skip{m[0].skip}" for m in MODELS])
def test_a_float64_stack_stays_float64_through_training_evaluation_and_metrics(model):
    spec, shape, vocab = (*model, 0)[:3]
    K, B = 2, 8
    net, stack = init_stack(lambda: build_model(spec, shape, 4, vocab), range(K), "cpu")
    stack = stack.to("cpu", F64)
    assert set(_floats(stack.params)) == set(_floats(stack.buffers)) | {F64} == {F64}
    if spec.batch_norm:
        counter = next(n for n in stack.buffers if "num_batches" in n)
        assert stack.buffers[counter].dtype == torch.long
    g = torch.Generator().manual_seed(0)
    if vocab:
        x = torch.randint(vocab, (K, B, *shape), generator=g)
    else:
        x = torch.randn(K, B, *shape, generator=g, dtype=F64)
    y = torch.randint(4, (K, B), generator=g)
    packable = spec.name != "transformer"
    for mode in ("vmap", "loop", "packed") if packable else ("vmap", "loop"):
        opt = new_optim_state([OptimSpec(lr=0.05, momentum=0.9)] * K, stack)
        loss, _ = train_step(StepFn(net, mode=mode), stack, opt, x, y, opt.hypers.lr, "fp32")
        assert loss.dtype == F64 and bool(opt.alive.all()), mode
        assert set(_floats(stack.params)) == set(_floats(stack.buffers)) | {F64} == {F64}, mode
    eval_loss, _ = evaluate(net, stack, x, y)
    assert eval_loss.dtype == F64 and torch.isfinite(eval_loss).all()
    for hvp in ("vmap", "packed") if packable else ("vmap", "loop"):
        trace = hessian_trace(
            net, stack, x, y, n_probes=4, tol=0.0, generator=torch.Generator(), hvp=hvp
        )
        assert trace.estimate.dtype == F64 and torch.isfinite(trace.estimate).all()
    assert fisher_trace(net, stack, x, y).isfinite().all()
    params, buffers = unstack(stack, 0)
    stats = recompute_bn_stats(net, params, buffers, x[0][None])
    assert set(_floats(stats)) == ({F64} if spec.batch_norm else set())
    reps = representations(net, params, stats, x[0], ["logits", "features"])
    assert {r.dtype for r in reps.values()} == {F64}
    bn_x = x[:1, None]  # (pairs, batches, B, *input): recomputed statistics on the line
    line = linear_barrier(net, stack.select([0]), stack.select([1]), x[:1], y[:1], bn_x=bn_x)
    assert line.loss.dtype == F64 and torch.isfinite(line.loss).all()
