"""Packed training against the usual one-model-at-a-time eager loop, measured side by side.

For each width k and pack size K: model-steps per second of

- ``sequential``: a plain ``nn.Module`` + ``torch.optim.SGD`` loop (forward, backward, step),
  one model at a time, the way a research script trains, at the same precision;
- ``packed``: ``landscape.train.train_step`` on K stacked members (the step sweeps use),
  eagerly (``eager``) and, on a CUDA device, recorded once as a CUDA graph and replayed
  (``graph``: ``landscape.train.GraphedTrainStep``, what sweeps do on a GPU by default);
  members share kernels as ``train.pack_step`` says (``auto``: vmap for small models, one
  after another in channels-last layout for large ones; ``--step-modes`` forces one, or picks
  ``packed``: members side by side in the channel dimension, see ``landscape.channel_layout``).

``--model transformer`` measures issue #24's setting instead of images: one-block pre-LN
transformers of width d_model (4 heads, MLP 4 x d_model) on the token triples (a, b, =) of
modular addition with p = 97 (vocab 98, 97 classes), a full batch of 2,822 examples (30% of the
p^2 pairs), AdamW (lr 1e-3, weight decay 1) for both the plain module and the pack.

The two are timed in alternating rounds (``--rounds``) so that drifts of a shared machine
reach both; the medians give the speed-up = packed / sequential, per model. Achieved TFLOP/s
= K x 3 x forward FLOPs (counted by ``torch.utils.flop_counter``) per step / time, against a
bf16 matrix-multiply peak measured in the same run. No Ray. JSON out.

    python benchmarks/bench_packing.py --device cuda --model resnet18 --widths 4 8 16 32 64 \
        --pack-sizes 8 32 64 --modes graph --out bench_packing.json
    python benchmarks/bench_packing.py --quick        # CPU smoke run, under a minute
    python benchmarks/bench_packing.py --device cpu --threads 1 --model mlp --input-shape 1 8 8 \
        --precision fp32 --batch-norm off --weight-decay 0 --widths 8 16 32 64 \
        --batch-size 16 128 --pack-sizes 1 2 4 16 --step-modes auto loop packed  # the demo's
    python benchmarks/bench_packing.py --model transformer --widths 128 --pack-sizes 1 4 16 \
        --precision fp32 --step-modes auto vmap loop --out bench_packing_transformer.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.functional import init_stack
from landscape.models import build_model, model_forward_flops
from landscape.train import GraphedTrainStep, StepFn, autocast, new_optim_state, train_step
from landscape.train import step_mode as step_mode_of
from landscape.variant import ModelSpec, OptimSpec, TrainSpec, Variant

warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The device as the JSON reports name it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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


# issue #24's transformer setting: a + b mod 97 as token triples, 30% of the pairs, full batch
MODADD_P, MODADD_N = 97, 2822


def task(args) -> tuple[tuple[int, ...], int, int]:
    """(input shape, classes, vocab) of the benchmark's data: images, or token triples."""
    if args.model == "transformer":
        return (3,), MODADD_P, MODADD_P + 1
    return tuple(args.input_shape), args.classes, 0


def model_spec(args, width: int) -> ModelSpec:
    if args.model == "transformer":
        return ModelSpec("transformer", width=width, depth=1, heads=4, mlp_ratio=4)
    return ModelSpec(args.model, width=width, batch_norm=args.batch_norm == "on")


def optim_spec(args, B: int) -> OptimSpec:
    if args.model == "transformer":
        return OptimSpec(name="adamw", lr=1e-3, weight_decay=1.0, batch_size=B)
    return OptimSpec(lr=0.05, momentum=0.9, weight_decay=args.weight_decay, batch_size=B)


def plain_optimizer(o: OptimSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """What a research script would use for the settings ``o``."""
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )


