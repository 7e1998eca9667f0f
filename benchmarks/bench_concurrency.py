"""Small packs filling one GPU: the candidates measured against each other.

The taxonomy preset's packs hold 5 seeds of one cell, and a 5-member width-8 step leaves most
of an H200 idle. Ways to keep several packs in flight on one device, each replaying its own
training step from a CUDA graph (``landscape.train.GraphedTrainStep``), in aggregate
model-steps per second:

- ``one``: one pack alone (the reference);
- ``serial``: N packs in one process, one after another;
- ``streams``: N packs in one process, pack i replayed on CUDA stream i;
- ``processes``: N processes, one pack each (what ``ray.gpus_per_worker=1/N`` gives: N Ray
  workers sharing the GPU by time-slicing);
- ``mps``: the same N processes under NVIDIA's Multi-Process Service, whose daemon this script
  starts (``nvidia-cuda-mps-control -d``) and stops (``quit``) when the binary is there and
  no daemon runs yet; skipped otherwise.

The fastest candidate that a sweep can use is the one to make the default: ``processes`` and
``mps`` are ``ray.gpus_per_worker=1/N`` (plus the daemon, for ``mps``).

    python benchmarks/bench_concurrency.py --out bench_concurrency.json      # a GPU, ~1 min
    python benchmarks/bench_concurrency.py --quick --out /tmp/c.json         # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_taxonomy import CIFAR, cell_variants, preset, sync  # noqa: E402

from landscape.functional import init_stack  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.train import (  # noqa: E402
    GraphedTrainStep,
    StepFn,
    new_optim_state,
    step_mode,
    train_step,
)
from landscape.variant import ConfigError  # noqa: E402
from sweeps.mps import mps_daemon  # noqa: E402  (no Ray: the device machine has none)


def make_pack(width: int, batch: int, offset: int, device: torch.device):
    """A warmed-up training step of one 5-member pack of the preset's cell (its seeds shifted
    by ``offset``), its inputs, and its member count."""
    sweep, _ = preset()
    variants = cell_variants(sweep, width, batch, 1)
    spec, K = variants[0].model, len(variants)
    net, stack = init_stack(
        lambda: build_model(spec, *CIFAR), [v.seed + offset for v in variants], device
    )
    opt = new_optim_state([v.optim for v in variants], stack)
    mode = step_mode(variants[0], *CIFAR, device)
    fn = StepFn(net, mode=mode, channels_last=mode != "vmap")
    precision = variants[0].train.precision
    x = torch.randn(K, batch, *CIFAR[0], device=device)
    y = torch.randint(10, (K, batch), device=device)
    lr = torch.full((K,), 0.1, device=device)
    if device.type == "cuda":
        graphed = GraphedTrainStep(fn, stack, opt, precision)

        def step() -> None:
            graphed(x, y, lr)
    else:

        def step() -> None:
            train_step(fn, stack, opt, x, y, lr, precision)

    for _ in range(5):
        step()
    sync(device)
    return step, K


def in_process(args, device: torch.device, n: int, streams: bool) -> float:
    packs = [make_pack(args.width, args.batch, 100 * i, device) for i in range(n)]
    side = [torch.cuda.Stream(device) for _ in packs] if streams else None
    if side:
        for s in side:
            s.wait_stream(torch.cuda.current_stream(device))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        for i, (step, _) in enumerate(packs):
            with torch.cuda.stream(side[i]) if side else contextlib.nullcontext():
                step()
    sync(device)
    return args.steps * sum(K for _, K in packs) / (time.perf_counter() - t0)


def _worker(rank: int, args, device: str, barrier, out) -> None:
    torch.set_num_threads(1)
    step, K = make_pack(args.width, args.batch, 100 * rank, torch.device(device))
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(torch.device(device))
    out.put((rank, t0, time.perf_counter(), K))


def in_processes(args, device: torch.device, n: int) -> float:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args, str(device), barrier, out)) for r in range(n)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=args.timeout_s) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    start, end = min(r[1] for r in results), max(r[2] for r in results)
    return args.steps * sum(r[3] for r in results) / (end - start)


@contextlib.contextmanager
def mps_or_nothing():
    """The sweep's own MPS daemon (``sweeps.mps.mps_daemon``) for the block; yields False, and
    says why, when MPS is unavailable here."""
    daemon = contextlib.ExitStack()
    try:
        daemon.enter_context(mps_daemon(log=lambda line: None))
    except ConfigError as exc:
        print(f"mps skipped: {exc}", flush=True)
        yield False
        return
    with daemon:
        yield True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--packs", type=int, nargs="+", default=[4, 13])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--timeout-s", type=float, default=240)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: width 1, 2 packs")
    p.add_argument("--out", default="bench_concurrency.json")
    args = p.parse_args()
    if args.quick:
        args.width, args.batch, args.packs, args.steps = 1, 8, [2], 3
    device = torch.device(args.device)
    rows = []
    one = in_process(args, device, 1, streams=False)
    for n in args.packs:
        row = {"packs": n, "one_pack": round(one, 1)}
        row["serial"] = round(in_process(args, device, n, streams=False), 1)
        if device.type == "cuda":
            row["streams"] = round(in_process(args, device, n, streams=True), 1)
        row["processes"] = round(in_processes(args, device, n), 1)
        if device.type == "cuda":
            with mps_or_nothing() as running:
                row["mps"] = round(in_processes(args, device, n), 1) if running else None
        row.update({f"{k}_over_one": round(v / one, 2) for k, v in list(row.items()) if k not in ("packs", "one_pack") and v})  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = {"benchmark": "concurrency", "device": name, "torch": torch.__version__,
              "width": args.width, "batch": args.batch, "steps": args.steps,
              "unit": "model-steps/s, aggregate", "rows": rows}  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"{name}: wrote {args.out}")


if __name__ == "__main__":
    main()
