"""The flagship job's cost end to end: ``sweep=taxonomy_cifar10 metrics=taxonomy``, cell by cell.

Each representative cell (ResNet18 width x batch size, the preset's 5 seeds as one pack) runs
through the sweep's own pack code with the preset's settings (read from ``conf/``; no Ray, no
Hydra), on random CIFAR-shaped data, each stage timed apart with its peak device memory:

- ``train_epoch_s``: one epoch of the preset at full size (50,000 examples), after set-up: the
  step time measured over a short second epoch (the CUDA graph recorded in the first), times
  the steps of a real epoch, plus the per-epoch evaluation (train and test sets, eval mode)
  at its measured per-example cost;
- ``local_s``: the preset's Hessian trace and top eigenvalue (``measure_pack``), run with a
  tenth of the probes and iterations (tolerance off) and scaled to the preset's worst case
  (100 probes, 100 iterations);
- ``pairs_s``: CKA, the linear barrier and distances over all 10 seed pairs;
- ``bezier_epoch_s``: one epoch of one Bezier curve (the preset's ``bezier.max_pairs``),
  the curve step replayed from a CUDA graph, timed over a short run.

The same cells the way the original scripts work, one model at a time, for the ratio:
an eager ``nn.Module`` + ``torch.optim.SGD`` loop per seed, a PyHessian-style Hutchinson loop
(one probe, one model, double backward) and power iteration, and one curve at a time without
a CUDA graph. A cost model, t = a + FLOPs / r per stage (non-negative least squares on
relative error), is fitted to the cells and projects the whole preset (14 widths x 13 batch
sizes, 100 epochs, 50 curve epochs) in GPU-hours, both ways. With ``--concurrency``, 13
width-8 five-member packs replay their graphs one after another and on 13 streams at once.

    python benchmarks/bench_taxonomy.py --out bench_taxonomy.json            # a GPU, <= 8 min
    python benchmarks/bench_taxonomy.py --quick --out bench_taxonomy_cpu.json  # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from bench_packing import device_name, sync, timed

from landscape.data import Dataset
from landscape.functional import init_stack
from landscape.measure import MetricsSpec, base_settings, measure_pack
from landscape.metrics.bezier import CurveStep
from landscape.metrics.pairs import PairBatches
from landscape.models import build_model, model_forward_flops
from landscape.optim import MemberHypers
from landscape.train import (
    GraphedTrainStep,
    StepFn,
    autocast,
    evaluate_pack,
    new_optim_state,
    step_mode,
    train_pack,
    train_step,
)
from landscape.variant import Variant, build_spec

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ((3, 32, 32), 10)
N_TRAIN, N_TEST = 50_000, 10_000
SEEDS = 5
METRIC_SCALE = 10
# widths 2-128 against batch sizes 16, 128, 1024; the goal cells (width 8, width 64 at batch
# 128) first, the costliest last, so that a short budget still covers the fit
CELLS = ["8x128", "64x128", "8x16", "2x16", "2x128", "2x1024", "8x1024", "32x16", "32x128",
         "32x1024", "128x128", "64x16", "64x1024", "128x16", "128x1024"]  # fmt: skip  # the bench runs a tenth of the probes and power iterations


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset() -> tuple[dict, dict]:
    """(the sweep preset's variant sections, the metrics preset merged onto the metrics/base
    config node, every metric's defaults switched off)."""
    sweep = yaml.safe_load((ROOT / "conf/sweep/taxonomy_cifar10.yaml").read_text())
    base = base_settings()
    tax = yaml.safe_load((ROOT / "conf/metrics/taxonomy.yaml").read_text())
    tax.pop("defaults", None)
    return sweep, _merge(base, tax)


def cell_variants(sweep: dict, width: int, batch: int, epochs: int) -> list[Variant]:
    axes = sweep["sweep"]["axes"]
    return [
        Variant.from_dict(
            {
                "model": {"name": "resnet18", **sweep["model"], "width": width},
                "data": {"name": "cifar10", **sweep["data"]},
                "optim": {"name": "sgd", **sweep["optim"], "batch_size": batch},
                "train": {**sweep["train"], "epochs": epochs},
                "seed": s,
            }
        )
        for s in axes["seed"][:SEEDS]
    ]


def fake_cifar(n_train: int, n_test: int, device: torch.device) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(
        "cifar10",
        torch.randn(n_train, 3, 32, 32, generator=g).to(device),
        torch.randint(10, (n_train,), generator=g).to(device),
        torch.randn(n_test, 3, 32, 32, generator=g).to(device),
        torch.randint(10, (n_test,), generator=g).to(device),
        10,
    )


class Stage:
    """Wall time (device synchronised) and peak device memory of a block."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.peak_gb = device, 0.0, float("nan")

    def __enter__(self) -> Stage:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0
        if self.device.type == "cuda":
            self.peak_gb = torch.cuda.max_memory_allocated(self.device) / 2**30


def measure_cell(args, sweep: dict, metrics: dict, width: int, batch: int) -> dict:
    device = torch.device(args.device)
    spe = args.steps if args.steps else (8 if width * width * batch >= 64 * 64 * 128 else 24)
    variants = cell_variants(sweep, width, batch, epochs=2)
    v0 = variants[0]
    flops = model_forward_flops(v0.model, *CIFAR)  # per example, forward
    row: dict = {"width": width, "batch": batch, "members": len(variants)}
    row["step_mode"] = step_mode(v0, *CIFAR, device)
    n_train, n_test = spe * batch, args.n_test
    data = fake_cifar(n_train, n_test, device)

    # training: epoch 1 records the graph, epoch 2 is timed
    marks: list[float] = []

    def on_epoch(epoch: int, _metrics) -> None:
        sync(device)
        marks.append(time.perf_counter())

    with Stage(device) as train:
        result = train_pack(variants, data, device, on_epoch=on_epoch)
    with Stage(device) as ev:
        evaluate_pack(result.pack.net, result.pack.final, result.pack.data, v0.train.precision)
    eval_per_example = ev.seconds / (n_train + n_test)
    step_s = max(marks[1] - marks[0] - ev.seconds, 1e-9) / spe
    full_spe = N_TRAIN // batch
    row.update(
        step_ms=round(1e3 * step_s, 3),
        setup_and_two_epochs_s=round(train.seconds, 2),
        train_epoch_s=round(full_spe * step_s + eval_per_example * (N_TRAIN + N_TEST), 3),
        train_peak_gb=round(train.peak_gb, 2),
        train_tflops=round(3 * flops * batch * len(variants) / step_s / 1e12, 2),
    )

    # local metrics at a tenth of the work, scaled
    m = _merge(metrics, {})
    m["hessian_trace"] = {**m["hessian_trace"], "n_probes": m["hessian_trace"]["n_probes"] // METRIC_SCALE, "tol": 0.0, "min_probes": 1}  # fmt: skip
    m["hessian_eigen"] = {**m["hessian_eigen"], "max_iter": m["hessian_eigen"]["max_iter"] // METRIC_SCALE, "tol": 0.0}  # fmt: skip
    for name in ("distance", "cka", "barrier", "bezier"):
        m[name] = {**m[name], "enabled": False}
    local_spec = build_spec(MetricsSpec, m, "metrics")
    pack = result.pack
    with Stage(device) as local:
        measured = measure_pack(pack, local_spec)
    errors = [e for e in measured.columns.get("metric_errors", []) if e]
    row.update(
        local_s=round(local.seconds * METRIC_SCALE, 2),
        local_peak_gb=round(local.peak_gb, 2),
        local_errors=errors[0] if errors else None,
    )

    # pair metrics: CKA, barrier, distance over every seed pair. The preset recomputes
    # BatchNorm statistics at every path point from the whole training set (m batches); the
    # bench's small data set holds a few batches, so the pass runs with m0 and 2 m0 batches
    # and the time is extrapolated linearly in m (the recomputation is m forward passes).
    bn = metrics["batch_norm"]
    m0 = max(1, min(bn["n_batches"], n_train // bn["batch_size"] // 2))
    times = []
    for m in (m0, 2 * m0):
        p = _merge(metrics, {"batch_norm": {"n_batches": m}})
        for name in ("hessian_trace", "hessian_eigen", "bezier"):
            p[name] = {**p[name], "enabled": False}
        pair_spec = build_spec(MetricsSpec, p, "metrics")
        with Stage(device) as pairs:
            out = measure_pack(pack, pair_spec)
        times.append(pairs.seconds)
    per_batch = max(times[1] - times[0], 0.0) / m0
    row.update(
        pairs_s=round(times[0] + per_batch * (bn["n_batches"] - m0), 2),
        pairs_measured_s=[round(t, 2) for t in times],
        pairs_bn_batches=[m0, 2 * m0, bn["n_batches"]],
        pairs_peak_gb=round(pairs.peak_gb, 2),
        pairs=len(out.tables.get("pairs", [])),
        pairs_errors=next((e for e in out.columns.get("metric_errors", []) if e), None),
    )

    # Bezier: one curve (bezier.max_pairs) per cell, its step timed after the graph is recorded
    bz = metrics["bezier"]
    curves = bz["max_pairs"] or math.comb(SEEDS, 2)
    a, b = pack.final.select([0] * curves), pack.final.select([1] * curves)
    sel = torch.zeros(curves, dtype=torch.long, device=device)
    batches = PairBatches(pack.data, sel, sel + 1, bz["batch_size"])
    row["bezier_curves"] = curves
    for label, graphs in (("bezier", True), ("bezier_eager", False)):
        if label == "bezier_eager" and not args.baselines:
            continue
        control = {n: (a.params[n] + b.params[n]) / 2 for n in a.params}
        hypers = MemberHypers(*(torch.full((curves,), v, device=device) for v in (bz["lr"], bz["momentum"], 0.0)))  # fmt: skip
        step = CurveStep(pack.net, control, a, b, hypers, weight_decay=bz["weight_decay"], precision=v0.train.precision, cuda_graphs=graphs)  # fmt: skip
        g = torch.Generator().manual_seed(0)

        def curve_step(step=step, g=g, lr=hypers.lr) -> None:
            x, y = batches(g)
            step(x, y, torch.rand(curves, generator=g).to(device), lr)

        for _ in range(5):  # warm-up, then the graph is recorded
            curve_step()
        with Stage(device) as st:
            for _ in range(args.bezier_steps):
                curve_step()
        per_step = st.seconds / args.bezier_steps
        row[f"{label}_step_ms"] = round(1e3 * per_step, 3)
        row[f"{label}_epoch_s"] = round(per_step * (N_TRAIN // bz["batch_size"]), 2)
        row[f"{label}_peak_gb"] = round(st.peak_gb, 2)

    if args.baselines:
        row.update(baselines(args, v0, device, batch, metrics["hessian_trace"]["n_samples"]))
    del result, pack, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def baselines(args, v0: Variant, device: torch.device, batch: int, n_samples: int) -> dict:
    """One model at a time, as the original scripts: an eager nn.Module step, a PyHessian-style
    Hessian-vector product (one probe, double backward), per call."""
    model = build_model(v0.model, *CIFAR).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *CIFAR[0], device=device)
    y = torch.randint(10, (batch,), device=device)

    def step() -> None:
        with autocast(device, v0.train.precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    hx = torch.randn(n_samples, *CIFAR[0], device=device)
    hy = torch.randint(10, (hx.shape[0],), device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def hvp() -> None:
        loss = F.cross_entropy(model(hx), hy)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randint_like(p, 2) * 2 - 1 for p in params]
        torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v)), params)

    out = {}
    for label, fn, reps, train in (
        ("seq_step_ms", step, args.seq_steps, True),
        ("pyhessian_hvp_ms", hvp, 5, False),
    ):
        model.train(train)
        out[label] = round(1e3 * timed(fn, reps, 3, device), 3)
    return out


def fit_stage(rows: list[dict], key: str, flops_of) -> tuple[float, float]:
    """t = a + F / r, non-negative, least squares on relative error: (a seconds, r FLOP/s)."""
    from scipy.optimize import nnls

    pts = [(flops_of(r), r[key]) for r in rows if r.get(key) is not None and r[key] > 0]
    if len(pts) < 2:
        return float("nan"), float("nan")
    A = np.array([[1.0 / t, f / t] for f, t in pts])
    coef, _ = nnls(A, np.ones(len(pts)))
    a, inv_r = coef
    return float(a), float(1 / inv_r) if inv_r > 0 else float("inf")


def predict(model: tuple[float, float], f: float) -> float:
    a, r = model
    return a + (f / r if math.isfinite(r) else 0.0)


def project(rows: list[dict], sweep: dict, metrics: dict) -> dict:
    """GPU-hours of the whole preset, ours and the original way, from per-stage fits."""
    axes = sweep["sweep"]["axes"]
    widths, batches = axes["model.width"], axes["optim.batch_size"]
    epochs, bz = sweep["train"]["epochs"], metrics["bezier"]
    n_curves = bz["max_pairs"] or math.comb(SEEDS, 2)
    flops = {
        w: model_forward_flops(build_spec_model(sweep, w), *CIFAR) for w in set(widths) | {r["width"] for r in rows}
    }  # fmt: skip

    def per_step(r):
        return flops[r["width"]] * r["batch"] * SEEDS

    def per_model(r):
        return flops[r["width"]]

    fits = {
        "step": fit_stage([{**r, "t": r["step_ms"] / 1e3} for r in rows], "t", per_step),
        "epoch_eval": fit_stage(
            [{**r, "t": r["train_epoch_s"] - r["step_ms"] / 1e3 * (N_TRAIN // r["batch"])} for r in rows],
            "t", per_model,
        ),
        "local": fit_stage(rows, "local_s", per_model),
        "pairs": fit_stage(rows, "pairs_s", per_model),
        "bezier_step": fit_stage(
            [{**r, "t": r["bezier_step_ms"] / 1e3} for r in rows], "t", per_model
        ),
    }  # fmt: skip
    have_base = all("seq_step_ms" in r for r in rows)
    if have_base:
        fits["seq_step"] = fit_stage([{**r, "t": r["seq_step_ms"] / 1e3} for r in rows], "t", lambda r: flops[r["width"]] * r["batch"])  # fmt: skip
        fits["pyhessian_hvp"] = fit_stage([{**r, "t": r["pyhessian_hvp_ms"] / 1e3} for r in rows], "t", per_model)  # fmt: skip
        fits["bezier_eager_step"] = fit_stage([{**r, "t": r["bezier_eager_step_ms"] / 1e3} for r in rows], "t", per_model)  # fmt: skip
    ours = original = 0.0
    stages = dict.fromkeys(("train", "local", "pairs", "bezier"), 0.0)
    bz_steps = bz["epochs"] * (N_TRAIN // bz["batch_size"])
    tr, ei = metrics["hessian_trace"], metrics["hessian_eigen"]
    hvps_per_model = tr["n_probes"] + ei["max_iter"]
    for w in widths:
        for b in batches:
            r = {"width": w, "batch": b}
            step = predict(fits["step"], per_step(r))
            eval_s = predict(fits["epoch_eval"], per_model(r))
            cell = {
                "train": epochs * ((N_TRAIN // b) * step + eval_s),
                "local": predict(fits["local"], per_model(r)),
                "pairs": predict(fits["pairs"], per_model(r)),
                "bezier": n_curves * bz_steps * predict(fits["bezier_step"], per_model(r)),
            }
            for k, v in cell.items():
                stages[k] += v
            ours += sum(cell.values())
            if have_base:
                original += (
                    SEEDS * epochs * ((N_TRAIN // b) * predict(fits["seq_step"], flops[w] * b) + eval_s)
                    + SEEDS * hvps_per_model * predict(fits["pyhessian_hvp"], per_model(r))
                    + cell["pairs"]
                    + n_curves * bz_steps * predict(fits["bezier_eager_step"], per_model(r))
                )  # fmt: skip
    out = {
        "cells": len(widths) * len(batches),
        "fits": {k: {"a_s": v[0], "rate_flop_per_s": v[1]} for k, v in fits.items()},
        "gpu_hours": round(ours / 3600, 2),
        "gpu_hours_by_stage": {k: round(v / 3600, 2) for k, v in stages.items()},
    }
    if have_base:
        out["original_gpu_hours"] = round(original / 3600, 2)
        out["ratio"] = round(original / ours, 2)
    return out


def build_spec_model(sweep: dict, width: int):
    return cell_variants(sweep, width, 16, 1)[0].model


def concurrency(args, sweep: dict) -> dict:
    """13 five-member width-8 packs (the batch sizes of one width, here all at 128): graph
    replays one after another, against the same replays spread over 13 CUDA streams."""
    device = torch.device(args.device)
    steps = []
    for i in range(13):
        variants = cell_variants(sweep, 8, 128, 1)
        variants = [dataclasses.replace(v, seed=v.seed + 10 * i) for v in variants]
        spec = variants[0].model
        net, stack = init_stack(lambda spec=spec: build_model(spec, *CIFAR), [v.seed for v in variants], device)  # fmt: skip
        opt = new_optim_state([v.optim for v in variants], stack)
        mode = step_mode(variants[0], *CIFAR, device)
        fn = StepFn(net, mode=mode, channels_last=mode != "vmap")
        x = torch.randn(len(variants), 128, *CIFAR[0], device=device)
        y = torch.randint(10, (len(variants), 128), device=device)
        lr = torch.full((len(variants),), 0.1, device=device)
        g = GraphedTrainStep(fn, stack, opt, "bf16") if device.type == "cuda" else None
        steps.append((g or (lambda x, y, lr, fn=fn, stack=stack, opt=opt: train_step(fn, stack, opt, x, y, lr, "bf16")), x, y, lr))  # fmt: skip
    for s, x, y, lr in steps:
        for _ in range(5):
            s(x, y, lr)
    sync(device)
    reps = args.concurrency_steps

    def one_pack() -> float:
        s, x, y, lr = steps[0]
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            s(x, y, lr)
        sync(device)
        return reps * SEEDS / (time.perf_counter() - t0)

    def all_packs(streams: list | None) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            for i, (s, x, y, lr) in enumerate(steps):
                ctx = torch.cuda.stream(streams[i]) if streams else contextlib.nullcontext()
                with ctx:
                    s(x, y, lr)
        sync(device)
        return reps * SEEDS * len(steps) / (time.perf_counter() - t0)

    streams = [torch.cuda.Stream(device) for _ in steps] if device.type == "cuda" else None
    if streams:
        main = torch.cuda.current_stream(device)
        for st in streams:
            st.wait_stream(main)
    single = one_pack()
    serial = all_packs(None)
    parallel = all_packs(streams)
    return {
        "packs": len(steps),
        "one_pack_model_steps_per_s": round(single, 1),
        "serial_model_steps_per_s": round(serial, 1),
        "streams_model_steps_per_s": round(parallel, 1),
        "streams_over_one_pack": round(parallel / single, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--cells",
        nargs="*",
        default=CELLS,
        help="WxB cells (width x batch size), measured in this order until --budget-s",
    )
    p.add_argument(
        "--steps", type=int, default=0, help="training steps per timed epoch (0: by size)"
    )
    p.add_argument("--n-test", type=int, default=2048)
    p.add_argument("--bezier-steps", type=int, default=20)
    p.add_argument("--seq-steps", type=int, default=10)
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--concurrency", action="store_true")
    p.add_argument("--concurrency-steps", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=330, help="stop starting cells after this")
    p.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="cap this process's device memory (80: plan for an 80 GB H100 on a larger card)",
    )
    p.add_argument("--quick", action="store_true", help="CPU smoke run: two tiny cells")
    p.add_argument("--out", default="bench_taxonomy.json")
    args = p.parse_args()
    if args.quick:
        args.cells, args.steps, args.n_test = ["1x16", "2x32"], 3, 64
        args.bezier_steps, args.seq_steps, args.concurrency_steps = 2, 2, 2
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.memory_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gb * 2**30 / total), device)
    sweep, metrics = preset()
    if args.quick:  # tiny sample sizes: the smoke run checks the plumbing, not the numbers
        for k in ("hessian_trace", "hessian_eigen"):
            metrics[k]["n_samples"] = 32
        metrics["cka"]["n_inputs"] = 64
        metrics["cka"]["unbiased_batch_size"] = 32
        metrics["barrier"]["n_samples"] = 64
        metrics["batch_norm"] = {**metrics["batch_norm"], "n_batches": 1, "batch_size": 16}
    cells = [tuple(int(v) for v in c.split("x")) for c in args.cells]
    t0, rows = time.perf_counter(), []
    for w, b in cells:
        if time.perf_counter() - t0 > args.budget_s:
            rows.append({"width": w, "batch": b, "status": "skipped (time budget)"})
            continue
        try:
            rows.append({**measure_cell(args, sweep, metrics, w, b), "status": "ok"})
        except torch.OutOfMemoryError as exc:
            rows.append({"width": w, "batch": b, "status": f"out of memory: {str(exc)[:120]}"})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if r.get("status") == "ok"]
    name = device_name(device)
    report = {
        "benchmark": "taxonomy",
        "device": name,
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "preset": {
            "epochs": sweep["train"]["epochs"],
            "metrics": {
                k: metrics[k]
                for k in ("hessian_trace", "hessian_eigen", "cka", "barrier", "bezier")
            },
        },  # fmt: skip
        "rows": rows,
        "projection": project(ok, sweep, metrics) if len(ok) >= 2 else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.concurrency:
        report["concurrency"] = concurrency(args, sweep)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    proj = report["projection"] or {}
    print(
        f"{name}: projected {proj.get('gpu_hours')} h ({proj.get('gpu_hours_by_stage')}), "
        f"original way {proj.get('original_gpu_hours')} h, ratio {proj.get('ratio')}; "
        f"concurrency {report.get('concurrency')}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