def batch(args, lead: tuple[int, ...], B: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Random inputs (images, or token ids) and labels of shape (*lead, B, ...)."""
    shape, classes, vocab = task(args)
    size = (*lead, B, *shape)
    x = torch.randint(vocab, size, device=device) if vocab else torch.randn(size, device=device)
    return x, torch.randint(classes, (*lead, B), device=device)


def make_packed(
    args,
    device: torch.device,
    spec: ModelSpec,
    optim: OptimSpec,
    K: int,
    mode: str,
    step_mode: str,
    streams: int = 1,
) -> tuple[Callable[[], object], str]:
    """A packed step of K members (fresh stack and optimiser state) and its resolved
    ``train.pack_step`` (``auto`` decides as ``landscape.train.train_pack`` does)."""
    (shape, classes, vocab), B = task(args), optim.batch_size
    train = TrainSpec(precision=args.precision, pack_step=step_mode, pack_streams=streams)
    variants = [Variant(model=spec, optim=optim, train=train, seed=s) for s in range(K)]
    resolved = step_mode_of(variants[0], shape, classes, device, vocab, members=K)
    net, stack = init_stack(lambda: build_model(spec, shape, classes, vocab), range(K), device)
    state = new_optim_state([v.optim for v in variants], stack)
    step_fn = StepFn(  # as train_pack builds it (the minibatch accuracy is not read)
        net,
        accuracy=False,
        compile=args.compile,
        mode=resolved,
        channels_last=resolved != "vmap",
        streams=streams,
    )
    xs, ys = batch(args, (K,), B, device)
    lr = torch.full((K,), 0.05, device=device)
    if mode == "graph":
        graphed = GraphedTrainStep(step_fn, stack, state, args.precision)
        return (lambda: graphed(xs, ys, lr)), resolved
    return (lambda: train_step(step_fn, stack, state, xs, ys, lr, args.precision)), resolved


def bench_width(
    args, device: torch.device, width: int, pack_sizes: list[int], B: int
) -> list[dict]:
    spec = model_spec(args, width)
    shape, classes, vocab = task(args)
    x1, y1 = batch(args, (), B, device)
    optim = optim_spec(args, B)
    wd = optim.weight_decay

    # the usual eager loop: one model, torch.optim, autocast at the same precision
    model = build_model(spec, shape, classes, vocab).to(device)
    flops = model_forward_flops(spec, shape, classes, vocab) * B
    opt = plain_optimizer(optim, model)

    def sequential_step() -> None:
        with autocast(device, args.precision):
            loss = F.cross_entropy(model(x1).float(), y1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    for K in pack_sizes:
        for step_mode, streams, mode in itertools.product(
            args.step_modes, args.streams, args.modes
        ):
            row = {"model": args.model, "width": width, "pack": K, "step": step_mode,
                   "streams": streams, "mode": mode, "batch": B, "precision": args.precision,
                   "batch_norm": args.batch_norm, "weight_decay": wd}  # fmt: skip
            try:
                packed, row["step"] = make_packed(
                    args, device, spec, optim, K, mode, step_mode, streams
                )
                if streams > 1 and row["step"] != "loop":
                    continue  # streams only change the loop step
                # sequential and packed timed in turns, so that drifts of the machine (its
                # clocks, its other tenants) reach both; medians of the rounds
                seq_s, packed_s = [], []
                for r in range(args.rounds):
                    seq_s.append(timed(sequential_step, args.steps, args.warmup, device))
                    warm = args.warmup if r == 0 else 1
                    packed_s.append(timed(packed, args.steps, warm, device))
            except torch.OutOfMemoryError:
                rows.append({**row, "status": "out of memory"})
                print(json.dumps(rows[-1]), flush=True)
                torch.cuda.empty_cache()
                continue
            seq, sec = statistics.median(seq_s), statistics.median(packed_s)
            packed_rate, seq_rate = K / sec, 1 / seq
            rows.append(
                {
                    **row,
                    "params_per_model": sum(p.numel() for p in model.parameters()),
                    "sequential_model_steps_per_s": round(seq_rate, 2),
                    "sequential_rounds_steps_per_s": [round(1 / t, 1) for t in seq_s],
                    "packed_model_steps_per_s": round(packed_rate, 2),
                    "packed_rounds_model_steps_per_s": [round(K / t, 1) for t in packed_s],
                    "speedup": round(packed_rate / seq_rate, 2),
                    "packed_tflops": round(3 * flops * K / sec / 1e12, 3),
                    "sequential_tflops": round(3 * flops / seq / 1e12, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del packed
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--pack-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=None,
        help="one or several (default 128; transformer: the full batch, 2,822)",
    )
    p.add_argument(
        "--batch-norm", choices=["on", "off"], default="on", help="model.batch_norm (demo: off)"
    )
    p.add_argument("--weight-decay", type=float, default=5e-4, help="optim.weight_decay (demo: 0)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default; workers: 1)"
    )
    p.add_argument("--input-shape", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the packed step")
    p.add_argument(
        "--step-modes",
        nargs="+",
        choices=["auto", "vmap", "loop", "packed"],
        default=["auto"],
        help="train.pack_step: how the members share kernels (loop runs NHWC on CUDA)",
    )
    p.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1],
        help="train.pack_streams for the loop step: members spread over this many CUDA streams",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "graph"],
        default=None,
        help="packed step modes (default: eager and graph on CUDA, eager on a CPU)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="turns of sequential and packed timing")
    p.add_argument(
        "--quick", action="store_true", help="CPU smoke run: cnn, widths 4 8, packs 4 8, few steps"
    )
    p.add_argument("--out", default="bench_packing.json")
    args = p.parse_args()
    if args.batch_size is None:
        args.batch_size = [MODADD_N if args.model == "transformer" else 128]
    if args.quick:
        args.model, args.widths, args.pack_sizes = "cnn", [4, 8], [4, 8]
        args.batch_size, args.steps, args.warmup, args.precision = [32], 5, 1, "fp32"
        args.rounds = 1
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.modes is None:
        args.modes = ["eager", "graph"] if device.type == "cuda" else ["eager"]
    torch.manual_seed(0)
    peak_n = 8192 if device.type == "cuda" else 1024
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_n, peak_dtype)
    rows = [
        r
        for B in args.batch_size
        for w in args.widths
        for r in bench_width(args, device, w, args.pack_sizes, B)
    ]
    for r in rows:
        if "packed_tflops" in r:
            r["packed_fraction_of_peak"] = round(r["packed_tflops"] / peak, 4)
    name = device_name(device)
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
