"""Entry points on a real (tiny) trained pack: row shapes, dead members skipped, a member
paired with its own copy measures as identical, settings fail loudly."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from landscape.data import load_dataset
from landscape.functional import Stack
from landscape.measure import MetricsSpec
from landscape.metrics.bezier import BezierSpec
from landscape.metrics.cka import CKASpec
from landscape.metrics.distance import DistanceSpec
from landscape.metrics.interpolation import BarrierSpec, MLISpec
from landscape.metrics.pairs import (
    BEZIER_COLUMNS,
    measure_member_surfaces,
    measure_pairs,
    select_pairs,
)
from landscape.metrics.surfaces import SurfaceSpec
from landscape.train import train_pack
from landscape.variant import ConfigError, DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant

FAST = MetricsSpec(
    distance=DistanceSpec(),
    cka=CKASpec(n_inputs=64, unbiased_batch_size=32),
    barrier=BarrierSpec(n_samples=128),
    bezier=BezierSpec(epochs=1, batch_size=32, n_samples=128),
    mli=MLISpec(n_alphas=6, n_samples=128),
    surface=SurfaceSpec(
        n_samples=128, points_1d=5, points_2d=3, roughness_directions=2, roughness_points=5
    ),
)


@pytest.fixture(scope="module")
def trained():
    data = DataSpec(name="synthetic", n_train=128, n_test=64, n_features=8, n_classes=3)
    variants = [
        Variant(
            model=ModelSpec(name="mlp", width=8, depth=1, batch_norm=True),
            data=data,
            optim=OptimSpec(batch_size=32),
            train=TrainSpec(epochs=2),
            seed=s,
        )
        for s in range(4)
    ]
    result = train_pack(variants, load_dataset(data))
    pack = result.pack
    # member 3 becomes an exact copy of member 0; member 2 is declared diverged
    final = Stack.concat([pack.final.select([0, 1, 2]), pack.final.select([0])])
    pack = pack.replace(final=final, alive=torch.tensor([True, True, False, True]))
    return pack, result.final_metrics


def test_select_pairs_within_groups_skipping_the_dead():
    alive = torch.tensor([True, False, True, True, True])
    assert select_pairs([[0, 1, 2], [3, 4]], alive, 10, torch.Generator()) == [(0, 2), (3, 4)]
    four = select_pairs([[0, 2, 3, 4]], alive, 2, torch.Generator().manual_seed(0))
    assert len(four) == 2 and four == select_pairs(
        [[0, 2, 3, 4]], alive, 2, torch.Generator().manual_seed(0)
    )


def test_measure_pairs_rows_and_an_identical_pair(trained):
    pack, _ = trained
    out = measure_pairs(pack, [[0, 1, 2, 3]], FAST, torch.Generator().manual_seed(0))
    assert [(r["member_a"], r["member_b"]) for r in out.rows] == [(0, 1), (0, 3), (1, 3)]
    reps = ("logits", "softmax", "features")
    expected = {"member_a", "member_b", "l2_distance", "barrier_loss", "barrier_error", "mc"}
    expected |= {"bezier_loss_prev", "bezier_loss_last", "bezier_improvement"}
    expected |= {f"cka_{e}_{r}" for e in ("linear", "unbiased") for r in reps}
    assert all(set(r) == expected for r in out.rows)
    same = out.rows[1]  # member 3 is a copy of member 0
    assert same["l2_distance"] == 0.0
    for r in reps:
        assert same[f"cka_linear_{r}"] == pytest.approx(1.0, abs=1e-9)
        assert same[f"cka_unbiased_{r}"] == pytest.approx(1.0, abs=1e-9)
    assert same["barrier_loss"] == pytest.approx(0.0, abs=1e-5)
    assert same["barrier_error"] == pytest.approx(0.0, abs=1e-4)
    assert abs(same["mc"]) < 1.0
    assert out.rows[0]["l2_distance"] > 0 and out.rows[0]["cka_linear_logits"] < 1.0
    kinds = [s["kind"] for s in out.surfaces]
    assert kinds.count("interpolation") == 3 * 11 and kinds.count("bezier") == 3 * 5
    assert set(out.surfaces[0]) == {"member_a", "member_b", "kind", "alpha", "loss", "accuracy"}


def test_bezier_max_pairs_curves_the_first_pair_of_each_group_only(trained):
    """bezier.max_pairs = 1 (Yang et al.: one curve per cell): the first pair in seed order gets
    a curve, the others NaN mc; every other column is measured for every pair exactly as
    without the cap (their draws come before the curves')."""
    pack, _ = trained
    capped = dataclasses.replace(FAST, bezier=dataclasses.replace(FAST.bezier, max_pairs=1))
    full = measure_pairs(pack, [[0, 1, 2, 3]], FAST, torch.Generator().manual_seed(0))
    out = measure_pairs(pack, [[0, 1, 2, 3]], capped, torch.Generator().manual_seed(0))
    assert [math.isnan(r["mc"]) for r in out.rows] == [False, True, True]
    for got, want in zip(out.rows, full.rows):
        assert {k: v for k, v in got.items() if k not in BEZIER_COLUMNS} == {
            k: v for k, v in want.items() if k not in BEZIER_COLUMNS
        }
    curves = {(s["member_a"], s["member_b"]) for s in out.surfaces if s["kind"] == "bezier"}
    assert curves == {(0, 1)}


def test_disabled_metrics_leave_no_columns(trained):
    pack, _ = trained
    specs = dataclasses.replace(
        FAST,
        cka=CKASpec(enabled=False),
        bezier=BezierSpec(enabled=False),
        barrier=BarrierSpec(enabled=False),
    )
    out = measure_pairs(pack, [[0, 1], [3]], specs, torch.Generator().manual_seed(0))
    assert out.rows == [{"member_a": 0, "member_b": 1, "l2_distance": out.rows[0]["l2_distance"]}]
    assert out.surfaces == []
    assert measure_pairs(pack, [[0], [1, 2]], specs, torch.Generator()).rows == []  # no living pair


def test_member_surfaces(trained):
    pack, metrics = trained
    out = measure_member_surfaces(pack, FAST, torch.Generator().manual_seed(0))
    assert set(out.columns) == {
        "dist_to_init",
        "mli_monotonic",
        "mli_max_bump",
        "roughness",
        "roughness_std",
    }
    for values in out.columns.values():
        assert len(values) == 4 and values[2] is None and None not in values[:2]
    moved = torch.cat(
        [(pack.final.params[n][1] - pack.init.params[n][1]).flatten() for n in pack.final.params]
    )
    assert out.columns["dist_to_init"][1] == pytest.approx(moved.norm().item(), rel=1e-6)
    kinds = [r["kind"] for r in out.surfaces]
    assert (kinds.count("mli"), kinds.count("1d"), kinds.count("2d")) == (3 * 6, 3 * 5, 3 * 9)
    centre = [
        r for r in out.surfaces if r["kind"] == "1d" and r["alpha"] == 0.0 and r["member"] == 1
    ]
    # the sample is member 1's whole training set, so alpha = 0 is its training loss
    assert centre[0]["loss"] == pytest.approx(metrics["train_loss"][1], rel=1e-5)
    assert centre[0]["beta"] is None


def test_seeded(trained):
    pack, _ = trained
    specs = dataclasses.replace(FAST, surface=SurfaceSpec(enabled=False))
    a = measure_pairs(pack, [[0, 1]], specs, torch.Generator().manual_seed(5))
    b = measure_pairs(pack, [[0, 1]], specs, torch.Generator().manual_seed(5))
    np.testing.assert_equal(a.rows, b.rows)  # NaN (a curve too short for its windows) == NaN


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: CKASpec(inputs="validation"), "cka.inputs"),
        (lambda: CKASpec(unbiased_batch_size=3), "cka.unbiased_batch_size"),
        (lambda: CKASpec(representations=("pixels",)), "cka.representations"),
        (lambda: BezierSpec(ts=(0.0, 0.5)), "bezier.ts"),
        (lambda: BezierSpec(momentum=1.0), "bezier.momentum"),
        (lambda: BezierSpec(max_pairs=-1), "bezier.max_pairs"),
        (lambda: SurfaceSpec(one_dim="filter"), "surface.one_dim"),
        (lambda: SurfaceSpec(points_2d=1), "points_2d"),
        (lambda: BarrierSpec(n_alphas=1), "barrier.n_alphas"),
        (lambda: MetricsSpec(max_pairs=0), "max_pairs"),
    ],
)
def test_settings_fail_loudly(build, key):
    with pytest.raises(ConfigError, match=key):
        build()
