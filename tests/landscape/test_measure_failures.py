"""Measuring a trained pack never trains it again: failures injected into metrics after
training, with the training runs counted and the rows checked."""

import errno
import math

import pytest
import torch

import landscape.measure as measure_mod
import landscape.metrics.hessian as hessian_mod
import landscape.run as run_mod
from landscape import load_dataset
from landscape.measure import MetricsSpec
from landscape.metrics.cka import CKASpec
from landscape.metrics.distance import DistanceSpec
from landscape.metrics.hessian import HessianEigenSpec, HessianTraceSpec
from landscape.metrics.local import smaller_chunks
from landscape.run import run_pack
from tests.conftest import tmpfs

METRICS = MetricsSpec(
    hessian_trace=HessianTraceSpec(n_probes=8, n_samples=32, chunk=4, tol=0.0),
    hessian_eigen=HessianEigenSpec(n_samples=32, max_iter=5),
    distance=DistanceSpec(),
    cka=CKASpec(n_inputs=32, unbiased_batch_size=16),
)


@pytest.fixture
def counted_training(monkeypatch):
    """How many times train_pack runs, and on how many members."""
    calls: list[int] = []
    real = run_mod.train_pack

    def train_pack(variants, *args, **kwargs):
        calls.append(len(variants))
        return real(variants, *args, **kwargs)

    monkeypatch.setattr(run_mod, "train_pack", train_pack)
    return calls


def _raising(exc: Exception):
    def raise_it(*args, **kwargs):
        raise exc

    return raise_it


def _pack(tiny_variant, n=3):
    variants = [tiny_variant(seed=s) for s in range(n)]
    return variants, load_dataset(variants[0].data)


def test_an_exception_in_one_metric_keeps_training_and_the_other_metrics(
    tiny_variant, counted_training, monkeypatch
):
    monkeypatch.setattr(hessian_mod, "hessian_trace", _raising(RuntimeError("injected")))
    variants, dataset = _pack(tiny_variant)
    rows = run_pack(variants, METRICS, dataset)
    assert counted_training == [3]  # trained once, as one pack
    runs = rows.tables["runs"]
    assert [r["variant_id"] for r in runs] == [v.variant_id for v in variants]
    for r in runs:
        assert r["status"] == "ok" and r["error"] is None
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["test_acc"])
        assert r["hessian_trace"] is None and r["hessian_trace_se"] is None
        assert r["metric_errors"] == "hessian_trace: RuntimeError: injected"
        assert math.isfinite(r["hessian_top_eig"])  # the next metric still ran
    assert len(rows.tables["pairs"]) == 3 and all(
        math.isfinite(p["l2_distance"]) for p in rows.tables["pairs"]
    )
    assert {c["variant_id"] for c in rows.tables["curves"]} == {v.variant_id for v in variants}


def test_out_of_memory_halves_chunks_then_members_and_never_retrains(
    tiny_variant, counted_training, monkeypatch
):
    """The injected product runs out of memory above one probe per call and above one member:
    the metric comes back measured, on one member with one probe at a time; training ran
    once."""
    real = hessian_mod.hessian_trace
    seen: list[tuple[int, int]] = []

    def tight(net, stack, x, y, **kw):
        members = x.shape[0]
        seen.append((kw["chunk"], members))
        if kw["chunk"] > 1 or members > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(net, stack, x, y, **kw)

    monkeypatch.setattr(hessian_mod, "hessian_trace", tight)
    variants, dataset = _pack(tiny_variant)
    rows = run_pack(variants, METRICS, dataset)
    assert counted_training == [3]
    # chunks 4 -> 2 -> 1 on all three members, then members 1 | 2 -> 1 | 1
    assert seen == [(4, 3), (2, 3), (1, 3), (1, 1), (1, 2), (1, 1), (1, 1)]
    runs = rows.tables["runs"]
    assert all(r["status"] == "ok" and r["metric_errors"] is None for r in runs)
    assert all(math.isfinite(r["hessian_trace"]) for r in runs)
    assert [r["hessian_trace_probes"] for r in runs] == [8, 8, 8]


def test_out_of_memory_even_at_one_member_is_nan_and_an_error(
    tiny_variant, counted_training, monkeypatch
):
    oom = torch.OutOfMemoryError("CUDA out of memory (injected)")
    monkeypatch.setattr(hessian_mod, "hessian_eigenvalues", _raising(oom))
    variants, dataset = _pack(tiny_variant, n=2)
    rows = run_pack(variants, METRICS, dataset)
    assert counted_training == [2]
    for r in rows.tables["runs"]:
        assert r["status"] == "ok" and math.isfinite(r["hessian_trace"])
        assert r["hessian_top_eig"] is None
        assert r["metric_errors"].startswith("hessian_eigen: OutOfMemoryError")


def test_a_failing_pair_metric_is_an_error_on_every_member(
    tiny_variant, counted_training, monkeypatch
):
    monkeypatch.setattr(measure_mod, "measure_pairs", _raising(ValueError("injected pairs")))
    variants, dataset = _pack(tiny_variant)
    rows = run_pack(variants, METRICS, dataset)
    assert counted_training == [3]
    assert "pairs" not in rows.tables
    assert all(
        r["status"] == "ok" and math.isfinite(r["hessian_trace"]) for r in rows.tables["runs"]
    )
    assert {r["metric_errors"] for r in rows.tables["runs"]} == {
        "pairs: ValueError: injected pairs"
    }


def test_a_failure_while_training_still_retries_member_by_member(tiny_variant, counted_training):
    """Training failures keep their retry (one bad variant cannot take its pack-mates down)."""
    from landscape import DataSpec

    good = tiny_variant(seed=0)
    bad = tiny_variant(
        data=DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3, subset=8),
        seed=1,
    )
    rows = run_pack([good, bad], METRICS, load_dataset(good.data))
    # the pack, then the good member alone; the bad one alone fails planning its steps
    assert counted_training == [2, 1]
    assert [r["status"] for r in rows.tables["runs"]] == ["ok", "failed"]


def test_smaller_chunks_halve_down_to_one():
    spec = HessianTraceSpec(chunk=5)
    assert smaller_chunks(spec).chunk == 2
    assert smaller_chunks(smaller_chunks(spec)).chunk == 1
    assert smaller_chunks(HessianTraceSpec(chunk=1)) is None
    assert smaller_chunks(HessianEigenSpec()) is None  # nothing to halve: members split next


@pytest.fixture
def one_page_disk(tmp_path):
    """A 4 KB tmpfs: a full disk for real (ENOSPC from the kernel), not an injected error."""
    with tmpfs(tmp_path / "disk", "4k") as mount:
        yield mount


def test_a_full_disk_while_saving_checkpoints_raises_it_and_never_retrains(
    tiny_variant, counted_training, one_page_disk
):
    """Saving is not training: a checkpoint the disk has no room for raises ENOSPC (not
    torch.save's ``RuntimeError: unexpected pos``), after one training run, with no temporary
    file left behind."""
    variants, dataset = _pack(tiny_variant)
    with pytest.raises(OSError) as info:
        run_pack(variants, METRICS, dataset, checkpoint_dir=one_page_disk)
    assert info.value.errno == errno.ENOSPC
    assert counted_training == [3]
    assert not list(one_page_disk.glob(".*.tmp"))
