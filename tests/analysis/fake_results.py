"""A generated results directory with known phases planted in known cells.

Written the way the sweep driver writes one (``manifest.json`` and one directory of
Parquet parts per table, plus a dot-named temporary part that readers must skip), so the
analysis can be tested without training anything.

The planted grid (load ``model.width`` upwards, temperature ``optim.batch_size`` across)::

    width 32:  IV-B  IV-B  IV-A  III
    width 16:  IV-B  IV-A  IV-A  III
    width  8:  III   III   III   II
    width  4:  I     I     II    II
               16    64    256   1024

Phase signatures follow Yang et al. (2021): I/II high training loss and large Hessian, III/IV
small loss and small Hessian; mc < 0 in I and III, > 0 in II, ~0 in IV; CKA high only in
IV-B. Seed noise is small against the planted gaps, so the classifier must recover the map.

The tables measured during training (:data:`TRAINING_TABLES`) are written only when named
in ``tables``; with ``trajectory`` the ``stiffness`` table also gets matrices at scheduled
steps and rows by input distance, and with ``path`` the ``surfaces`` table gets the loss on
the PCA plane (kind ``pca``), as the sweep writes them. They draw on their own random
stream, so the other tables are the same with or without them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from landscape.measure import MetricsSpec
from landscape.metrics.registry import metric_catalogue, metrics, training_catalogue
from landscape.variant import build_spec

WIDTHS = (4, 8, 16, 32)
BATCH_SIZES = (16, 64, 256, 1024)
_MAP = [  # rows: widths ascending; columns: batch sizes ascending
    ["I", "I", "II", "II"],
    ["III", "III", "III", "II"],
    ["IV-B", "IV-A", "IV-A", "III"],
    ["IV-B", "IV-B", "IV-A", "III"],
]
PLANTED = {(w, b): _MAP[i][j] for i, w in enumerate(WIDTHS) for j, b in enumerate(BATCH_SIZES)}

# Per phase: train loss, train acc, test acc, Hessian trace, mc (training-error percentage
# points, as the store keeps it), CKA (softmax).
SIGNATURE = {
    "I": (1.3, 0.55, 0.40, 900.0, -30.0, 0.35),
    "II": (1.1, 0.62, 0.50, 700.0, 20.0, 0.45),
    "III": (0.03, 0.99, 0.80, 25.0, -20.0, 0.50),
    "IV-A": (0.01, 1.00, 0.88, 15.0, 0.0, 0.60),
    "IV-B": (0.005, 1.00, 0.94, 8.0, 0.0, 0.95),
}
# The parts of landscape.catalogue's catalogue the analysis reads, as a digits sweep writes them;
# its columns (how the report draws each) come from where landscape declares them, with every
# metric on.
_EVERY_METRIC = build_spec(
    MetricsSpec, {m.name: {"enabled": True} for m in metrics() if m.family != "setting"}, "metrics"
)
CATALOGUE = {
    "version": 2,
    "data": {
        "digits": {
            "source": "scikit-learn's bundled 8x8 handwritten digits",
            "loader": "digits",
            "format": "bundled",
            "input_shape": [1, 8, 8],
            "classes": 10,
            "train_size": 1347,
            "test_size": 450,
        }
    },
    "knobs": {
        "launch": ["data.root", "data.download", "train.cuda_graphs", "train.pack_step"],
        "added": {"data.sample_seed": None},
    },
    "training": training_catalogue(),
    "metrics": metric_catalogue(_EVERY_METRIC),
}
ALL_TABLES = ("runs", "curves", "pairs", "surfaces", "spectra", "stiffness", "lr_range")
TRAINING_TABLES = ("trajectory", "path", "lca", "params", "reparam")
TOTAL_STEPS = 200
SCHEDULE = (0, 1, 2, 6, 14, 34, 83, TOTAL_STEPS)  # log-spaced, as metrics.trajectory.log_points=8
SHARPNESS_EVERY = 20
STEPS_PER_EPOCH = 50
LAYERS = ("body.0", "body.2", "head")
LOCAL_METRICS = (
    "hessian_trace",
    "hessian_trace_se",
    "hessian_top_eig",
    "eps_sharpness",
    "fisher_trace",
    "grad_diversity",
    "grad_cos_mean",
    "stiffness_within_cos",
    "stiffness_between_cos",
    "mli_monotonic",
    "mli_max_bump",
    "dist_to_init",
)


def _runs(phases, seeds, lrs, local_metrics, diverged, rng) -> pd.DataFrame:
    rows = []
    for (width, bs), lr, seed in itertools.product(sorted(phases), lrs, seeds):
        phase = phases[(width, bs)]
        loss, tr_acc, te_acc, trace, _, _ = SIGNATURE[phase]
        group = f"g{width}-{bs}-{lr:g}"
        row = {
            "variant_id": f"v{width}-{bs}-{lr:g}-{seed}",
            "group_id": group,
            "pack_id": f"p{width}-{bs}",
            "metrics_id": "m0",
            "model.name": "mlp",
            "model.width": width,
            "model.depth": 2,
            "model.batch_norm": False,
            "data.name": "digits",
            "data.subset": 1.0,
            "data.label_noise": 0.0,
            "optim.name": "sgd",
            "optim.lr": lr,
            "optim.batch_size": bs,
            "optim.momentum": 0.9,
            "optim.weight_decay": 5e-4,
            "train.epochs": 4,
            "seed": seed,
            "status": "ok",
            "error": None,
            "diverged_step": None,
            "train_loss": loss * np.exp(rng.normal(0, 0.1)),
            "train_acc": min(1.0, tr_acc + rng.normal(0, 0.003)),
            "test_loss": loss + 0.5 + rng.normal(0, 0.02),
            "test_acc": te_acc + rng.normal(0, 0.004) + 0.002 * np.log2(width),
            "wall_time_s": 1.0 + rng.random(),
            "device": "cpu",
        }
        h = trace * np.exp(rng.normal(0, 0.15))
        metrics = {
            "hessian_trace": h,
            "hessian_trace_se": 0.05 * h,
            "hessian_top_eig": h / 10 * np.exp(rng.normal(0, 0.1)),
            "eps_sharpness": np.log(h) + rng.normal(0, 0.2),
            "fisher_trace": h / 3,
            "grad_diversity": 1.0 + 10 / np.sqrt(bs),
            "grad_cos_mean": 0.5 - 0.1 * np.log10(bs) + rng.normal(0, 0.01),
            "stiffness_within_cos": 0.4 + rng.normal(0, 0.02),
            "stiffness_between_cos": 0.1 + 0.02 * np.log2(1024 / bs),
            "mli_monotonic": float(phase != "I"),
            "mli_max_bump": 0.0 if phase != "I" else 0.1,
            "dist_to_init": 3.0 + np.log2(width),
        }
        row.update({k: v for k, v in metrics.items() if k in local_metrics})
        if (width, bs, seed) in diverged:
            row.update(status="diverged", diverged_step=7, train_loss=np.nan, train_acc=np.nan)
            row.update(test_loss=np.nan, test_acc=np.nan)
            row.update({k: np.nan for k in local_metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def _pairs(runs: pd.DataFrame, phases, rng, mc_noise: float) -> pd.DataFrame:
    rows = []
    for group, members in runs[runs["status"] == "ok"].groupby("group_id", sort=False):
        width, bs = members["model.width"].iloc[0], members["optim.batch_size"].iloc[0]
        *_, mc, cka = SIGNATURE[phases[(width, bs)]]
        for a, b in itertools.combinations(members["variant_id"], 2):
            rows.append(
                {
                    "group_id": group,
                    "variant_a": a,
                    "variant_b": b,
                    "l2_distance": 2.0 + np.log2(width) + rng.normal(0, 0.05),
                    "cka_linear_logits": min(1.0, cka + 0.02 + rng.normal(0, 0.01)),
                    "cka_linear_softmax": min(1.0, cka + rng.normal(0, 0.01)),
                    "cka_linear_features": min(1.0, cka - 0.05 + rng.normal(0, 0.01)),
                    "barrier_loss": max(0.0, -mc) / 50 + abs(rng.normal(0, 0.01)),
                    "barrier_error": max(0.0, -mc) + abs(rng.normal(0, 0.5)),
                    "mc": mc + rng.normal(0, mc_noise),
                }
            )
    return pd.DataFrame(rows)


def _curves(runs: pd.DataFrame, epochs: int = 4) -> pd.DataFrame:
    rows = []
    for r in runs.to_dict("records"):
        final = r["train_loss"] if np.isfinite(r["train_loss"]) else 0.01
        for e in range(epochs + 1):
            lr = r["optim.lr"] * (0.1 if e >= 3 else 1.0)  # step schedule at epoch 3
            train = final + (2.3 - final) * np.exp(-1.2 * e)
            rows.append(
                {
                    "variant_id": r["variant_id"],
                    "epoch": e,
                    "step": e * 10,
                    "lr": lr,
                    "train_loss": train,
                    "train_acc": 1 - train / 2.5,
                    "test_loss": train + 0.3 * e / epochs,
                    "test_acc": 1 - train / 2.5 - 0.05,
                }
            )
    return pd.DataFrame(rows)


def _surfaces(runs: pd.DataFrame, pairs: pd.DataFrame | None) -> pd.DataFrame:
    ids = list(runs[runs["status"] == "ok"]["variant_id"][:3])
    rows = []
    alphas = np.linspace(-1, 1, 11)
    for k, v in enumerate(ids):
        sharp = 1.0 + k
        for a in alphas:
            rows.append(
                {
                    "variant_id": v,
                    "kind": "1d",
                    "alpha": a,
                    "beta": np.nan,
                    "loss": 0.1 + sharp * a**2,
                    "accuracy": 1 - 0.2 * a**2,
                }
            )
            for b in alphas:
                loss = 0.1 + sharp * a**2 + 0.5 * b**2
                rows.append(
                    {
                        "variant_id": v,
                        "kind": "2d",
                        "alpha": a,
                        "beta": b,
                        "loss": loss,
                        "accuracy": 1 - 0.1 * loss,
                    }
                )
        for a in np.linspace(0, 1, 11):
            rows.append(
                {
                    "variant_id": v,
                    "kind": "mli",
                    "alpha": a,
                    "beta": np.nan,
                    "loss": 2.3 * (1 - a) ** 2 + 0.05,
                    "accuracy": 0.1 + 0.9 * a,
                }
            )
    if pairs is not None and len(pairs):
        for p in pairs.head(2).itertuples(index=False):
            for kind, bump in (("interpolation", 0.8), ("bezier", 0.05)):
                for a in np.linspace(0, 1, 11):
                    rows.append(
                        {
                            "variant_a": p.variant_a,
                            "variant_b": p.variant_b,
                            "kind": kind,
                            "alpha": a,
                            "beta": np.nan,
                            "loss": 0.05 + bump * 4 * a * (1 - a),
                            "accuracy": 0.99 - bump * a * (1 - a),
                        }
                    )
    return pd.DataFrame(rows)


def _spectra(runs: pd.DataFrame) -> pd.DataFrame:
    grid = np.linspace(-5, 100, 60)
    rows = []
    for v in runs["variant_id"][:3]:
        density = np.exp(-(grid**2) / 2) + 1e-4 * np.exp(-((grid - 80) ** 2) / 8)
        rows += [{"variant_id": v, "eigenvalue": g, "density": d} for g, d in zip(grid, density)]
    return pd.DataFrame(rows)


def _stiffness(runs: pd.DataFrame, classes: int = 4) -> pd.DataFrame:
    rows = []
    for v in runs["variant_id"][:2]:
        for a, b in itertools.product(range(classes), repeat=2):
            s = 0.6 if a == b else 0.1
            rows.append({"variant_id": v, "class_a": a, "class_b": b, "s_cos": s, "s_sign": 2 * s})
    return pd.DataFrame(rows)


def _lr_range(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for v in runs["variant_id"][:2]:
        for step in range(50):
            lr = 1e-4 * 10 ** (step / 10)
            loss = 2.3 - 1.5 * np.tanh(lr * 50) + (lr > 3) * (lr - 3) ** 2
            rows.append({"variant_id": v, "step": step, "lr": lr, "loss": loss})
    return pd.DataFrame(rows)


def _ok(runs: pd.DataFrame) -> list[dict]:
    return runs[runs["status"] == "ok"].to_dict("records")


def _trajectory(runs: pd.DataFrame) -> pd.DataFrame:
    """Local metrics at the log-spaced schedule; sharpness rising to 2/lr every 20 steps."""
    rows = []
    for r in _ok(runs):
        lr, final = r["optim.lr"], r.get("hessian_trace", 50.0)
        for step in sorted(set(SCHEDULE) | set(range(0, TOTAL_STEPS + 1, SHARPNESS_EVERY))):
            row = {"variant_id": r["variant_id"], "step": step, "epoch": step / STEPS_PER_EPOCH}
            row["lr"] = lr
            if step in SCHEDULE:
                h = final * (0.2 + 0.8 * (1 - np.exp(-step / 20)))
                row.update(hessian_trace=h, hessian_trace_se=0.05 * h)
                row["stiffness_between_cos"] = 0.1 + 0.8 * np.exp(-step / 30)
            if step % SHARPNESS_EVERY == 0:  # progressive sharpening, then the edge of stability
                edge = 2 / lr * (1 + 0.03 * np.sin(step / 7))
                row.update(sharpness=min(np.exp(step / 40), edge), two_over_lr=2 / lr)
            rows.append(row)
    return pd.DataFrame(rows)


def _stiffness_during_training(runs: pd.DataFrame, rng, classes: int = 4) -> pd.DataFrame:
    """Matrices at four steps for the variants _stiffness has; distance rows for every run."""
    rows = []
    for v in runs["variant_id"][:2]:
        for step in (0, 6, 34, TOTAL_STEPS):
            off = 0.1 + 0.8 * np.exp(-step / 30)
            for a, b in itertools.product(range(classes), repeat=2):
                s = 0.95 - 0.35 * (1 - np.exp(-step / 30)) if a == b else off
                rows.append(
                    {"variant_id": v, "class_a": a, "class_b": b, "s_cos": s, "s_sign": 2 * s - 1}
                )
                rows[-1].update(step=step, epoch=step / STEPS_PER_EPOCH)
    for r in _ok(runs):
        edges = np.linspace(2.0, 10.0, 9) * (1 + rng.normal(0, 0.02))
        scale = 2.0 + 20 * r["optim.lr"]  # stiff over a longer range at larger learning rates
        for lo, hi in zip(edges[:-1], edges[1:]):
            s = 0.8 * np.exp(-(lo + hi) / 2 / scale) + rng.normal(0, 0.01)
            rows.append(
                {
                    "variant_id": r["variant_id"],
                    "class_a": None,
                    "class_b": None,
                    "s_cos": s,
                    "s_sign": min(1.0, 1.5 * s),
                    "distance_bin_lo": lo,
                    "distance_bin_hi": hi,
                    "count": int(rng.integers(50, 500)),
                }
            )
    return pd.DataFrame(rows)


def _pca(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A spiral path into (0, 0) and a valley-shaped loss on its plane, for three runs."""
    path, plane = [], []
    for k, r in enumerate(_ok(runs)[:3]):
        v = r["variant_id"]
        for step in SCHEDULE:
            left = 1 - step / TOTAL_STEPS
            theta = step / 40 + k
            path.append(
                {
                    "variant_id": v,
                    "step": step,
                    "alpha": 6 * left**2 * np.cos(theta),
                    "beta": 1.5 * left**2 * np.sin(theta),
                    "explained_alpha": 0.9,
                    "explained_beta": 0.08,
                }
            )
        for a, b in itertools.product(np.linspace(-8, 8, 11), np.linspace(-2, 2, 11)):
            loss = 0.05 + 0.03 * a**2 + 0.5 * b**2
            plane.append({"variant_id": v, "kind": "pca", "alpha": a, "beta": b, "loss": loss})
            plane[-1]["accuracy"] = 1 - 0.1 * loss
    return pd.DataFrame(path), pd.DataFrame(plane)


