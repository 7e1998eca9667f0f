"""Refused at planning, before Ray starts and before anything is written: a worker's GPU share
the embedded instance cannot have, a pack whose estimated memory cannot fit its device; and
the small surprises of the override grammar said in one line (duplicate values in an axis, a
decimal comma)."""

from types import SimpleNamespace

import pytest
import ray
import torch

from landscape.datasets import DATA_SETS
from landscape.pack import member_bytes
from sweeps import config
from sweeps.config import check_memory, plan_sweep
from tests.sweeps.conftest import command


def _refused(tmp_path, monkeypatch, capsys, *args: str) -> str:
    """``landscape-sweep ARGS`` in tmp_path: exit 2, one line on stderr, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not another test's instance
    status, stderr = command([*args, "out_dir=results", "--no-report"]), capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert list(tmp_path.iterdir()) == []  # no .lock, no manifest
    return lines[0]


def test_a_gpu_share_the_embedded_instance_lacks_is_refused_before_ray_starts(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    line = _refused(tmp_path, monkeypatch, capsys, "ray.gpus_per_worker=2")
    assert "ray.gpus_per_worker must be <= the GPUs of this machine (0)" in line
    assert "got 2" in line


def test_a_cpu_share_larger_than_the_instance_is_refused(tmp_path, monkeypatch, capsys):
    line = _refused(tmp_path, monkeypatch, capsys, "ray.num_cpus=2", "ray.cpus_per_worker=3")
    assert "ray.cpus_per_worker must be <= the CPUs of the embedded Ray instance (2" in line


def test_a_model_too_large_for_the_machine_is_refused_naming_the_knob(
    tmp_path, monkeypatch, capsys
):
    # 10^12 parameters: terabytes by any estimate, more than any machine's memory
    line = _refused(tmp_path, monkeypatch, capsys, "model.width=1000000", "device=cpu")
    assert line.startswith("landscape-sweep: error: model=mlp model.width=1000000 ")
    assert "GB by the estimate of training memory" in line
    assert "more than this machine's available memory" in line


def test_the_memory_bound_is_the_runners_estimate_exactly(tmp_path, monkeypatch):
    """On the CPU a pack trains all its members at once: the largest pack's members times the
    estimate of one (landscape.pack.member_bytes) must fit the available memory; a byte less
    refuses and says which pack.max_members would fit. On a GPU one member must fit (a pack is
    trained a few members at a time there)."""
    plan = plan_sweep(
        ["model.width=64", "optim.batch_size=64", "seed=0,1,2", f"out_dir={tmp_path}"]
    )
    v = plan.variants[0]
    record = DATA_SETS[v.data.name]
    one = member_bytes(v, record.shape_of(v.data), record.classes_of(v.data))
    have = {"bytes": 3 * one}
    monkeypatch.setattr(
        config,
        "device_memory",
        lambda device: (
            "this machine's available memory" if device == "cpu" else "gpu",
            have["bytes"],
        ),
    )
    check_memory(plan.variants, "cpu", 16)  # exactly fits
    have["bytes"] = 3 * one - 1
    with pytest.raises(
        config.ConfigError, match="a pack of 3 members .* pack.max_members=2 would fit"
    ):
        check_memory(plan.variants, "cpu", 16)
    check_memory(plan.variants, "cpu", 2)  # packs of at most 2 fit
    have["bytes"] = one
    check_memory(plan.variants, "cuda", 16)  # one member fits a GPU
    have["bytes"] = one - 1
    with pytest.raises(config.ConfigError, match="one pack member needs"):
        check_memory(plan.variants, "cuda", 16)


def test_duplicate_values_in_an_axis_are_said_in_one_line(tmp_path):
    plan = plan_sweep(["model.width=8,8", f"out_dir={tmp_path}"])
    assert len(plan.variants) == 5 * 2  # the demo's 5 batch sizes x 2 seeds, width 8 once
    assert plan.notes == [
        "note: the axis model.width lists 8 more than once (2 values, 1 distinct); each "
        "variant runs once: 10 variants, not 20"
    ]
    assert plan_sweep(["model.width=8,16", f"out_dir={tmp_path}"]).notes == []


def test_a_decimal_comma_is_named_as_typed(tmp_path, monkeypatch, capsys):
    line = _refused(tmp_path, monkeypatch, capsys, "optim.lr=0,01")
    assert "optim.lr must be finite and > 0, got 0.0 (from 'optim.lr=0,01' as typed" in line
    assert "optim.lr=0.01" in line


def test_the_memory_of_a_device_is_a_gpus_total_or_the_machines_available(monkeypatch):
    import psutil

    available = psutil.virtual_memory().available
    what, have = config.device_memory("cpu")
    assert what == "this machine's available memory" and abs(have - available) < 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * 2**30 + i)
    )
    assert config.device_memory("auto") == ("the memory of cuda:0", 80 * 2**30)
    assert config.device_memory("cuda:1") == ("the memory of cuda:1", 80 * 2**30 + 1)


def test_on_a_cluster_its_gpus_count_checked_once_joined_before_anything_is_written(
    tmp_path, monkeypatch
):
    """Planning leaves a cluster's GPUs alone (the driver's machine may have none); joining
    (here a stand-in for it) is followed by the check, before the lock or the manifest."""
    from sweeps import runner
    from tests.sweeps.conftest import tiny_plan

    plan = tiny_plan(tmp_path, "ray.address=127.0.0.1:6379", "ray.gpus_per_worker=1")
    monkeypatch.setattr(runner, "_init_ray", lambda plan, log: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(
        config.ConfigError,
        match=r"ray.gpus_per_worker must be <= the GPUs of the Ray cluster \(0\), got 1",
    ):
        runner.run_sweep(plan, progress=False, log=lambda line: None)
    assert not (tmp_path / "results").exists()


def test_the_memory_check_reads_token_data_as_the_model_does(tmp_path):
    """A transformer on generated token data is estimated on its int64 inputs (the record's
    vocab), fits, and is not refused; a wide one is, naming the model's knobs."""
    args = ["model=transformer", "data=modular", "data.modulus=23", "optim=adamw"]
    args += ["optim.batch_size=0", "seed=0,1", f"out_dir={tmp_path}"]
    check_memory(plan_sweep([*args, "model.width=32"]).variants, "cpu", 16)
    with pytest.raises(config.ConfigError, match="model=transformer model.width=1000000"):
        check_memory(plan_sweep([*args, "model.width=1000000"]).variants, "cpu", 16)
