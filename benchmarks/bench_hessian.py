"""Hessian trace and top eigenvalue: batched (K members at once) vs a PyHessian-style loop.

For each model and width, K models on the same batch of random CIFAR-shaped data:

- batched: ``landscape.metrics.hessian.hessian_trace`` (``probes`` Rademacher probes,
  tolerance off so every member uses all of them) and ``hessian_eigenvalues`` (k = 1,
  ``iters`` power iterations, tolerance off), forward-over-reverse HVPs vmapped over a
  chunk of probes and the K members, replayed from CUDA graphs on a GPU;
- loop: what PyHessian does, one model at a time: one forward and backward with
  ``create_graph=True``, then one double-backward HVP per probe / per iteration.

Both sides do the same number of HVPs in the same process (one run), so the ratios are
comparable; the absolute times are for this machine only. ``--loop-members L`` times the loop
on L of the K models and scales to K (every model costs the loop the same); ``--hvp-modes``
picks how the batched side computes its products (``hessian_trace``'s ``hvp``): ``vmap``
(forward-over-reverse, members and probes vmapped), ``loop`` (members in turn), ``packed``
(all members in the packed layout, double backward through a retained graph: the loop's
method for K models at once).
Usage:

    python benchmarks/bench_hessian.py --device cuda --models resnet18=4,8,16 --members 8 \
        --loop-members 2 --hvp-modes vmap packed --out bench_hessian.json
    python benchmarks/bench_hessian.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from landscape.functional import FunctionalNet, Stack, init_stack, num_params, unstack
from landscape.metrics.hessian import hessian_eigenvalues, hessian_trace
from landscape.models import MODELS, build_model
from landscape.variant import ModelSpec

INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10
FULL = {"members": 8, "samples": 256, "probes": 100, "iters": 100, "chunk": 10,
        "models": {"cnn": [4, 8, 16, 32], "resnet18": [4, 8, 16]}}  # fmt: skip
QUICK = {
    "members": 2,
    "samples": 32,
    "probes": 20,
    "iters": 10,
    "chunk": 10,
    "models": {"cnn": [4, 8]},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def batched(
    net: FunctionalNet, stack: Stack, x, y, cfg: dict, chunk: int, device: torch.device, mode: str
) -> dict:
    """Trace and top eigenvalue of all K members at once; halves the chunk on out-of-memory."""
    while True:
        try:
            return _batched(net, stack, x, y, cfg, chunk, device, mode)
        except RuntimeError as err:  # torch.OutOfMemoryError, or one raised inside TorchScript
            if "out of memory" not in str(err) or chunk == 1:
                raise
            chunk //= 2
            torch.cuda.empty_cache()


def _batched(
    net: FunctionalNet, stack: Stack, x, y, cfg: dict, chunk: int, device: torch.device, mode: str
) -> dict:
    g = torch.Generator(device).manual_seed(0)
    trace, t_trace = timed(
        partial(
            hessian_trace,
            net,
            stack,
            x,
            y,
            n_probes=cfg["probes"],
            tol=0.0,
            chunk=chunk,
            generator=g,
            hvp=mode,
        ),
        device,
    )
    eig, t_eig = timed(
        partial(
            hessian_eigenvalues,
            net,
            stack,
            x,
            y,
            k=1,
            max_iter=cfg["iters"],
            tol=0.0,
            generator=g,
            hvp=mode,
        ),  # fmt: skip
        device,
    )
    return {"trace_s": t_trace, "eig_s": t_eig, "chunk": chunk,
            "trace": trace.estimate.tolist(), "trace_se": trace.stderr.tolist(),
            "top_eig": eig.values[:, 0].tolist()}  # fmt: skip


def _double_backward_hvp(
    grads, weights: list[torch.Tensor], v: list[torch.Tensor]
) -> list[torch.Tensor]:
    return torch.autograd.grad(grads, weights, grad_outputs=v, retain_graph=True)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((u * w).sum() for u, w in zip(a, b))


def loop_trace(model: nn.Module, x, y, probes: int, g: torch.Generator) -> float:
    """PyHessian's ``trace``: one graph, then one double-backward HVP per Rademacher probe."""
    weights = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, create_graph=True)
    total = 0.0
    for _ in range(probes):
        v = [
            torch.randint(0, 2, w.shape, generator=g, device=w.device).float() * 2 - 1
            for w in weights
        ]
        total += _dot(v, _double_backward_hvp(grads, weights, v)).item()
    return total / probes


def loop_top_eig(model: nn.Module, x, y, iters: int, g: torch.Generator) -> float:
    """PyHessian's ``eigenvalues`` (top_n 1): power iteration, one double-backward HVP each."""
    weights = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, create_graph=True)
    v = [torch.randn(w.shape, generator=g, device=w.device) for w in weights]
    eig = 0.0
    for _ in range(iters):
        norm = _dot(v, v).sqrt()
        v = [a / norm for a in v]
        hv = _double_backward_hvp(grads, weights, v)
        eig = _dot(v, hv).item()
        v = [h.detach() for h in hv]
    return eig


