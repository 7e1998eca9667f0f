"""Surface evaluation and Bezier training speed: stacked (vmapped) against one point at a time.

    python benchmarks/bench_surfaces.py --device cpu --out bench_surfaces.json [--quick]

For a few small models (random weights: speed does not depend on training) it measures
filter-normalised 2-D surface grid points per second, evaluated as stacked parameter sets
(``landscape.metrics.surfaces.surface_2d``) and by a plain loop that materialises each point
and runs the model once per point, in the same process; and the time to train Bezier
curves per pair, one pair alone against several stacked. Ratios are the result: absolute
numbers depend on the machine and its load. No Ray, no Hydra.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from landscape.functional import FunctionalNet, Stack, init_stack, unstack
from landscape.metrics.bezier import train_bezier
from landscape.metrics.surfaces import filter_normalized_direction, surface_2d
from landscape.models import CNN, MLP

INPUT_SHAPE = (1, 8, 8)  # the embedded digits set's shape
CLASSES = 10


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], torch.nn.Module]


CASES = [
    Case("mlp_w32", lambda: MLP(64, CLASSES, 32, 2, False)),
    Case("mlp_w128_bn", lambda: MLP(64, CLASSES, 128, 2, True)),
    Case("cnn_w8_bn", lambda: CNN(1, CLASSES, 8, True)),
    Case("cnn_w16", lambda: CNN(1, CLASSES, 16, False)),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


REPEATS = 3  # timings are the best of this many calls: a shared machine's load only slows runs down


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of the fastest of REPEATS calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(REPEATS):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def loop_surface(
    net: FunctionalNet, stack: Stack, d1, d2, grid, x, y, batch_size: int, limit: int
) -> int:
    """The baseline: one materialised parameter set and one model call per grid point."""
    params, buffers = unstack(stack, 0)
    done = 0
    with torch.no_grad():
        for alpha in grid.tolist():
            for beta in grid.tolist():
                if done == limit:
                    return done
                point = {n: params[n] + alpha * d1[n][0] + beta * d2[n][0] for n in params}
                for s in range(0, y.shape[1], batch_size):
                    F.cross_entropy(
                        net.logits(point, buffers, x[0, s : s + batch_size]),
                        y[0, s : s + batch_size],
                    )
                done += 1
    return done


def bench_surface(
    case: Case, device: torch.device, points: int, n: int, chunks: list[int], loop_limit: int
) -> dict:
    net, stack = init_stack(case.build, [0], device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, *INPUT_SHAPE, generator=g).to(device)
    y = torch.randint(0, CLASSES, (1, n), generator=g).to(device)
    d1, d2 = (filter_normalized_direction(stack.params, g) for _ in range(2))
    grid = torch.linspace(-1, 1, points, device=device)
    total = points * points
    out = {
        "model": case.name,
        "params": sum(p[0].numel() for p in stack.params.values()),
        "grid_points": total,
        "samples": n,
    }
    for chunk in chunks:
        seconds = timed(
            lambda c=chunk: surface_2d(net, stack, d1, d2, grid, grid, x, y, chunk=c, batch_size=n),
            device,
        )
        out[f"stacked_chunk{chunk}_points_per_s"] = total / seconds
    done = min(loop_limit, total)
    seconds = timed(lambda: loop_surface(net, stack, d1, d2, grid, x, y, n, done), device)
    out["loop_points_per_s"] = done / seconds
    best = max(out[f"stacked_chunk{c}_points_per_s"] for c in chunks)
    out["speedup_best_stacked_vs_loop"] = best / out["loop_points_per_s"]
    return out


def bench_bezier(
    case: Case, device: torch.device, pairs: list[int], steps: int, batch: int
) -> dict:
    out = {"model": case.name, "steps": steps, "batch_size": batch}
    for p in pairs:
        net, stack = init_stack(case.build, list(range(2 * p)), device)
        a, b = stack.select(list(range(p))), stack.select(list(range(p, 2 * p)))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(p, batch, *INPUT_SHAPE, generator=g).to(device)
        y = torch.randint(0, CLASSES, (p, batch), generator=g).to(device)
        seconds = timed(lambda: train_bezier(net, a, b, lambda gen: (x, y), steps, g), device)  # noqa: B023
        out[f"pairs{p}_seconds_per_pair"] = seconds / p
    out["speedup_stacked_vs_single"] = (
        out[f"pairs{pairs[0]}_seconds_per_pair"] / out[f"pairs{pairs[-1]}_seconds_per_pair"]
    )
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--out", default="bench_surfaces.json", help="JSON results file")
    parser.add_argument(
        "--quick", action="store_true", help="small grids and few steps (under a minute on CPU)"
    )
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.quick:
        points, n, chunks, loop_limit = 11, 256, [16, 64], 30
        pairs, steps = [1, 4], 10
    else:
        points, n, chunks, loop_limit = (
            21,
            512,
            [16, 64, 256],
            100,
        )  # the loop's rate from 100 points
        pairs, steps = [1, 4, 16], 50
    result = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": REPEATS,
        "surfaces": [bench_surface(c, device, points, n, chunks, loop_limit) for c in CASES],
        "bezier": [bench_bezier(c, device, pairs, steps, 128) for c in CASES],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
