"""A results directory only takes variants of its own base config and its own metrics settings,
unless asked explicitly; axes, where and how it runs may change freely."""

import json

import pytest

from landscape.run import metrics_id
from landscape.variant import ConfigError
from sweeps.manifest import base_config, build_manifest, check_same_base
from sweeps.runner import run_sweep
from sweeps.store import Store
from tests.sweeps.conftest import TINY, command, tiny_plan
from tests.sweeps.conftest import finished_plan as _finished


@pytest.mark.parametrize(
    "change",
    [
        ["model.width=4,5,6,7,8"],  # extend an axis
        ["seed=0"],  # a fixed value where there was an axis
        ["ray.num_cpus=1", "device=cpu", "pack.max_members=1"],  # how it runs
        ["train.cuda_graphs=false", "train.pack_step=loop", "train.pack_streams=2"],  # launches
        ["metrics.hessian_trace.n_probes=5"],  # metrics: checked by metrics_id, not here
    ],
)
def test_same_base_config_is_accepted(tmp_path, change):
    plan = _finished(tmp_path)
    assert (
        check_same_base(
            Store(plan.results_dir).read_manifest(), tiny_plan(tmp_path, *change), force=False
        )
        == []
    )


def test_another_base_config_is_refused_unless_forced(tmp_path):
    plan = _finished(tmp_path)
    old = Store(plan.results_dir).read_manifest()
    other = tiny_plan(tmp_path, "train.epochs=2", "optim.lr=0.5")
    with pytest.raises(ConfigError) as err:
        check_same_base(old, other, force=False)
    message = str(err.value)
    assert "another base config (optim.lr: 0.02 -> 0.5; train.epochs: 1 -> 2)" in message
    assert "--force" in message and "\n" not in message
    assert check_same_base(old, other, force=True) == [
        "optim.lr: 0.02 -> 0.5",
        "train.epochs: 1 -> 2",
    ]


def test_a_knob_added_later_reads_as_its_default_in_an_older_manifest(tmp_path):
    plan = _finished(tmp_path)
    old = Store(plan.results_dir).read_manifest()
    del old["config"]["data"]["sample_seed"]  # written before data.sample_seed existed
    assert check_same_base(old, tiny_plan(tmp_path), force=False) == []
    with pytest.raises(ConfigError, match="data.sample_seed: "):
        check_same_base(old, tiny_plan(tmp_path, "data.sample_seed=3"), force=False)


def test_the_manifest_carries_the_catalogue_that_analysis_reads(tmp_path):
    from analysis.load import load_results
    from landscape.datasets import DATA_SETS
    from landscape.metrics.registry import metric_catalogue
    from landscape.variant import LAUNCH_KNOBS

    plan = tiny_plan(tmp_path, "data.n_classes=3")
    ids = [v.variant_id for v in plan.variants]
    store = Store(plan.results_dir)
    store.write_manifest(build_manifest(plan, None, ids, []))
    assert Store(plan.results_dir).read_manifest()["catalogue"]["tables"] == {}
    rows = [{"variant_id": i, "status": "ok", **v.flat()} for i, v in zip(ids, plan.variants)]
    store.write_pack({"runs": rows[:1]})
    store.write_pack({"runs": [{**r, "train_loss": 1.0} for r in rows[1:]]})  # a new column
    manifest = Store(plan.results_dir).read_manifest()
    catalogue = manifest["catalogue"]
    # the schemas' columns, in the table's order (the manifest's keys are sorted)
    assert sorted(catalogue["tables"]["runs"]) == sorted(manifest["schemas"]["runs"])
    assert list(catalogue["data"]) == ["synthetic"]
    assert catalogue["data"]["synthetic"] == DATA_SETS["synthetic"].record()
    assert catalogue["knobs"]["launch"] == list(LAUNCH_KNOBS)
    assert "model.width" in catalogue["knobs"]["identity"] and "seed" in catalogue["knobs"]["axes"]
    assert set(catalogue["knobs"]["analysis"]) <= {"temperature", "load"}
    assert catalogue["tables"]["runs"][:2] == ["variant_id", "status"]
    assert catalogue["tables"]["runs"][-1] == "train_loss"
    # the metrics the plan measures, as their registry declares them
    assert catalogue["metrics"] == metric_catalogue(plan.metrics)
    assert "hessian_trace" in [c["name"] for c in catalogue["metrics"]["hessian_trace"]["columns"]]
    results = load_results(plan.results_dir)
    assert results.num_classes() == 3  # synthetic: the knob its record names
    # a later command over another data set adds its record and keeps the first
    other = tiny_plan(tmp_path, "data=digits")
    both = build_manifest(other, Store(plan.results_dir).read_manifest(), ids, [])
    assert sorted(both["catalogue"]["data"]) == ["digits", "synthetic"]


def test_base_config_leaves_out_axes_and_run_only_keys(tmp_path):
    plan = tiny_plan(tmp_path)
    base = base_config(plan.config, ["model.width", "seed", "model"])
    assert "model" not in base and "seed" not in base
    assert not {"ray", "out_dir", "device", "pack", "metrics", "sweep"} & set(base)
    assert base["train"]["epochs"] == 1


def test_the_command_refuses_another_base_config_in_one_line_and_changes_nothing(
    tmp_path, monkeypatch, capsys
):
    plan = _finished(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in plan.results_dir.rglob("*")}
    monkeypatch.chdir(tmp_path)
    assert command([*TINY, "out_dir=results", "train.epochs=3", "--quiet"]) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "another base config (train.epochs: 1 -> 3)" in lines[0], stderr
    after = {p: p.stat().st_mtime_ns for p in plan.results_dir.rglob("*")}
    lock = plan.results_dir / ".lock"
    assert {p: t for p, t in after.items() if p != lock} == {
        p: t for p, t in before.items() if p != lock
    }


def test_other_metrics_settings_are_refused_naming_the_flag(tmp_path):
    plan = _finished(tmp_path)
    more = tiny_plan(tmp_path, "metrics.hessian_trace.n_probes=5")
    with pytest.raises(ConfigError) as err:
        run_sweep(more, progress=False, log=lambda line: None)
    message = str(err.value)
    assert (
        f"8 variants in {plan.results_dir} were measured with metrics_id {metrics_id(plan.metrics)}"
        in message
    )
    assert (
        f"metrics={more.metrics.preset} (metrics_id {metrics_id(more.metrics)}) needs them retrained"
        in message
    )
    assert "pass --remeasure" in message and "\n" not in message


def test_a_rerun_that_trains_nothing_leaves_the_manifest_and_starts_no_ray(tmp_path, monkeypatch):
    """A command with nothing to train rewrites no file (the report's fingerprint then sees the
    directory unchanged and skips drawing) and never starts Ray; ``updated`` stays the start of
    the command that trained. A command that plans other variants (a subset) writes it again."""
    import ray

    plan = _finished(tmp_path)
    manifest = plan.results_dir / "manifest.json"
    before, stamp = manifest.read_text(), manifest.stat().st_mtime_ns
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not another test's instance
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    summary = run_sweep(plan, progress=False, log=lambda line: None)
    assert summary.to_run == 0 and summary.skipped == len(plan.variants)
    assert manifest.read_text() == before and manifest.stat().st_mtime_ns == stamp

    subset = tiny_plan(tmp_path, "model.width=4,5")  # finished too, but another plan
    assert run_sweep(subset, progress=False, log=lambda line: None).to_run == 0
    after = Store(plan.results_dir).read_manifest()
    assert after["variant_ids"] == [v.variant_id for v in subset.variants]
    assert after["updated"] != json.loads(before)["updated"]
