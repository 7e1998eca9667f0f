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

Phase signatures follow SCIENCE.md: I/II high training loss and large Hessian, III/IV
small loss and small Hessian; mc < 0 in I and III, > 0 in II, ~0 in IV; CKA high only in
IV-B. Seed noise is small against the planted gaps, so the classifier must recover the map.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

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
ALL_TABLES = ("runs", "curves", "pairs", "surfaces", "spectra", "stiffness", "lr_range")
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
) -> Path:
    """Write a results directory under ``root`` and return it.

    ``diverged`` lists (width, batch size, seed) runs marked diverged with NaN metrics.
    ``tables`` selects which tables exist (``runs`` always does). ``mc_noise`` is the
    seed-pair standard deviation of mc in percentage points (training error noise is about
    0.3 points, less where accuracy is clipped at 1).
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
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root