def _lca(runs: pd.DataFrame, rng) -> pd.DataFrame:
    """Ten windows of 20 steps; the first layers lower the loss, the head raises it a little."""
    shares = {"body.0": 0.6, "body.2": 0.5, "head": -0.1}
    rows = []
    for r in _ok(runs):
        for start in range(0, TOTAL_STEPS, 20):
            drop = 2.3 * (np.exp(-start / 50) - np.exp(-(start + 20) / 50))
            for layer in LAYERS:
                allocation = -shares[layer] * drop + rng.normal(0, 0.005)
                rows.append({"variant_id": r["variant_id"], "step": start, "layer": layer})
                rows[-1]["allocation"] = allocation
    return pd.DataFrame(rows)


def _params(runs: pd.DataFrame, rng, bins: int = 20) -> pd.DataFrame:
    """Weight statistics at init and at the end: smaller batches end with wider weights."""
    rows = []
    for r in _ok(runs):
        w = r["model.width"]
        shapes = {"body.0.weight": 64 * w, "body.0.bias": w, "body.2.weight": w * w}
        shapes.update({"body.2.bias": w, "head.weight": 10 * w, "head.bias": 10})
        for step, (name, numel) in itertools.product((0, TOTAL_STEPS), shapes.items()):
            std = 0.1 if step == 0 else 0.1 * (1 + 0.15 * np.log2(1024 / r["optim.batch_size"]))
            x = rng.normal(0, std, size=numel)
            counts, edges = np.histogram(x, bins=bins)
            rows.append(
                {
                    "variant_id": r["variant_id"],
                    "layer": name,
                    "numel": numel,
                    "l2_norm": float(np.linalg.norm(x)),
                    "mean": float(x.mean()),
                    "std": float(x.std()),
                    "abs_max": float(np.abs(x).max()),
                    "hist_counts": counts.tolist(),
                    "hist_edges": edges.tolist(),
                    "hist_outside": 0,
                    "step": step,
                    "epoch": step / STEPS_PER_EPOCH,
                }
            )
    return pd.DataFrame(rows)


