import dataclasses
import math

import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.checkpoint import load_checkpoint
from landscape.measure import MetricsSpec
from landscape.metrics.hessian import HessianEigenSpec, HessianTraceSpec, SpectrumSpec
from landscape.run import metrics_id, run_pack
from landscape.train import evaluate, train_pack

FAST = MetricsSpec(hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32))


def test_every_variant_gets_one_runs_row_and_curves(tiny_variant):
    variants = [tiny_variant(seed=s) for s in range(3)]
    rows = run_pack(variants, FAST, load_dataset(variants[0].data))
    runs = rows.tables["runs"]
    assert [r["variant_id"] for r in runs] == [v.variant_id for v in variants]
    assert {r["status"] for r in runs} == {"ok"}
    assert all(r["hessian_trace"] is not None and r["pack_members"] == 3 for r in runs)
    assert {r["variant_id"] for r in rows.tables["curves"]} == {v.variant_id for v in variants}
    assert all("member" not in r for r in rows.tables["curves"])


def test_divergence_is_a_row_with_its_step(tiny_variant):
    good, bad = tiny_variant(seed=0), tiny_variant(optim=OptimSpec(lr=1e6, batch_size=16), seed=1)
    runs = run_pack([good, bad], FAST, load_dataset(good.data)).tables["runs"]
    assert runs[0]["status"] == "ok" and runs[0]["hessian_trace"] is not None
    assert runs[1]["status"] == "diverged" and runs[1]["diverged_step"] >= 1
    assert runs[1]["hessian_trace"] is None


def test_an_exception_fails_only_its_variant(tiny_variant):
    good = tiny_variant(seed=0)
    # a member whose training set is smaller than its batch: its pack fails, then it alone fails
    bad = tiny_variant(
        data=DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3, subset=8),
        seed=1,
    )
    rows = run_pack([good, bad], FAST, load_dataset(good.data))
    status = {r["variant_id"]: r for r in rows.tables["runs"]}
    assert status[good.variant_id]["status"] == "ok"
    assert status[bad.variant_id]["status"] == "failed"
    assert "optim.batch_size must be <=" in status[bad.variant_id]["error"]


def test_checkpoints_round_trip_with_weights_only(tiny_variant, tmp_path):
    variants = [tiny_variant(seed=s) for s in range(2)]
    dataset = load_dataset(variants[0].data)
    rows = run_pack(variants, FAST, dataset, checkpoint_dir=tmp_path)
    for v, row in zip(variants, rows.tables["runs"]):
        assert row["status"] == "ok"
        loaded_variant, stack = load_checkpoint(tmp_path / f"{v.variant_id}.pt")
        assert loaded_variant == v
        solo = train_pack([v], dataset)
        x = dataset.x_train.expand(1, *dataset.x_train.shape)
        y = dataset.y_train.expand(1, *dataset.y_train.shape)
        loss, _ = evaluate(solo.pack.net, stack, x, y)
        assert math.isclose(
            loss.item(), evaluate(solo.pack.net, solo.pack.final, x, y)[0].item(), rel_tol=1e-5
        )
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_a_diverged_member_gets_no_checkpoint_and_nan_losses(tiny_variant, tmp_path):
    ok, bad = (
        tiny_variant(seed=0),
        tiny_variant(optim=OptimSpec(lr=1e300, batch_size=16), seed=1),  # inf in float32
    )
    rows = run_pack([ok, bad], FAST, load_dataset(ok.data), checkpoint_dir=tmp_path)
    status = {r["variant_id"]: r for r in rows.tables["runs"]}
    assert status[bad.variant_id]["status"] == "diverged"
    assert status[bad.variant_id]["diverged_step"] == 1  # the update made its weights inf
    assert math.isnan(status[bad.variant_id]["train_loss"])
    assert math.isfinite(status[ok.variant_id]["train_loss"])
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [f"{ok.variant_id}.pt"]


def test_bf16_autocast_trains_on_the_cpu(tiny_variant):
    v = tiny_variant(
        model=ModelSpec("cnn", width=4, batch_norm=True),
        data=DataSpec("digits", subset=64),
        optim=OptimSpec(lr=0.05, batch_size=32),
        train=TrainSpec(epochs=1, precision="bf16"),
    )
    result = train_pack([v, tiny_variant(**{**v.__dict__, "seed": 1})], load_dataset(v.data))
    assert all(math.isfinite(x) for x in result.final_metrics["train_loss"])
    assert (
        result.pack.final.params["head.weight"].dtype == torch.float32
    )  # master weights stay fp32


