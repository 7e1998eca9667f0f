"""The per-pack tracker callback, and its TensorBoard integration read back from event files."""

import pytest

from landscape.variant import ConfigError
from sweeps.runner import run_sweep
from sweeps.trackers import TensorBoardTracker
from tests.sweeps.conftest import tiny_plan

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(directory))
    events.Reload()
    return {
        tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_tensorboard_gets_each_variants_curves_and_final_metrics(tmp_path):
    tables = {
        "runs": [
            {
                "variant_id": "v1",
                "model.width": 8,
                "seed": 0,
                "status": "ok",
                "test_acc": 0.75,
                "hessian_trace": 12.5,
                "error": None,
            }
        ],
        "curves": [
            {"variant_id": "v1", "epoch": e, "step": 10 * e, "train_loss": 2.0 - e / 2}
            for e in range(3)
        ],
    }
    TensorBoardTracker(tmp_path / "tb")(tables)
    scalars = _scalars(tmp_path / "tb" / "v1")
    assert scalars["curves/train_loss"] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert scalars["final/test_acc"] == [(2, 0.75)]
    assert scalars["final/hessian_trace"] == [(2, 12.5)]
    assert "final/model.width" not in scalars  # knobs go to the text summary, not scalars


def test_tracker_settings_are_checked_and_stay_out_of_identity(tmp_path):
    with pytest.raises(ConfigError, match="tracker.kind must be null or one of tensorboard"):
        tiny_plan(tmp_path, "tracker.kind=wandb")
    plain, tracked = tiny_plan(tmp_path), tiny_plan(tmp_path, "tracker.kind=tensorboard")
    assert [v.variant_id for v in plain.variants] == [v.variant_id for v in tracked.variants]
    assert tracked.tracker.kind == "tensorboard"


@pytest.mark.slow
def test_a_sweep_writes_tensorboard_runs_and_survives_a_failing_tracker(local_ray, tmp_path):
    plan = tiny_plan(tmp_path, "tracker.kind=tensorboard")
    run_sweep(plan, progress=False, log=lambda line: None)
    runs = sorted(p.name for p in (plan.results_dir / "tensorboard").iterdir())
    assert runs == sorted(v.variant_id for v in plan.variants)
    assert "curves/train_loss" in _scalars(plan.results_dir / "tensorboard" / runs[0])

    calls, logs = [], []

    def broken(tables):
        calls.append(len(tables["runs"]))
        raise RuntimeError("tracker server down")

    other = tiny_plan(tmp_path, "sweep.name=other")
    summary = run_sweep(other, progress=False, log=logs.append, on_pack=broken)
    assert summary.ran == 8 and len(calls) == 1  # switched off after its first error
    assert any(
        "tracker switched off after an error: RuntimeError: tracker server down" in line
        for line in logs
    )
