import dataclasses

import pytest

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.measure import MetricsSpec, measure_pack
from landscape.metrics.bezier import BezierSpec
from landscape.metrics.cka import CKASpec
from landscape.metrics.distance import DistanceSpec
from landscape.metrics.hessian import HessianTraceSpec, SpectrumSpec
from landscape.metrics.interpolation import BarrierSpec, MLISpec
from landscape.metrics.stiffness import StiffnessSpec
from landscape.metrics.surfaces import SurfaceSpec
from landscape.train import train_pack

SMALL = MetricsSpec(
    hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32),
    spectrum=SpectrumSpec(enabled=True, n_samples=32, n_iter=10, n_grid=50),
    stiffness=StiffnessSpec(enabled=True, n_samples=24),
    distance=DistanceSpec(enabled=True),
    cka=CKASpec(enabled=True, inputs="train", n_inputs=32, unbiased_batch_size=16),
    barrier=BarrierSpec(enabled=True, n_alphas=5, n_samples=64),
    bezier=BezierSpec(enabled=True, epochs=1, batch_size=16, n_samples=64),
    mli=MLISpec(enabled=True, n_alphas=5, n_samples=64),
    surface=SurfaceSpec(
        enabled=True,
        n_samples=32,
        points_1d=5,
        points_2d=3,
        roughness_directions=2,
        roughness_points=5,
    ),
)


@pytest.fixture(scope="module")
def trained():
    data = DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3)
    variants = [
        dataclasses.replace(v, seed=s)
        for v in [
            __import__("landscape").Variant(
                model=ModelSpec("mlp", width=8, depth=1),
                data=data,
                optim=OptimSpec(lr=lr, batch_size=16),
                train=TrainSpec(epochs=2),
            )
            for lr in (0.1, 0.05)
        ]
        for s in (0, 1)
    ]
    return variants, train_pack(variants, load_dataset(data))


def test_every_enabled_metric_lands_in_a_column_or_table(trained):
    _, result = trained
    measured = measure_pack(result.pack, SMALL)
    for column in (
        "hessian_trace",
        "hessian_trace_se",
        "stiffness_within_cos",
        "dist_to_init",
        "mli_monotonic",
        "roughness",
    ):
        assert len(measured.columns[column]) == 4 and None not in measured.columns[column], column
    assert {"spectra", "stiffness", "pairs", "surfaces"} <= set(measured.tables)
    pairs = measured.tables["pairs"]
    assert len(pairs) == 2  # one pair in each of the two replicate groups (seeds 0 and 1)
    for row in pairs:
        assert result.pack.variants[row["member_a"]].group_id == row["group_id"]
        assert result.pack.variants[row["member_b"]].group_id == row["group_id"]
        assert {"l2_distance", "cka_linear_logits", "barrier_loss", "mc"} <= set(row)
    kinds = {r["kind"] for r in measured.tables["surfaces"]}
    assert kinds == {"interpolation", "bezier", "mli", "1d", "2d"}


def test_a_member_measured_in_a_pack_equals_it_measured_alone(trained):
    variants, result = trained
    spec = MetricsSpec(hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32))
    packed = measure_pack(result.pack, spec).columns["hessian_trace"]
    for k in (0, 3):
        alone = result.pack.replace(
            variants=[variants[k]],
            init=result.pack.init.member(k),
            final=result.pack.final.member(k),
            data=result.pack.data.select([k]),
            alive=result.pack.alive[k : k + 1],
        )
        assert measure_pack(alone, spec).columns["hessian_trace"][0] == pytest.approx(
            packed[k], rel=1e-6
        )