# metric -> (mean, sd) of after / before under a rescaling by alpha = 2 (Dinh et al. 2017)
REPARAM_RATIOS = {
    "hessian_trace": (3.6, 0.3),
    "hessian_top_eig": (4.1, 0.4),
    "adaptive_sharpness_avg": (1.0, 0.005),
}


def _reparam(runs: pd.DataFrame, rng) -> pd.DataFrame:
    rows = []
    for r in _ok(runs):
        for metric, (mean, sd) in REPARAM_RATIOS.items():
            before = 10 + rng.random()
            ratio = mean + rng.normal(0, sd)
            rows.append(
                {
                    "variant_id": r["variant_id"],
                    "metric": metric,
                    "alpha": 2.0,
                    "layer_a": "body.0",
                    "layer_b": "body.2",
                    "before": before,
                    "after": before * ratio,
                    "ratio": ratio,
                }
            )
    return pd.DataFrame(rows)


def _during_training(runs: pd.DataFrame, built: dict, tables: set[str], rng_seed: int) -> None:
    """Add the tables measured during training that ``tables`` names to ``built``."""
    rng = np.random.default_rng(rng_seed + 1)  # own stream: the other tables do not change
    if "trajectory" in tables:
        built["trajectory"] = _trajectory(runs)
        extra = _stiffness_during_training(runs, rng)
        built["stiffness"] = pd.concat([f for f in (built["stiffness"], extra) if f is not None])
    if "path" in tables:
        built["path"], plane = _pca(runs)
        built["surfaces"] = pd.concat([f for f in (built["surfaces"], plane) if f is not None])
    if "lca" in tables:
        built["lca"] = _lca(runs, rng)
    if "params" in tables:
        built["params"] = _params(runs, rng)
    if "reparam" in tables:
        built["reparam"] = _reparam(runs, rng)


