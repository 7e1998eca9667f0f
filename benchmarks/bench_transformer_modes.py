"""vmap against loop for a pack of one-layer transformers on token data, one training step.

The setting of issue #24's goal: d_model 128, 4 heads, MLP 512, the token triples (a, b, =) of
modular addition with p = 97 (vocab 98, 97 classes), full batch of 2,822 examples (30% of the
pairs), AdamW. For each pack size, both step modes of ``landscape.train.StepFn`` are timed as
the median of rounds of steps (after two warm-up steps), in one run; ``auto`` on a CPU picks
what this measures fastest (``landscape.train.step_mode``). JSON out.

    python benchmarks/bench_transformer_modes.py --out benchmarks/results/bench_transformer_modes.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from landscape.functional import init_stack
from landscape.models import build_model
from landscape.train import StepFn, new_optim_state, train_step
from landscape.variant import ModelSpec, OptimSpec

P, N = 97, 2822  # modulus; 30% of the p^2 pairs


def step_seconds(mode: str, K: int, spec: ModelSpec, rounds: int, steps: int) -> float:
    x, y = torch.randint(0, P + 1, (K, N, 3)), torch.randint(0, P, (K, N))
    lr = torch.full((K,), 1e-3)
    net, stack = init_stack(lambda: build_model(spec, (3,), P, P + 1), range(K), "cpu")
    opt = new_optim_state([OptimSpec(name="adamw", lr=1e-3, batch_size=0)] * K, stack)
    fn = StepFn(net, mode=mode)
    for _ in range(2):
        train_step(fn, stack, opt, x, y, lr, "fp32")
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(fn, stack, opt, x, y, lr, "fp32")
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = ModelSpec("transformer", width=args.width, depth=1, heads=4, mlp_ratio=4)
    rows = []
    for K in args.pack_sizes:
        t = {m: step_seconds(m, K, spec, args.rounds, args.steps) for m in ("vmap", "loop")}
        rows.append({"members": K, "vmap_s": t["vmap"], "loop_s": t["loop"],
                     "vmap_over_loop": t["vmap"] / t["loop"]})  # fmt: skip
        print(rows[-1])
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": args.threads, "rows": rows}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
