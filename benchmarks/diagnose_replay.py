"""Which part of the packed bf16 step does a CUDA-graph replay compute differently? (issue 15)

On an H200 one graph-replayed packed bf16 training step differed from the same step run
eagerly by more than bf16 rounding, while vmap and loop in bf16 and packed in fp32 replayed
exactly (``tests/landscape/test_cuda.py``: ``test_a_graph_replayed_bf16_step_differs_from_eager_
by_rounding_only``). Until that is explained, ``train.pack_step=auto`` does not pick ``packed``.

This runs that test's measurement over the factors that could be the cause, one at a time:
the layout (vmap, packed), NHWC activations (channels-last) or not, cuDNN on or off (off: ATen's
native convolution and BatchNorm kernels, no algorithm choice while capturing), and BatchNorm in
the model or not. Each row: three eager steps on two copies of a pack, then a fourth eager on one
and replayed from a CUDA graph on the other; ``ratio`` is their distance over the distance
between the same four steps in bf16 and in fp32 (the scale of bf16 rounding). Rounding alone
(another cuDNN algorithm chosen while capturing) stays well under 0.5; a replay that computes
another step does not. The rows that cross 0.5 name the part to look at:

- only with cuDNN on: an algorithm cuDNN picks for capture (not a bug of ours; accept it, or
  pin the algorithm);
- only with BatchNorm: the packed BatchNorm's bf16 path under capture (running statistics,
  ``num_batches_tracked``, where the casts sit);
- only channels-last: the NHWC grouped convolution.

    python benchmarks/diagnose_replay.py --out diagnose_replay.json     # a GPU, < 1 minute
    python benchmarks/diagnose_replay.py --quick --out /tmp/d.json      # CPU: no graphs, ratio 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from landscape import ModelSpec, OptimSpec  # noqa: E402
from landscape.train import GraphedTrainStep, StepFn, new_optim_state, train_step  # noqa: E402
from tests.landscape.step_modes import K, batches, fresh_stack, relative_diff  # noqa: E402

SHAPE = (3, 32, 32)


def run(device: str, model, mode: str, channels_last: bool, precision: str, graphed: bool):
    """The parameters after four SGD steps (the fourth replayed when ``graphed``) and whether a
    graph was recorded."""
    net, stack = fresh_stack(device, model, dtype=torch.float32)
    opt = new_optim_state([OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4)] * K, stack)
    step_fn = StepFn(net, mode=mode, channels_last=channels_last)
    lr = torch.full((K,), 0.05, device=device)
    replay = GraphedTrainStep(step_fn, stack, opt, precision, warmup=3) if graphed else None
    for x, y in batches(device, model, 4, torch.float32):
        if replay is not None:
            replay(x, y, lr)
        else:
            train_step(step_fn, stack, opt, x, y, lr, precision)
    recorded = bool(replay is not None and replay.graphed.graphs and not replay.graphed.failed)
    return stack.params, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="CPU: only that it runs")
    args = parser.parse_args()
    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    rows = []
    grid = itertools.product(("vmap", "packed"), (True, False), (True, False), (True, False))
    try:
        for mode, nhwc, cudnn, batch_norm in grid:
            if args.quick and (nhwc or not cudnn):
                continue  # on a CPU these change nothing
            model = (ModelSpec("resnet18", width=2, batch_norm=batch_norm), SHAPE)
            torch.backends.cudnn.enabled = cudnn
            t0 = time.perf_counter()
            eager, _ = run(device, model, mode, nhwc, "bf16", graphed=False)
            replayed, recorded = run(device, model, mode, nhwc, "bf16", graphed=True)
            fp32, _ = run(device, model, mode, nhwc, "fp32", graphed=False)
            row = {
                "mode": mode,
                "channels_last": nhwc,
                "cudnn": cudnn,
                "batch_norm": batch_norm,
                "recorded": recorded,
                "replayed_vs_eager": relative_diff(replayed, eager),
                "bf16_vs_fp32": relative_diff(eager, fp32),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            row["ratio"] = row["replayed_vs_eager"] / row["bf16_vs_fp32"]
            rows.append(row)
            print(
                f"{mode:6s} nhwc={nhwc!s:5s} cudnn={cudnn!s:5s} bn={batch_norm!s:5s} "
                f"recorded={recorded!s:5s} ratio={row['ratio']:.3g}",
                flush=True,
            )
    finally:
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.deterministic = deterministic
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    with open(args.out, "w") as fh:
        json.dump({"device": device_name, "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
