"""A real sweep on a real local Ray instance with 2 CPUs, Parquet read back with pandas.

The default test measures the cheap ``metrics=fast`` preset (the sweep machinery is what it
tests); the slow one runs the demo preset's local and global metrics through Ray."""

import subprocess
import sys

import pandas as pd
import pytest

from sweeps.cli import main

ARGS = [
    "model.width=8,16",
    "optim.batch_size=32,128",
    "seed=0,1",
    "train.epochs=2",
    "metrics=fast",
    "metrics.hessian_trace.n_probes=10",
    "ray.num_cpus=2",
    "--quiet",
]


def sweep(cwd, *extra):
    cmd = [sys.executable, "-m", "sweeps.cli", "out_dir=results", *ARGS, *extra]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sweep_writes_parquet_and_a_rerun_trains_nothing(tmp_path):
    out = sweep(tmp_path)
    results = tmp_path / "results" / "demo"
    assert "8 to run" in out and "report:" in out
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 8 and runs.variant_id.is_unique
    assert set(runs.status) == {"ok"}
    assert runs["hessian_trace"].notna().all() and (runs["hessian_trace_se"] > 0).all()
    assert set(runs["model.width"]) == {8, 16} and set(runs["optim.batch_size"]) == {32, 128}
    assert runs.groupby("group_id").size().eq(2).all()  # each replicate group: both seeds
    curves = pd.read_parquet(results / "curves")
    assert set(curves.variant_id) == set(runs.variant_id)
    assert len(curves) == 8 * 3  # epochs 0..2
    assert (results / "manifest.json").exists()
    assert (results / "report" / "index.html").exists()
    assert list((results / "report").glob("*.png"))

    parts_before = sorted(p.name for p in (results / "runs").iterdir())
    again = sweep(tmp_path, "--no-report")
    assert "8 already finished (skipped), 0 to run" in again
    assert sorted(p.name for p in (results / "runs").iterdir()) == parts_before

    # extending an axis trains only the new variants
    extended = sweep(tmp_path, "model.width=8,16,32", "--no-report")
    assert "8 already finished (skipped), 4 to run" in extended
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 12 and runs.variant_id.is_unique
    assert runs["finished_at"].notna().all()

    # status reads the directory alone; compact merges the parts and keeps every row as it was
    status = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "status", "results/demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        "12 variants recorded (12 ok)" in status.stdout
        and "0 of them still to run" in status.stdout
    )
    assert main(["compact", str(results)]) == 0
    compacted = pd.read_parquet(results / "runs")
    assert len(list((results / "runs").iterdir())) == 1
    pd.testing.assert_frame_equal(
        compacted.sort_values("variant_id").reset_index(drop=True),
        runs.sort_values("variant_id").reset_index(drop=True),
    )


@pytest.mark.slow
def test_demo_metrics_preset_fills_the_global_tables(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "sweeps.cli",
        "out_dir=results",
        "model.width=8",
        "optim.batch_size=64",
        "seed=0,1",
        "train.epochs=2",
        "ray.num_cpus=2",
        "--quiet",
        "--no-report",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    results = tmp_path / "results" / "demo"
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 2 and runs.variant_id.is_unique and set(runs.status) == {"ok"}
    pairs = pd.read_parquet(results / "pairs")
    assert len(pairs) == 1 and {pairs.variant_a[0], pairs.variant_b[0]} == set(runs.variant_id)


@pytest.mark.slow
def test_checkpoints_and_cross_variant_pairs_through_the_sweep(tmp_path):
    extra = [
        "checkpoints=true",
        "metrics.cross.enabled=true",
        "metrics.cross.n_alphas=5",
        "model.width=8",
        "--no-report",
    ]
    out = sweep(tmp_path, *extra)
    results = tmp_path / "results" / "demo"
    runs = pd.read_parquet(results / "runs")
    assert sorted(p.stem for p in (results / "checkpoints").glob("*.pt")) == sorted(runs.variant_id)
    cross = pd.read_parquet(results / "cross")
    pairs = set(zip(cross.variant_a, cross.variant_b))
    assert len(pairs) == 2  # per seed: batch size 32 against 128
    by_id = runs.set_index("variant_id")
    for a, b in pairs:
        assert by_id.at[a, "seed"] == by_id.at[b, "seed"]
        assert by_id.at[a, "optim.batch_size"] != by_id.at[b, "optim.batch_size"]
    assert len(cross) == 2 * 2 * 5  # pairs x (train, test) x alphas
    assert "interpolating 2" in out
    again = sweep(tmp_path, *extra)  # resumed: no pair is interpolated twice
    assert "interpolating" not in again
    assert len(pd.read_parquet(results / "cross")) == len(cross)


@pytest.mark.slow
def test_new_metrics_are_measured_from_checkpoints_without_retraining(tmp_path):
    base = ["checkpoints=true", "model.width=8", "--no-report"]
    sweep(tmp_path, *base)
    results = tmp_path / "results" / "demo"
    curves_before = pd.read_parquet(results / "curves")
    out = sweep(
        tmp_path, *base, "metrics.hessian_eigen.enabled=true", "metrics.hessian_eigen.n_samples=64"
    )
    assert "4 already finished (skipped), 0 to run" in out
    assert "measuring 4 finished variants again from their checkpoints" in out
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 4 and runs.variant_id.is_unique
    assert runs["hessian_top_eig"].notna().all() and runs["hessian_trace"].notna().all()
    assert set(runs.measured_from) == {"checkpoint"} and runs.best_epoch.notna().all()
    curves = pd.read_parquet(results / "curves")  # what training wrote is kept, once
    assert len(curves) == len(curves_before)
    assert sorted(map(tuple, curves[["variant_id", "epoch"]].values)) == sorted(
        map(tuple, curves_before[["variant_id", "epoch"]].values)
    )
