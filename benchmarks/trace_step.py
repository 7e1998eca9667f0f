"""Where one training step's code lives: the files a step visits, and the step's own functions
per file (issue #26: "the hot path in one file, the update rules as small pure functions beside
it").

For each step mode (loop with one and two members, packed and vmap with four: the demo's MLP of
width 16 on 8x8 inputs, SGD with momentum, on the CPU), one steady-state
``landscape.train.train_step`` is followed with ``sys.setprofile``: every call into a function
of ``landscape/``, in order. Reported per mode: the files in the order the step enters them
(runs of one file collapsed) and how many times it comes back to a file it had left; over all
modes, the distinct functions of the step's machinery per file, leaving out what a reader of
the step does not read as part of it (the model's forward in ``models.py``, the module binding
in ``functional.py``, the loss in ``objective.py``). No timing. JSON out.

    python benchmarks/trace_step.py --out benchmarks/results/trace_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import landscape
from landscape.functional import init_stack
from landscape.models import build_model
from landscape.train import StepFn, new_optim_state, train_step
from landscape.variant import ModelSpec, OptimSpec

ROOT = Path(landscape.__file__).resolve().parent
MODEL_SIDE = {"landscape/models.py", "landscape/functional.py", "landscape/objective.py"}
MODES = [("loop", 1), ("loop", 2), ("packed", 4), ("vmap", 4)]


def traced_step(mode: str, K: int) -> list[tuple[str, str]]:
    """(file, function) of every landscape call in one steady-state step, in order."""
    spec = ModelSpec(name="mlp", width=16)
    net, stack = init_stack(lambda: build_model(spec, (1, 8, 8), 10), list(range(K)), "cpu")
    opt = new_optim_state([OptimSpec(name="sgd", lr=0.1, momentum=0.9)] * K, stack)
    step_fn = StepFn(net, mode=mode, accuracy=False)
    x, y = torch.randn(K, 16, 1, 8, 8), torch.randint(0, 10, (K, 16))
    lr = torch.full((K,), 0.1)
    for _ in range(3):  # past the first steps' one-time work (cached leaves, layouts)
        train_step(step_fn, stack, opt, x, y, lr, "fp32")
    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg) -> None:
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.is_relative_to(ROOT):
            name = f"landscape/{path.relative_to(ROOT).as_posix()}"
            calls.append((name, frame.f_code.co_qualname))

    sys.setprofile(profile)
    try:
        train_step(step_fn, stack, opt, x, y, lr, "fp32")
    finally:
        sys.setprofile(None)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes, machinery = [], {}
    for mode, K in MODES:
        calls = traced_step(mode, K)
        files = [f for f, _ in calls]
        stays = [files[0]] + [b for a, b in zip(files, files[1:]) if a != b]
        returns = sum(1 for i, f in enumerate(stays) if f in stays[:i])
        modes.append({"mode": mode, "members": K, "files_in_order": stays, "returns": returns})
        for f, q in calls:
            if f not in MODEL_SIDE and "<" not in q.rsplit(".", 1)[-1]:  # no comprehensions
                machinery.setdefault(f, set()).add(q)
    result = {
        "benchmark": "trace_step",
        "torch": torch.__version__,
        "modes": modes,
        "step_functions_per_file": {f: sorted(q) for f, q in sorted(machinery.items())},
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