def _write_table(frame: pd.DataFrame, directory: Path, parts: int = 2) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[chunk].to_parquet(directory / f"part-{i:05d}.parquet", index=False)
    # A half-written temporary part, as left by a crashed writer: readers must skip it.
    (directory / ".part-99999.parquet.tmp").write_bytes(b"PAR1 not a parquet file")


def write_results(
    root: str | Path,
    *,
    phases: dict[tuple[int, int], str] | None = None,
    seeds: Iterable[int] = (0, 1, 2),
    lrs: Iterable[float] = (0.1,),
    tables: Iterable[str] = ALL_TABLES,
    local_metrics: Iterable[str] = LOCAL_METRICS,
    diverged: Iterable[tuple[int, int, int]] = ((8, 1024, 2),),
    analysis: dict[str, str] | None = None,
    rng_seed: int = 0,
    mc_noise: float = 0.4,
    catalogue: bool = True,
) -> Path:
    """Write a results directory under ``root`` and return it.

    ``diverged`` lists (width, batch size, seed) runs marked diverged with NaN metrics.
    ``tables`` selects which tables exist (``runs`` always does; add
    :data:`TRAINING_TABLES` for the measurements during training). ``mc_noise`` is the
    seed-pair standard deviation of mc in percentage points (training error noise is about
    0.3 points, less where accuracy is clipped at 1). ``catalogue=False`` writes a manifest as
    sweeps did before the catalogue (:data:`CATALOGUE`) existed.
    """
    root = Path(root)
    phases = dict(phases or PLANTED)
    seeds, lrs, tables = list(seeds), list(lrs), set(tables) | {"runs"}
    rng = np.random.default_rng(rng_seed)
    runs = _runs(phases, seeds, lrs, set(local_metrics), set(diverged), rng)
    pairs = _pairs(runs, phases, rng, mc_noise) if "pairs" in tables else None
    built = {
        "runs": runs,
        "pairs": pairs,
        "curves": _curves(runs) if "curves" in tables else None,
        "surfaces": _surfaces(runs, pairs) if "surfaces" in tables else None,
        "spectra": _spectra(runs) if "spectra" in tables else None,
        "stiffness": _stiffness(runs) if "stiffness" in tables else None,
        "lr_range": _lr_range(runs) if "lr_range" in tables else None,
    }
    _during_training(runs, built, tables, rng_seed)
    for name, frame in built.items():
        if frame is not None:
            _write_table(frame, root / name)
    axes = {
        "model.width": sorted({w for w, _ in phases}),
        "optim.batch_size": sorted({b for _, b in phases}),
        "seed": seeds,
    }
    if len(lrs) > 1:
        axes["optim.lr"] = lrs
    manifest = {
        "sweep": "fake",
        "config": {"data": {"name": "digits"}, "model": {"name": "mlp"}},
        "axes": axes,
        "analysis": analysis or {"temperature": "optim.batch_size", "load": "model.width"},
        "versions": {"pandas": pd.__version__},
        "code_version": "test",
        **({"catalogue": CATALOGUE} if catalogue else {}),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root
