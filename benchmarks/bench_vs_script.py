"""The project against the script a researcher would write instead, on the same sweep.

The script (``plain`` below, run as ``python benchmarks/bench_vs_script.py plain ...``) is what
a competent researcher writes in an afternoon for the demo's question: for every cell of a
width x batch-size grid and every seed, train an ``nn.Module`` MLP on scikit-learn's digits with
``torch.optim.SGD`` (data as tensors, index-gathered batches, no DataLoader), evaluate the
training and test sets after each epoch, then measure each model the usual way (PyHessian-style
Hutchinson trace and power iteration by double backward, MLI from the initialisation) and each
seed pair of a cell (L2 distance, linear CKA on mixed-up training inputs, the linear barrier,
one quadratic Bezier curve per pair trained alone), and write the rows with pandas. It uses no
code of the project: the model, the data split, the seeding (``torch.manual_seed(seed)`` before
building the model, a ``torch.Generator`` seeded by ``seed`` for the epoch shuffles) and every
metric are written out here, with the demo preset's settings (``conf/metrics/demo.yaml``: 30
probes on 256 samples, 50 power iterations, 512 CKA inputs, 11 barrier and MLI points, a
10-epoch curve with Garipov et al.'s penalty and schedule). So its training follows the same
arithmetic as the project's and most test accuracies agree to 4 decimals (rounding differences
of a packed step can flip a few); the comparison in the JSON says how many.

The harness runs each job as a cold process (imports, Ray and the report included where the
project does them) in alternating rounds, script first then project, and reports medians and
the ratio project / script per job:

- ``demo``: the demo as shipped (``landscape-sweep``: 40 variants, 30 epochs, the report)
  against the script at 30 epochs with three heatmaps drawn;
- ``n8``, ``n40``, ``n160``: 8 variants (2 widths x 2 batch sizes x 2 seeds), the demo's 40, and
  160 (the demo's cells with 8 seeds), 2 epochs, no report.

    python benchmarks/bench_vs_script.py --out benchmarks/results/bench_vs_script.json
    python benchmarks/bench_vs_script.py --jobs n8 --rounds 1      # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the demo's grid (conf/sweep/demo.yaml) and optimiser
DEMO_WIDTHS = (8, 16, 32, 64)
DEMO_BATCHES = (16, 32, 64, 128, 256)
LR, MOMENTUM = 0.02, 0.9

JOBS = {
    # name: (widths, batch sizes, seeds, epochs, report)
    "demo": (DEMO_WIDTHS, DEMO_BATCHES, (0, 1), 30, True),
    "n8": ((8, 16), (16, 32), (0, 1), 2, False),
    "n40": (DEMO_WIDTHS, DEMO_BATCHES, (0, 1), 2, False),
    "n160": (DEMO_WIDTHS, DEMO_BATCHES, tuple(range(8)), 2, False),
}


# ---------------------------------------------------------------------------------------------
# The plain script: everything below until the harness is what a researcher would write.
# ---------------------------------------------------------------------------------------------


def plain(widths, batch_sizes, seeds, epochs, out: Path, plot: bool) -> None:
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.func import functional_call

    # data: the bundled digits in [0, 1], a seeded split of 450 test images, standardised
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x_te, y_te, x_tr, y_tr = x[perm[:450]], y[perm[:450]], x[perm[450:]], y[perm[450:]]
    std, mean = torch.std_mean(x_tr, dim=[0, 2, 3])
    std = std.clamp_min(1e-6)
    x_tr = (x_tr - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    x_te = (x_te - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    n = len(y_tr)

    class MLP(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
            )
            self.head = nn.Linear(width, 10)

        def forward(self, x, features=False):
            h = self.body(x)
            return h if features else self.head(h)

    @torch.no_grad()
    def evaluate(model, xs, ys):
        model.eval()
        logits = model(xs)
        return F.cross_entropy(logits, ys).item(), (logits.argmax(1) == ys).float().mean().item()

    def train(width, batch, seed):
        torch.manual_seed(seed)
        model = MLP(width)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        g = torch.Generator().manual_seed(seed)
        curve = []
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=g)
            model.train()
            for b in range(n // batch):  # the last incomplete batch is dropped
                idx = order[b * batch : (b + 1) * batch]
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            curve.append((epoch, *evaluate(model, x_tr, y_tr), *evaluate(model, x_te, y_te)))
        return model, init, curve

    def params_of(model):
        return [p for p in model.parameters() if p.requires_grad]

    def hvp_setup(model, xs, ys):
        model.eval()
        ps = params_of(model)
        loss = F.cross_entropy(model(xs), ys)
        grads = torch.autograd.grad(loss, ps, create_graph=True)
        return ps, grads

    def hvp(ps, grads, v):
        return torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True)

    def dot(a, b):
        return sum((u * w).sum() for u, w in zip(a, b, strict=True))

    def hessian_trace(model, n_probes=30, tol=1e-3, min_probes=10):
        ps, grads = hvp_setup(model, x_tr[:256], y_tr[:256])
        values = []
        for i in range(n_probes):
            v = [torch.randint_like(p, 2) * 2 - 1 for p in ps]  # Rademacher
            values.append(dot(v, hvp(ps, grads, v)).item())
            if i + 1 >= min_probes:
                prev = np.mean(values[:-1])
                if abs(np.mean(values) - prev) / (abs(prev) + 1e-6) < tol:
                    break
        return float(np.mean(values))

    def top_eigenvalue(model, max_iter=50, tol=1e-3):
        ps, grads = hvp_setup(model, x_tr[:256], y_tr[:256])
        v = [torch.randn_like(p) for p in ps]
        norm = dot(v, v).sqrt()
        v = [u / norm for u in v]
        eig = None
        for _ in range(max_iter):
            hv = hvp(ps, grads, v)
            new = dot(v, hv).item()
            norm = dot(hv, hv).sqrt()
            v = [u / (norm + 1e-12) for u in hv]
            if eig is not None and abs(new - eig) / (abs(eig) + 1e-6) < tol:
                eig = new
                break
            eig = new
        return eig

    def loss_at(model, state, xs, ys):
        with torch.no_grad():
            logits = functional_call(model, state, (xs,))
            return F.cross_entropy(logits, ys).item(), (
                logits.argmax(1) != ys
            ).float().mean().item()

    def mli(model, init, n_alphas=11):
        final = {k: v.detach() for k, v in model.state_dict().items()}
        losses = [
            loss_at(
                model, {k: (1 - a) * init[k] + a * final[k] for k in final}, x_tr[:512], y_tr[:512]
            )[0]
            for a in np.linspace(0, 1, n_alphas)
        ]
        bumps = np.diff(losses)
        return bool((bumps <= 1e-4).all()), float(max(0.0, bumps.max()))

    def flat(model):
        return torch.cat([p.detach().flatten() for p in params_of(model)])

    def cka_linear(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return ((b.T @ a).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm())).item()

    def hsic1(gram_a, gram_b):  # Song et al.'s unbiased HSIC; Nguyen et al. sum it over batches
        m = gram_a.shape[0]
        ka, kb = gram_a.clone().fill_diagonal_(0), gram_b.clone().fill_diagonal_(0)
        s = (ka @ kb).trace() + ka.sum() * kb.sum() / ((m - 1) * (m - 2))
        return (s - 2 * (ka.sum(0) @ kb.sum(0)) / (m - 2)) / (m * (m - 3))

    def cka_unbiased(a, b, batch=256):
        xy = xx = yy = 0.0
        for s in range(0, len(a), batch):
            ka, kb = a[s : s + batch] @ a[s : s + batch].T, b[s : s + batch] @ b[s : s + batch].T
            xy, xx, yy = xy + hsic1(ka, kb), xx + hsic1(ka, ka), yy + hsic1(kb, kb)
        return (xy / (xx * yy).sqrt()).item()

    def mixup_inputs(seed, n_inputs=512, batch=128):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:n_inputs]
        xs = x_tr[idx]
        beta = torch.distributions.Beta(16.0, 16.0)
        out = []
        for s in range(0, n_inputs, batch):
            part = xs[s : s + batch]
            lam = beta.sample()
            out.append(lam * part + (1 - lam) * part[torch.randperm(len(part), generator=g)])
        return torch.cat(out)

    def cka(ma, mb, xs):
        ma.eval(), mb.eval()
        with torch.no_grad():
            la, lb, fa, fb = ma(xs), mb(xs), ma(xs, features=True), mb(xs, features=True)
        reps = {"logits": (la, lb), "softmax": (la.softmax(1), lb.softmax(1)), "features": (fa, fb)}
        out = {f"cka_linear_{k}": cka_linear(a, b) for k, (a, b) in reps.items()}
        return out | {f"cka_unbiased_{k}": cka_unbiased(a, b) for k, (a, b) in reps.items()}

    def barrier(ma, mb, n_alphas=11):
        sa, sb = ma.state_dict(), mb.state_dict()
        xs, ys = x_tr[:1024], y_tr[:1024]
        alphas = np.linspace(0, 1, n_alphas)
        losses = [
            loss_at(ma, {k: (1 - a) * sa[k] + a * sb[k] for k in sa}, xs, ys)[0] for a in alphas
        ]
        return float(
            max(loss - ((1 - a) * losses[0] + a * losses[-1]) for a, loss in zip(alphas, losses))
        )

    def bezier(ma, mb, seed, epochs=10, batch=64, wd=5e-4):
        # Garipov et al.'s curve training as Yang et al. ran it: w_c from the midpoint, SGD lr
        # 0.01 momentum 0.9, the penalty 0.5 wd ||phi(t)||^2, lr constant to 50% of the steps,
        # then linear to 1% at 90%
        wa = {k: v.detach() for k, v in ma.named_parameters()}
        wb = {k: v.detach() for k, v in mb.named_parameters()}
        control = {k: ((wa[k] + wb[k]) / 2).clone().requires_grad_(True) for k in wa}
        opt = torch.optim.SGD(control.values(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(seed)

        def point(t):
            return {
                k: (1 - t) ** 2 * wa[k] + 2 * t * (1 - t) * control[k] + t**2 * wb[k] for k in wa
            }

        ma.train()
        total, step = epochs * (n // batch), 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            for b in range(n // batch):
                idx = order[b * batch : (b + 1) * batch]
                t = torch.rand((), generator=g)
                frac = step / total
                factor = 1.0 if frac <= 0.5 else max(0.01, 1.0 - 0.99 * (frac - 0.5) / 0.4)
                for group in opt.param_groups:
                    group["lr"] = 0.01 * factor
                phi = point(t)
                loss = F.cross_entropy(functional_call(ma, phi, (x_tr[idx],)), y_tr[idx])
                loss = loss + 0.5 * wd * sum(v.square().sum() for v in phi.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        ts = (0.0, 0.25, 0.5, 0.75, 1.0)
        errors = [100 * loss_at(ma, point(t), x_tr[:1024], y_tr[:1024])[1] for t in ts]
        ends = (errors[0] + errors[-1]) / 2
        u = int(np.argmax([abs(e - ends) for e in errors]))
        return ends - errors[u]

    runs, curves, pairs = [], [], []
    for width, batch in itertools.product(widths, batch_sizes):
        models = {}
        for seed in seeds:
            t0 = time.perf_counter()
            model, init, curve = train(width, batch, seed)
            models[seed] = model
            monotonic, bump = mli(model, init)
            _, tr_loss, tr_acc, te_loss, te_acc = curve[-1]
            runs.append(
                dict(width=width, batch_size=batch, seed=seed, train_loss=tr_loss, train_acc=tr_acc,
                     test_loss=te_loss, test_acc=te_acc, hessian_trace=hessian_trace(model),
                     hessian_top_eig=top_eigenvalue(model), mli_monotonic=monotonic, mli_bump=bump,
                     wall_time_s=time.perf_counter() - t0)
            )  # fmt: skip
            curves += [dict(width=width, batch_size=batch, seed=seed, epoch=c[0], train_loss=c[1],
                            train_acc=c[2], test_loss=c[3], test_acc=c[4]) for c in curve]  # fmt: skip
        xs = mixup_inputs(0)
        for sa, sb in list(itertools.combinations(seeds, 2))[:10]:
            ma, mb = models[sa], models[sb]
            pairs.append(
                dict(width=width, batch_size=batch, seed_a=sa, seed_b=sb,
                     distance=(flat(ma) - flat(mb)).norm().item(), **cka(ma, mb, xs),
                     barrier=barrier(ma, mb), mc=bezier(ma, mb, seed=sa * 1000 + sb))
            )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(runs).to_parquet(out / "runs.parquet")
    pd.DataFrame(curves).to_parquet(out / "curves.parquet")
    pd.DataFrame(pairs).to_parquet(out / "pairs.parquet")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns

        tables = {"runs": pd.DataFrame(runs), "pairs": pd.DataFrame(pairs)}
        for table, column in (("runs", "hessian_trace"), ("runs", "test_acc"), ("pairs", "mc")):
            grid = tables[table].pivot_table(index="width", columns="batch_size", values=column)
            fig, ax = plt.subplots(figsize=(5, 4))
            sns.heatmap(grid, annot=True, fmt=".3g", ax=ax)
            ax.set_title(column)
            fig.savefig(out / f"{column}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------


def _axis(values) -> str:
    return ",".join(str(v) for v in values)


def script_command(job: str, out: Path) -> list[str]:
    widths, batches, seeds, epochs, report = JOBS[job]
    cmd = [sys.executable, str(Path(__file__).resolve()), "plain", "--out", str(out)]
    cmd += ["--widths", _axis(widths), "--batch-sizes", _axis(batches), "--seeds", _axis(seeds)]
    cmd += ["--epochs", str(epochs)] + (["--plot"] if report else [])
    return cmd


def project_command(job: str, out: Path) -> list[str]:
    sweep = (
        shutil.which("landscape-sweep", path=str(Path(sys.executable).parent)) or "landscape-sweep"
    )
    cmd = [sweep, f"out_dir={out}", "--quiet"]
    if job == "demo":
        return cmd  # the demo as shipped
    widths, batches, seeds, epochs, _ = JOBS[job]
    return cmd + [
        f"sweep.name={job}",
        f"model.width={_axis(widths)}",
        f"optim.batch_size={_axis(batches)}",
        f"seed={_axis(seeds)}",
        f"train.epochs={epochs}",
        "--no-report",
    ]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def agreement(script_out: Path, project_out: Path, job: str) -> dict:
    """How far the two agree: test accuracies equal to 4 decimals, medians of distance and CKA."""
    import pandas as pd

    name = "demo" if job == "demo" else job
    ours = pd.read_parquet(project_out / name / "runs")
    ours = ours[ours.status == "ok"].rename(
        columns={"model.width": "width", "optim.batch_size": "batch_size"}
    )
    theirs = pd.read_parquet(script_out / "runs.parquet")
    both = theirs.merge(ours, on=["width", "batch_size", "seed"], suffixes=("_script", ""))
    equal = int(((both.test_acc_script - both.test_acc).abs() < 5e-5).sum())
    pairs_ours = pd.read_parquet(project_out / name / "pairs")
    pairs_theirs = pd.read_parquet(script_out / "pairs.parquet")
    return {
        "variants": int(len(theirs)),
        "test_acc_equal_4dp": equal,
        "median_distance": [
            float(pairs_theirs.distance.median()),
            float(pairs_ours.l2_distance.median()),
        ],
        "median_cka_linear_softmax": [
            float(pairs_theirs.cka_linear_softmax.median()),
            float(pairs_ours.cka_linear_softmax.median()),
        ],
        "median_hessian_trace": [
            float(theirs.hessian_trace.median()),
            float(ours.hessian_trace.median()),
        ],
    }


def bench(jobs: list[str], rounds: int) -> dict:
    from bench_sweep import cpu_name  # run as a script: benchmarks/ is on sys.path

    out: dict = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": rounds,
        "jobs": {},
    }
    import torch

    out["torch"] = torch.__version__
    for job in jobs:
        times: dict[str, list[float]] = {"script": [], "project": []}
        check = None
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                script_out, project_out = Path(tmp) / "script", Path(tmp) / "project"
                times["script"].append(timed(script_command(job, script_out)))
                times["project"].append(timed(project_command(job, project_out)))
                if r == 0:
                    check = agreement(script_out, project_out, job)
            print(f"{job} round {r + 1}: script {times['script'][-1]:.1f} s, "
                  f"project {times['project'][-1]:.1f} s", file=sys.stderr)  # fmt: skip
        script, project = statistics.median(times["script"]), statistics.median(times["project"])
        out["jobs"][job] = {
            "script_s": times["script"],
            "project_s": times["project"],
            "script_median_s": script,
            "project_median_s": project,
            "ratio_project_over_script": project / script,
            "agreement": check,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("plain", help="the plain script itself")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--widths", default=_axis(DEMO_WIDTHS))
    p.add_argument("--batch-sizes", default=_axis(DEMO_BATCHES))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--plot", action="store_true")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "plain":
        ints = [[int(v) for v in s.split(",")] for s in (args.widths, args.batch_sizes, args.seeds)]
        plain(*ints, args.epochs, args.out, args.plot)
        return
    result = bench(args.jobs, args.rounds)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