def pyhessian_loop(spec: ModelSpec, stack: Stack, x, y, cfg: dict, device: torch.device) -> dict:
    """One model at a time, one double-backward HVP per probe / iteration (PyHessian's way)."""
    g = torch.Generator(device).manual_seed(0)
    out = {"trace_s": 0.0, "eig_s": 0.0, "trace": [], "top_eig": []}
    for k in range(stack.members):
        model = build_model(spec, INPUT_SHAPE, NUM_CLASSES).to(device).eval()
        params, buffers = unstack(stack, k)
        model.load_state_dict({**params, **buffers})
        value, t = timed(partial(loop_trace, model, x[k], y[k], cfg["probes"], g), device)
        out["trace"].append(value)
        out["trace_s"] += t
        value, t = timed(partial(loop_top_eig, model, x[k], y[k], cfg["iters"], g), device)
        out["top_eig"].append(value)
        out["eig_s"] += t
    return out


def bench_one(name: str, width: int, cfg: dict, device: torch.device) -> dict:
    spec = ModelSpec(name, width=width, batch_norm=True)
    K = cfg["members"]
    net, stack = init_stack(
        lambda: build_model(spec, INPUT_SHAPE, NUM_CLASSES), list(range(K)), device
    )
    gen = torch.Generator().manual_seed(1)
    x = (
        torch.randn(cfg["samples"], *INPUT_SHAPE, generator=gen)
        .to(device)
        .expand(K, -1, -1, -1, -1)
    )
    y = torch.randint(0, NUM_CLASSES, (cfg["samples"],), generator=gen).to(device).expand(K, -1)
    warm = {
        **cfg,
        "probes": 2,
        "iters": 2,
    }  # first-call costs (allocator, kernels) out of the timings
    pyhessian_loop(spec, stack.select([0]), x[:1], y[:1], warm, device)
    fast = {}
    for mode in cfg["hvp_modes"]:
        batched(net, stack, x, y, warm, 2, device, mode)
        fast[mode] = batched(net, stack, x, y, cfg, cfg["chunk"], device, mode)
    L = min(cfg.get("loop_members", K), K)
    slow = pyhessian_loop(spec, stack.select(list(range(L))), x[:L], y[:L], cfg, device)
    for key in ("trace_s", "eig_s"):  # the loop's time for all K models: L models' time x K/L
        slow[key] *= K / L
    slow["models_timed"] = L
    return {
        "model": name, "width": width, "params_per_model": num_params(stack), "members": K,
        "samples": cfg["samples"], "probes": cfg["probes"], "iters": cfg["iters"],
        "batched": fast, "loop": slow,
        "speedup_trace": {m: slow["trace_s"] / f["trace_s"] for m, f in fast.items()},
        "speedup_eig": {m: slow["eig_s"] / f["eig_s"] for m, f in fast.items()},
        "speedup_total": {m: (slow["trace_s"] + slow["eig_s"]) / (f["trace_s"] + f["eig_s"])
                          for m, f in fast.items()},
    }  # fmt: skip


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)"
    )
    parser.add_argument("--out", default="bench_hessian.json", help="where the JSON results go")
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute on a CPU")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME=W1,W2",
        help="models and widths to run instead of the preset's, e.g. resnet18=4,8,16",
    )
    parser.add_argument("--members", type=int, default=None, help="models per pack (K)")
    parser.add_argument(
        "--loop-members",
        type=int,
        default=None,
        help="time the one-at-a-time loop on this many of the K models and scale to K "
        "(every model costs the loop the same; default: all K)",
    )
    parser.add_argument(
        "--hvp-modes",
        nargs="+",
        default=["vmap"],
        choices=["vmap", "loop", "packed"],
        help="how the batched path computes its products (hessian_trace's hvp)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    cfg = dict(QUICK if args.quick else FULL)
    if args.models:
        cfg["models"] = {
            name: [int(w) for w in widths.split(",")]
            for name, widths in (m.split("=") for m in args.models)
        }
    if args.members:
        cfg["members"] = args.members
    cfg["loop_members"] = args.loop_members or cfg["members"]
    cfg["hvp_modes"] = args.hvp_modes
    results = []
    for name, widths in cfg["models"].items():
        if name not in MODELS:
            print(f"skipping {name}: not in landscape.models.MODELS")
            continue
        for width in widths:
            r = bench_one(name, width, cfg, device)
            results.append(r)
            for m, f in r["batched"].items():
                print(
                    f"{name:9s} width {width:3d} ({r['params_per_model']:>9,d} params) "
                    f"x{r['members']} hvp {m}: "
                    f"trace {f['trace_s']:.2f}s vs {r['loop']['trace_s']:.2f}s "
                    f"({r['speedup_trace'][m]:.1f}x), top eig {f['eig_s']:.2f}s vs "
                    f"{r['loop']['eig_s']:.2f}s ({r['speedup_eig'][m]:.1f}x)",
                    flush=True,
                )
    out = {"device": device_name(device), "torch": torch.__version__, "quick": args.quick,
           "config": {k: v for k, v in cfg.items() if k != "models"}, "results": results}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
