"""Small sweeps on the embedded instance run their packs in the driver, one after another
(``ray.inline``): the choice, its refusals, the same rows as on Ray, failures as data."""

import pandas as pd
import pytest
import ray
import torch

from landscape.pack import make_packs
from landscape.variant import ConfigError
from sweeps import runner
from sweeps.runner import run_sweep, runs_inline
from sweeps.workers import PackWorker
from tests.sweeps.conftest import assert_exactly_once, tiny_plan


def _decide(plan) -> tuple[bool, list[str]]:
    logs: list[str] = []
    return runs_inline(plan, make_packs(plan.variants, plan.pack.max_members), logs.append), logs


def test_auto_runs_a_small_cpu_sweep_inline_and_nothing_else(tmp_path, monkeypatch):
    """auto: inline for the tiny sweep (an estimated second of work, said in one line); on Ray
    when asked (false), when the work is estimated at INLINE_BELOW_S or more, when the device
    is a GPU, when RAY_ADDRESS names a cluster, and when Ray is up in this process already."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    inline, logs = _decide(tiny_plan(tmp_path))
    assert inline and len(logs) == 1 and "running the 4 packs in this process" in logs[0]
    assert _decide(tiny_plan(tmp_path, "ray.inline=false")) == (False, [])
    assert _decide(tiny_plan(tmp_path, "train.epochs=3000")) == (False, [])  # ~60 s of work
    monkeypatch.setattr(runner, "resolve_device", lambda device: torch.device("cuda"))
    assert _decide(tiny_plan(tmp_path)) == (False, [])
    monkeypatch.undo()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert _decide(tiny_plan(tmp_path)) == (False, [])
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert _decide(tiny_plan(tmp_path)) == (False, [])
    with pytest.raises(ConfigError, match="ray.inline=true runs the packs in this process"):
        _decide(tiny_plan(tmp_path, "ray.inline=true"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ray.inline=sometimes", "ray.inline must be auto, true or false, got 'sometimes'"),
        ("ray.inline=1", "ray.inline must be auto, true or false, got 1"),
        (
            "ray.address=auto",
            "ray.inline=true runs the packs in this process, without Ray, got ray.address=auto",
        ),
        (
            "ray.mps=true",
            "ray.inline=true runs the packs in this process, without Ray, got ray.mps=true",
        ),
    ],
)
def test_bad_inline_settings_are_one_line(tmp_path, override, message):
    extra = [override] if override.startswith("ray.inline") else ["ray.inline=true", override]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        tiny_plan(tmp_path, *extra)


def _rows(plan) -> pd.DataFrame:
    runs = assert_exactly_once(plan).set_index("variant_id").sort_index()
    return runs[["status", "test_acc", "train_loss", "hessian_trace", "hessian_trace_se"]]


def test_an_inline_sweep_writes_the_rows_a_ray_sweep_writes(local_ray, tmp_path):
    """The same packs through the same worker class, in the driver and in Ray's workers (one
    thread each): the same variants, statuses and numbers. Both run the same kernels on the
    same values, so the numbers agree to float32 rounding at most (measured: equal)."""
    pairs = "metrics.distance.enabled=true"  # a global table too
    inline = tiny_plan(tmp_path / "inline", "ray.inline=true", pairs)
    on_ray = tiny_plan(tmp_path / "ray", "ray.inline=false", pairs)
    logs: list[str] = []
    assert run_sweep(inline, progress=False, log=logs.append).counts == {"ok": 8}
    assert run_sweep(on_ray, progress=False, log=logs.append).counts == {"ok": 8}
    a, b = _rows(inline), _rows(on_ray)
    assert (a.status == "ok").all() and a.index.equals(b.index)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
    key = ["variant_a", "variant_b"]
    got = [pd.read_parquet(p.results_dir / "pairs").sort_values(key) for p in (inline, on_ray)]
    assert len(got[0]) == 4  # one seed pair per width
    assert got[0][key].values.tolist() == got[1][key].values.tolist()
    assert got[0].l2_distance.tolist() == pytest.approx(got[1].l2_distance.tolist(), rel=1e-6)


class _Broken(PackWorker):
    def run(self, variants, metrics, checkpoint_dir=None):
        raise RuntimeError("the data went missing")


def test_an_error_outside_run_pack_is_recorded_as_failed_rows_and_the_sweep_goes_on(tmp_path):
    """As a Ray task's error would be: every variant of the pack a ``failed`` row with the
    error's first line, and the next packs still run (here: all fail the same way)."""
    plan = tiny_plan(tmp_path, "ray.inline=true")
    summary = run_sweep(plan, progress=False, log=lambda line: None, worker_cls=_Broken)
    assert summary.counts == {"failed": 8}
    runs = assert_exactly_once(plan)
    assert runs.error.str.contains("RuntimeError: the data went missing").all()
