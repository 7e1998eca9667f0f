"""Where a packed training step's (or Hessian-vector product's) time goes: host wall time
against device kernel time.

Runs a few packed steps (``landscape.train.train_step``, eager, members sharing kernels as
``--step-mode`` says) of K stacked members under ``torch.profiler`` and prints, per step: wall
seconds, the sum of device kernel time, the number of kernels launched, and the kernels that
take the most device time. Wall time far above kernel time means the step is launch-bound (a
CUDA graph helps); kernel time close to wall time means the kernels themselves are the cost
(look at the top of the table). With ``--hvp MODE`` the same for one call of
``landscape.hvp.batched_hvp`` (``--probes`` products per member on ``--samples``
examples, eval mode, float32) instead, without its CUDA graph.

    python benchmarks/profile_step.py --device cuda --model resnet18 --width 4 --pack 32
    python benchmarks/profile_step.py --device cuda --width 4 --pack 8 --hvp packed --probes 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from landscape.functional import init_stack, member_shapes, num_params
from landscape.hvp import HVP_MODES, batched_hvp, net_loss
from landscape.models import build_model
from landscape.train import StepFn, new_optim_state, train_step
from landscape.variant import ModelSpec, OptimSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--pack", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--step-mode", default="vmap", choices=["vmap", "loop", "packed"])
    p.add_argument("--streams", type=int, default=1, help="CUDA streams of the loop step")
    p.add_argument("--hvp", choices=HVP_MODES, default=None, help="profile HVPs in this mode")
    p.add_argument("--probes", type=int, default=10, help="products per member (--hvp)")
    p.add_argument("--samples", type=int, default=256, help="examples per member (--hvp)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15, help="kernels listed")
    p.add_argument("--out", default=None, help="JSON summary file")
    args = p.parse_args()
    device = torch.device(args.device)
    spec = ModelSpec(args.model, width=args.width, batch_norm=True)
    K, B, shape = args.pack, args.batch_size, (3, 32, 32)
    net, stack = init_stack(lambda: build_model(spec, shape, 10), range(K), device)
    optim = OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=B)
    state = new_optim_state([optim] * K, stack)
    mode = args.step_mode
    step_fn = StepFn(net, mode=mode, channels_last=mode != "vmap", streams=args.streams)
    xs, ys = torch.randn(K, B, *shape, device=device), torch.randint(10, (K, B), device=device)
    lr = torch.full((K,), 0.05, device=device)

    def step() -> None:
        train_step(step_fn, stack, state, xs, ys, lr, args.precision)

    if args.hvp:
        step = hvp_call(args, net, stack, device)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    kernel_us = sum(e.time_range.elapsed_us() for e in device_events) / args.steps
    kernels = len(device_events) / args.steps
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps
    summary = {
        "model": args.model,
        "width": args.width,
        "pack": K,
        "what": f"hvp {args.hvp}, {args.probes} probes" if args.hvp else f"step {mode}",
        "precision": "fp32" if args.hvp else args.precision,
        "wall_ms_per_step": round(wall * 1e3, 3),
        "kernel_ms_per_step": round(kernel_us / 1e3, 3),
        "kernels_per_step": kernels,
        "aten_ops_per_step": ops,
    }
    print(json.dumps(summary))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=70))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


def hvp_call(args, net, stack, device: torch.device):
    """One eager ``batched_hvp`` call of every member on ``--probes`` fresh directions."""
    shapes = member_shapes(stack.params)
    K, N = stack.members, args.samples
    x = torch.randn(K, N, 3, 32, 32, device=device)
    y = torch.randint(10, (K, N), device=device)
    rows = torch.randn(K, args.probes, num_params(stack), device=device)
    hv = batched_hvp(net_loss(net, args.hvp), shapes, shared=False, mode=args.hvp)
    inputs = (stack.params, (stack.buffers, x, y))
    if args.hvp == "packed":  # the retained graph built once, then the products alone
        hv(*inputs, rows)
        return lambda: hv.graphed.fn(rows)
    return lambda: hv.fn(*inputs, rows)  # the products without their CUDA graph


if __name__ == "__main__":
    main()
