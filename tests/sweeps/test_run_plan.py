"""benchmarks/run_plan.py: a sweep exported here (Hydra) and run without Ray reads as a sweep's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from analysis.load import load_results
from sweeps.config import plan_sweep

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["sweep=grokking_cpu", "model.width=8", "train.epochs=5", "optim.weight_decay=0.0,1.0",
             "data.train_fraction=0.5", "metrics=fast"]  # fmt: skip


def _run_plan():
    spec = importlib.util.spec_from_file_location("run_plan", REPO / "benchmarks/run_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_exported_plan_runs_without_ray_or_hydra_into_a_readable_results_dir(tmp_path):
    run_plan = _run_plan()
    plan = tmp_path / "plan.json"
    run_plan.export(plan, [*OVERRIDES, f"out_dir={tmp_path / 'unused'}"])
    expected = sorted(v.variant_id for v in plan_sweep(OVERRIDES).variants)
    doc = json.loads(plan.read_text())
    assert sorted(d["id"] for pack in doc["packs"] for d in pack) == expected
    # the run half in a process that cannot import ray, hydra or omegaconf (the GPU machine's)
    block = ("import sys\nfor m in ('ray', 'hydra', 'omegaconf'): sys.modules[m] = None\n"
             "sys.argv = sys.argv[1:]\nimport runpy\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")  # fmt: skip
    results = tmp_path / "results"
    cmd = [sys.executable, "-c", block, str(REPO / "benchmarks/run_plan.py"), "run", str(plan),
           str(results), "--threads", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = load_results(results).runs
    assert sorted(runs.variant_id) == expected
    assert (runs.status == "ok").all()
    assert runs.hessian_trace.notna().all()  # the fast preset's columns
    # a second run finds everything finished and trains nothing
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "ran 0 variants" in again.stdout


def test_the_committed_gpu_plans_equal_a_fresh_export_of_their_presets(tmp_path):
    """run_gpu.sh runs benchmarks/plans/*.json on a machine that cannot compose them again:
    each must still be its preset's packs, variants and metrics settings."""
    run_plan = _run_plan()
    plans = sorted((REPO / "benchmarks/plans").glob("*.json"))
    assert plans
    for committed in plans:
        old = json.loads(committed.read_text())
        fresh = tmp_path / committed.name
        run_plan.export(fresh, [f"sweep={old['name']}"])
        new = json.loads(fresh.read_text())
        assert old["packs"] == new["packs"], f"{committed.name} is stale: export it again"
        assert old["metrics"] == new["metrics"], f"{committed.name} is stale: export it again"
        assert old["manifest"]["analysis"] == new["manifest"]["analysis"]
