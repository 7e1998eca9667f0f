"""A real sweep on a real local Ray instance with 2 CPUs, Parquet read back with pandas.

The default test runs the command in a process of its own (which starts and ends its Ray) on
the cheap ``metrics=fast`` preset (the sweep machinery is what it tests), then the command
again in this process, which trains nothing; an extended axis trains only its new variants
(on the tests' shared Ray instance). The slow ones run the demo preset's local and global
metrics, checkpoints and what the driver measures from them."""

import subprocess
import sys

import pandas as pd
import pytest

from sweeps.cli import main
from sweeps.runner import run_sweep
from tests.sweeps.conftest import command, finished_plan, tiny_plan

ARGS = [
    "model.width=8,16",
    "optim.batch_size=32,128",
    "seed=0,1",
    "train.epochs=2",
    "metrics=fast",
    "metrics.hessian_trace.n_probes=10",
    "ray.num_cpus=2",
    "ray.inline=false",  # on Ray, however small (tests/sweeps/test_inline.py: in the driver)
    "--quiet",
]


def sweep(cwd, *extra):
    cmd = [sys.executable, "-m", "sweeps.cli", "out_dir=results", *ARGS, *extra]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sweep_writes_parquet_and_a_rerun_trains_nothing(tmp_path, monkeypatch, capsys):
    small = ["model.width=8", "train.epochs=1"]  # 2 batch sizes x 2 seeds
    out = sweep(tmp_path, *small)
    results = tmp_path / "results" / "demo"
    assert "4 to run" in out and "report:  results/demo/report/index.html" in out
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 4 and runs.variant_id.is_unique
    assert set(runs.status) == {"ok"}
    assert runs["hessian_trace"].notna().all() and (runs["hessian_trace_se"] > 0).all()
    assert set(runs["model.width"]) == {8} and set(runs["optim.batch_size"]) == {32, 128}
    assert runs.groupby("group_id").size().eq(2).all()  # each replicate group: both seeds
    assert runs["finished_at"].notna().all()
    curves = pd.read_parquet(results / "curves")
    assert set(curves.variant_id) == set(runs.variant_id)
    assert len(curves) == 4 * 2  # epochs 0..1
    assert (results / "manifest.json").exists()
    assert (results / "report" / "index.html").exists()
    assert list((results / "report").glob("*.png"))

    parts_before = sorted(p.name for p in (results / "runs").iterdir())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert command(["out_dir=results", *ARGS, *small, "--no-report"]) == 0
    assert "4 already finished (skipped), 0 to run" in capsys.readouterr().out
    assert sorted(p.name for p in (results / "runs").iterdir()) == parts_before

    # status reads the directory alone; compact merges the parts and keeps every row as it was
    assert main(["status", str(results)]) == 0
    status = capsys.readouterr().out
    assert "4 variants recorded (4 ok)" in status and "0 of them still to run" in status
    runs = pd.read_parquet(results / "runs")
    assert main(["compact", str(results)]) == 0
    compacted = pd.read_parquet(results / "runs")
    assert len(list((results / "runs").iterdir())) == 1
    pd.testing.assert_frame_equal(
        compacted.sort_values("variant_id").reset_index(drop=True),
        runs.sort_values("variant_id").reset_index(drop=True),
    )


def test_extending_an_axis_trains_only_the_new_variants(local_ray, tmp_path):
    plan = finished_plan(tmp_path)  # 4 widths x 2 seeds recorded ok, never trained
    logs: list[str] = []
    summary = run_sweep(
        tiny_plan(tmp_path, "model.width=4,5,6,7,8"), progress=False, log=logs.append
    )
    assert any("8 already finished (skipped), 2 to run" in line for line in logs), logs
    assert (summary.skipped, summary.ran, summary.counts) == (8, 2, {"ok": 2})
    runs = pd.read_parquet(plan.results_dir / "runs")
    assert len(runs) == 10 and runs.variant_id.is_unique
    trained = runs[runs.test_acc.notna()]  # the recorded rows have no measurements
    assert sorted(trained["model.width"]) == [8, 8] and trained.finished_at.notna().all()


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


@pytest.mark.slow
def test_a_vit_sweep_on_digits_finishes_with_every_row_ok(tmp_path):
    """``model=transformer data=digits``: 8x8 digits cut into 2x2 patches (a ViT), trained
    and measured (fast preset) on the embedded Ray, every row ``ok`` with the Hessian trace
    filled."""
    cmd = [sys.executable, "-m", "sweeps.cli", "out_dir=results", "sweep.name=vit"]
    cmd += ["model=transformer", "data=digits", "model.width=16", "optim.batch_size=64"]
    cmd += ["seed=0,1", "train.epochs=2", "metrics=fast", "metrics.hessian_trace.n_probes=10"]
    cmd += ["ray.num_cpus=2", "--quiet", "--no-report"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = pd.read_parquet(tmp_path / "results" / "vit" / "runs")
    assert len(runs) == 2 and set(runs.status) == {"ok"}
    assert runs.hessian_trace.notna().all() and runs.metric_errors.isna().all()