@pytest.mark.slow
def test_compiled_step_matches_eager(tiny_variant):
    v = tiny_variant(train=TrainSpec(epochs=1))
    vc = tiny_variant(train=TrainSpec(epochs=1, compile=True))
    dataset = load_dataset(v.data)
    eager, compiled = train_pack([v], dataset), train_pack([vc], dataset)
    for n, p in eager.pack.final.params.items():
        torch.testing.assert_close(compiled.pack.final.params[n], p, rtol=1e-4, atol=1e-5)


def test_pairs_from_checkpoints_equal_the_pairs_measured_in_the_pack(tiny_variant, tmp_path):
    """A replicate group's pairs computed later from checkpoints (its members trained in
    different packs) are the pairs the pack would have measured: same rows, same values."""
    from landscape.metrics.cka import CKASpec
    from landscape.metrics.distance import DistanceSpec
    from landscape.metrics.interpolation import BarrierSpec
    from landscape.run import measure_checkpoint_pairs

    spec = MetricsSpec(
        hessian_trace=HessianTraceSpec(enabled=False),
        distance=DistanceSpec(enabled=True),
        cka=CKASpec(enabled=True, inputs="train", n_inputs=32, unbiased_batch_size=16),
        barrier=BarrierSpec(enabled=True, n_alphas=5, n_samples=64),
    )
    variants = [tiny_variant(seed=s) for s in range(3)]
    dataset = load_dataset(variants[0].data)
    packed = run_pack(variants, spec, dataset, checkpoint_dir=tmp_path).tables
    later = measure_checkpoint_pairs(
        variants, spec, dataset, "cpu", tmp_path, [(0, 1), (0, 2), (1, 2)]
    ).tables
    assert len(later["pairs"]) == 3 and len(later["surfaces"]) == 3 * 5
    key = lambda r: (r["variant_a"], r["variant_b"])  # noqa: E731
    for a, b in zip(sorted(packed["pairs"], key=key), sorted(later["pairs"], key=key)):
        assert a.keys() == b.keys()
        for column, value in a.items():
            if isinstance(value, str):
                assert value == b[column], column
            else:
                assert value == pytest.approx(b[column], rel=1e-5, abs=1e-6), column
    only = measure_checkpoint_pairs(variants, spec, dataset, "cpu", tmp_path, [(1, 2)]).tables
    assert [key(r) for r in only["pairs"]] == [(variants[1].variant_id, variants[2].variant_id)]


def test_metrics_id_ignores_how_hessian_products_are_computed() -> None:
    """``hvp`` picks the way, not the numbers: a results directory stays current when only it
    changes; a setting that changes the numbers gives another id."""
    base = MetricsSpec()
    how = MetricsSpec(
        hessian_trace=dataclasses.replace(base.hessian_trace, hvp="packed"),
        hessian_eigen=HessianEigenSpec(enabled=False, hvp="loop"),
        spectrum=SpectrumSpec(enabled=False, hvp="vmap"),
    )
    what = MetricsSpec(hessian_trace=dataclasses.replace(base.hessian_trace, n_probes=99))
    assert metrics_id(how) == metrics_id(base) != metrics_id(what)


def test_a_metric_setting_added_later_keeps_old_ids_at_its_old_behaviour() -> None:
    """bezier.max_pairs = 0 (every pair, as before the setting existed) hashes as a spec
    without the key, so results measured before it stay current; 1 is another id."""
    from landscape.metrics.bezier import BezierSpec
    from landscape.metrics.registry import metrics
    from landscape.variant import short_hash

    base = MetricsSpec()
    later = {m.name for m in metrics() if not m.hashed_when_off}  # off here: left out
    old = {k: v for k, v in dataclasses.asdict(base).items() if k not in later}
    for key in ("hessian_trace", "hessian_eigen", "spectrum"):
        old[key].pop("hvp")
    old["bezier"].pop("max_pairs")
    old["stiffness"].pop("class_groups")
    assert metrics_id(base) == short_hash(old, n=8)
    one = MetricsSpec(bezier=BezierSpec(enabled=False, max_pairs=1))
    assert metrics_id(one) != metrics_id(base)
