"""Helpers shared by the step-mode equivalence tests (``test_train.py``) and their GPU
versions (``test_cuda.py``): a pack of 3 (or any size) trained a few steps with each ``StepFn`` mode, and
one step's gradients with each mode.

Why float64: a tiny ReLU net amplifies rounding. Two step modes that differ only in the
order of their float32 sums (a grouped convolution against vmap's, say) flip the odd unit
sitting at ReLU's kink, and the nets part: width-2 ResNet18 modes differ by 1e-7 after one
step but 3e-2 after three on some CPUs (issue 15). In float64 the same rounding is 1e-16
and no unit sits that close to its kink, so several steps of two modes agree to ~1e-13
whatever the CPU's kernels. Low-precision paths (fp32, bf16) are compared on one step's
gradients, where nothing compounds.
"""

from __future__ import annotations

import torch

from landscape import ModelSpec, OptimSpec
from landscape.functional import init_stack
from landscape.models import build_model
from landscape.train import StepFn, autocast, new_optim_state, train_step

RESNET = (ModelSpec("resnet18", width=2, batch_norm=True), (3, 32, 32))
# a model is (spec, input shape) or (spec, (T,), vocab) for token ids in [0, vocab)
TRANSFORMER = (ModelSpec("transformer", width=8, depth=2, heads=2, mlp_ratio=2), (4,), 7)
K, B = 3, 8  # members, examples per member and step


def max_diff(a, b) -> float:
    return max(
        [(a[n].double().cpu() - b[n].double().cpu()).abs().max().item() for n in a], default=0.0
    )


def relative_diff(a, b) -> float:
    """||a - b|| / ||b|| over all tensors of two parameter-shaped dicts together."""
    num = sum((a[n].double().cpu() - b[n].double().cpu()).square().sum() for n in b)
    den = sum(b[n].double().cpu().square().sum() for n in b)
    return float((num / den).sqrt())


def fresh_stack(device, model=RESNET, dtype=torch.float64, members: int = K):
    spec, shape, vocab = (*model, 0)[:3]
    net, stack = init_stack(lambda: build_model(spec, shape, 10, vocab), range(members), device)
    return net, stack.to(device, dtype)


def batches(device, model, steps, dtype, members: int = K):
    shape, vocab = (*model, 0)[1:3]
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        if vocab:
            x = torch.randint(vocab, (members, B, *shape), generator=g).to(device)
        else:
            shape_ = (members, B, *shape)
            x = torch.randn(shape_, generator=g, dtype=torch.float64).to(device, dtype)
        yield x, torch.randint(10, (members, B), generator=g).to(device)


def stacks_by_mode(
    device: str,
    modes=("vmap", "loop"),
    model=RESNET,
    steps: int = 3,
    channels_last: bool = False,
    streams: int = 1,
    dtype: torch.dtype = torch.float64,
    members: int = K,
):
    """A pack of ``members`` (3) trained ``steps`` SGD steps (momentum, weight decay) on the
    same batches with each StepFn mode, in ``dtype``; and a function that builds the same
    pack fresh."""
    stacks = {}
    for mode in modes:
        net, stack = fresh_stack(device, model, dtype, members)
        spec = OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4)
        opt = new_optim_state([spec] * members, stack)
        step_fn = StepFn(net, mode=mode, channels_last=channels_last, streams=streams)
        lr = torch.full((members,), 0.05, device=device)
        for x, y in batches(device, model, steps, dtype, members):
            train_step(step_fn, stack, opt, x, y, lr, "fp32")
        stacks[mode] = stack
    return stacks, lambda: fresh_stack(device, model, dtype, members)


def step_gradients(
    device: str,
    modes=("vmap", "packed"),
    model=RESNET,
    precision: str = "fp32",
    channels_last: bool = False,
):
    """One training step's gradients {mode: grads} of the fresh float32 pack on one batch,
    under ``precision`` (bf16: autocast), and the BatchNorm statistics that step left."""
    out = {}
    x, y = next(batches(device, model, 1, torch.float32))
    for mode in modes:
        net, stack = fresh_stack(device, model, torch.float32)
        step_fn = StepFn(net, mode=mode, channels_last=channels_last)
        with autocast(torch.device(device), precision):
            grads, loss, _ = step_fn(stack.params, stack.buffers, x, y)
        out[mode] = grads, stack.buffers, loss
    return out
