"""measure_local: columns and tables, dead members, seed independence, spec validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from landscape.functional import Stack, init_stack
from landscape.metrics.gradients import GradientStatsSpec
from landscape.metrics.hessian import HessianEigenSpec, HessianTraceSpec, SpectrumSpec
from landscape.metrics.local import local_columns, measure_local
from landscape.metrics.lr_range import LRRangeSpec
from landscape.metrics.sharpness import SharpnessSpec
from landscape.metrics.stiffness import StiffnessSpec
from landscape.models import MLP
from landscape.pack import PackData, TrainedPack
from landscape.variant import ModelSpec, OptimSpec, Variant
from tests.landscape.metrics.test_hessian import gen

# Everything on, every knob small: a few seconds on one CPU core.
SMALL = {
    "hessian_trace": HessianTraceSpec(n_samples=24, n_probes=20, chunk=10),
    "hessian_eigen": HessianEigenSpec(n_samples=24, k=2, max_iter=20),
    "spectrum": SpectrumSpec(enabled=True, n_samples=24, n_iter=10, n_grid=50),
    "sharpness": SharpnessSpec(n_samples=24, steps=3, n_draws=4, chunk=2),
    "gradient_stats": GradientStatsSpec(n_samples=24, flatness_batches=2, max_iter=10),
    "stiffness": StiffnessSpec(enabled=True, n_samples=18, chunk=8),
    "lr_range": LRRangeSpec(enabled=True, lr_min=1e-3, lr_max=10.0, steps=8),
}


def tiny_pack(members: int = 3) -> TrainedPack:
    g = gen(21)
    variants = [
        Variant(
            model=ModelSpec("mlp", width=5, depth=1),
            optim=OptimSpec(lr=0.1 * (k + 1), batch_size=4),
            seed=k,
        )
        for k in range(members)
    ]
    net, stack = init_stack(lambda: MLP(4, 3, 5, 1, batch_norm=False), list(range(members)), "cpu")
    x = torch.randn(64, 4, generator=g)
    idx = torch.stack([torch.randperm(64, generator=g)[:40] for _ in range(members)])
    y = torch.randint(0, 3, (members, 40), generator=g)
    data = PackData(x, idx, y, x[40:], torch.randint(0, 3, (24,), generator=g), num_classes=3)
    return TrainedPack(
        variants, net, stack.clone(), stack, data, torch.ones(members, dtype=torch.bool)
    )


@pytest.fixture(scope="module")
def measured():
    pack = tiny_pack()
    return pack, measure_local(pack, SMALL, gen(0))


def test_every_column_has_one_finite_value_per_member(measured) -> None:
    _, result = measured
    assert list(result.columns) == local_columns(SMALL)
    for name in ("hessian_top_eig", "hessian_eig_2", "flatness_ratio", "stiffness_between_sign"):
        assert name in result.columns
    for name, values in result.columns.items():
        assert len(values) == 3 and all(math.isfinite(v) for v in values), name
    assert all(isinstance(v, int) for v in result.columns["hessian_trace_probes"])
    for name in ("eps_sharpness", "adaptive_sharpness_worst", "fisher_trace"):
        assert all(v >= 0 for v in result.columns[name]), name


def test_tables_have_their_columns_and_members(measured) -> None:
    _, result = measured
    expect = {
        "spectra": ({"member", "eigenvalue", "density"}, 3 * 50),
        "stiffness": ({"member", "class_a", "class_b", "s_cos", "s_sign"}, 3 * 3 * 3),
        "lr_range": ({"member", "step", "lr", "loss"}, None),
    }
    for table, (keys, count) in expect.items():
        rows = result.tables[table]
        assert all(r.keys() == keys for r in rows), table
        assert {r["member"] for r in rows} == {0, 1, 2}, table
        if count is not None:
            assert len(rows) == count, table


def test_dead_member_is_none_and_others_unchanged(measured) -> None:
    pack, full = measured
    poisoned = Stack({n: p.clone() for n, p in pack.final.params.items()}, dict(pack.final.buffers))
    for p in poisoned.params.values():
        p[1] = float("nan")
    dead = pack.replace(final=poisoned, alive=torch.tensor([True, False, True]))
    result = measure_local(dead, SMALL, gen(0))
    for name, values in result.columns.items():
        assert values[1] is None, name
        for k in (0, 2):
            assert values[k] == pytest.approx(full.columns[name][k], rel=1e-4, abs=1e-6), name
    for table, rows in result.tables.items():
        assert {r["member"] for r in rows} == {0, 2}, table


def test_all_dead_gives_none_columns_and_empty_tables() -> None:
    pack = tiny_pack(2).replace(alive=torch.zeros(2, dtype=torch.bool))
    result = measure_local(pack, SMALL, gen(0))
    assert list(result.columns) == local_columns(SMALL)
    assert all(v == [None, None] for v in result.columns.values())
    assert result.tables == {"spectra": [], "stiffness": [], "lr_range": []}


def test_switching_a_metric_off_changes_no_other(measured) -> None:
    pack, full = measured
    only_trace = {name: dataclasses.replace(s, enabled=False) for name, s in SMALL.items()}
    only_trace["hessian_trace"] = SMALL["hessian_trace"]
    result = measure_local(pack, only_trace, gen(0))
    assert list(result.columns) == ["hessian_trace", "hessian_trace_se", "hessian_trace_probes"]
    assert result.columns["hessian_trace"] == full.columns["hessian_trace"]
    assert result.tables == {}


@pytest.mark.parametrize(
    "build, message",
    [
        pytest.param(
            lambda: HessianTraceSpec(n_probes=0),
            "hessian_trace.n_probes must be finite and > 0",
            id="probes",
        ),
        pytest.param(
            lambda: SharpnessSpec(worst_p="1"), "sharpness.worst_p must be one of inf, 2", id="norm"
        ),
        pytest.param(
            lambda: SharpnessSpec(eps=-1.0), "sharpness.eps must be finite and >= 0", id="eps"
        ),
        pytest.param(
            lambda: LRRangeSpec(lr_min=1.0, lr_max=0.5), "lr_range.lr_min must be <", id="range"
        ),
        pytest.param(
            lambda: HessianEigenSpec(k=0), "hessian_eigen.k must be finite and > 0", id="k"
        ),
        pytest.param(
            lambda: HessianEigenSpec(hvp="fast"),
            "metrics.hessian_eigen.hvp must be one of auto, vmap, loop, packed, got 'fast'",
            id="hvp",
        ),
    ],
)
def test_specs_reject_bad_values(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
