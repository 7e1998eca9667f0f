"""Packed training against the usual one-model-at-a-time eager loop, measured side by side.

For each width k and pack size K: model-steps per second of

- ``sequential``: a plain ``nn.Module`` + ``torch.optim.SGD`` loop (forward, backward, step),
  one model at a time, the way a research script trains, at the same precision;
- ``packed``: ``landscape.train.train_step`` on K stacked members (the step sweeps use).

Speed-up = packed / sequential, per model. Achieved TFLOP/s = K x 3 x forward FLOPs (counted by
``torch.utils.flop_counter``) per step / time, against a bf16 matrix-multiply peak measured in
the same run. No Ray. JSON out.

    python benchmarks/bench_packing.py --device cuda --model resnet18 --widths 4 8 16 32 64 \
        --pack-sizes 8 32 --precision bf16 --out bench_packing.json
    python benchmarks/bench_packing.py --quick        # CPU smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from landscape.functional import init_stack
from landscape.models import build_model
from landscape.train import StepFn, autocast, new_optim_state, train_step
from landscape.variant import ModelSpec, OptimSpec, TrainSpec, Variant

warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn, after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """Achieved TFLOP/s of an n x n x n matrix multiply: the practical peak of this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, steps=10 if device.type == "cuda" else 3, warmup=2, device=device)
    return 2 * n**3 / sec / 1e12


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def bench_width(args, device: torch.device, width: int, pack_sizes: list[int]) -> list[dict]:
    spec = ModelSpec(args.model, width=width, batch_norm=True)
    shape = tuple(args.input_shape)
    B = args.batch_size
    x1 = torch.randn(B, *shape, device=device)
    y1 = torch.randint(args.classes, (B,), device=device)
    optim = OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=B)

    # the usual eager loop: one model, torch.optim, autocast at the same precision
    model = build_model(spec, shape, args.classes).to(device)
    flops = forward_flops(model, x1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def sequential_step() -> None:
        with autocast(device, args.precision):
            loss = F.cross_entropy(model(x1).float(), y1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seq = timed(sequential_step, args.steps, args.warmup, device)
    rows = []
    for K in pack_sizes:
        variants = [
            Variant(model=spec, optim=optim, train=TrainSpec(precision=args.precision), seed=s)
            for s in range(K)
        ]
        net, stack = init_stack(lambda: build_model(spec, shape, args.classes), range(K), device)
        state = new_optim_state([v.optim for v in variants], stack)
        step_fn = StepFn(net, compile=args.compile)
        xs = torch.randn(K, B, *shape, device=device)
        ys = torch.randint(args.classes, (K, B), device=device)
        lr = torch.full((K,), 0.05, device=device)

        def packed_step() -> None:
            train_step(step_fn, stack, state, xs, ys, lr, args.precision)  # noqa: B023

        try:
            sec = timed(packed_step, args.steps, args.warmup, device)
        except torch.OutOfMemoryError:
            rows.append({"model": args.model, "width": width, "pack": K, "status": "out of memory"})
            torch.cuda.empty_cache()
            continue
        packed_rate, seq_rate = K / sec, 1 / seq
        rows.append(
            {
                "model": args.model,
                "width": width,
                "pack": K,
                "batch": B,
                "precision": args.precision,
                "params_per_model": sum(p.numel() for p in model.parameters()),
                "sequential_model_steps_per_s": round(seq_rate, 2),
                "packed_model_steps_per_s": round(packed_rate, 2),
                "speedup": round(packed_rate / seq_rate, 2),
                "packed_tflops": round(3 * flops * K / sec / 1e12, 3),
                "sequential_tflops": round(3 * flops / seq / 1e12, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--pack-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-shape", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the packed step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--quick", action="store_true", help="CPU smoke run: cnn, widths 4 8, packs 4 8, few steps"
    )
    p.add_argument("--out", default="bench_packing.json")
    args = p.parse_args()
    if args.quick:
        args.model, args.widths, args.pack_sizes = "cnn", [4, 8], [4, 8]
        args.batch_size, args.steps, args.warmup, args.precision = 32, 5, 1, "fp32"
    device = torch.device(args.device)
    torch.manual_seed(0)
    peak_n = 8192 if device.type == "cuda" else 1024
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_n, peak_dtype)
    rows = [r for w in args.widths for r in bench_width(args, device, w, args.pack_sizes)]
    for r in rows:
        if "packed_tflops" in r:
            r["packed_fraction_of_peak"] = round(r["packed_tflops"] / peak, 4)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    report = {
        "benchmark": "packing",
        "device": name,
        "torch": torch.__version__,
        "matmul_peak_tflops": round(peak, 2),
        "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"peak {peak:.2f} TFLOP/s ({report['matmul_peak_dtype']}) on {name}; wrote {args.out}")


if __name__ == "__main__":
    main()
