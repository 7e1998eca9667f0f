import math

import pytest
import torch

from landscape import ModelSpec, OptimSpec, TrainSpec, load_dataset
from landscape.measure import MetricsSpec
from landscape.metrics.hessian import HessianTraceSpec, hessian_eigenvalues
from landscape.optim import MemberHypers
from landscape.recorder import (
    TrajectoryRecorder,
    TrajectorySpec,
    scheduled_steps,
    stability_threshold,
)
from landscape.run import run_pack
from landscape.train import apply_update, init_state, pack_steps, train_pack
from landscape.variant import ConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (TrajectorySpec(epochs=(0, 1, 3)), [0, 10, 30, 40]),  # chosen epochs, the end always added
        (TrajectorySpec(epochs=(9,)), [0, 40]),  # clipped to training
        (TrajectorySpec(log_points=4), [0, 1, 6, 40]),  # 0, then log-spaced 1 .. 40
    ],
)
def test_schedule_always_holds_initialisation_and_end(spec, expected):
    assert scheduled_steps(spec, total_steps=40, steps_per_epoch=10) == expected


def test_unknown_trajectory_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="metrics.trajectory.metrics must be a subset"):
        TrajectorySpec(metrics=("hessian_trace", "vibes"))


def _variants(tiny_variant):
    return [
        tiny_variant(
            model=ModelSpec("mlp", width=8, depth=1),
            optim=OptimSpec(lr=lr, batch_size=16),
            train=TrainSpec(epochs=3),
            seed=s,
        )
        for lr, s in ((0.1, 0), (0.05, 1))
    ]


def test_recording_does_not_perturb_training(tiny_variant):
    variants = _variants(tiny_variant)
    dataset = load_dataset(variants[0].data)
    plain = train_pack(variants, dataset)
    spec = TrajectorySpec(enabled=True, log_points=4, sharpness_every=3)
    recorder = TrajectoryRecorder(
        spec,
        MetricsSpec(hessian_trace=HessianTraceSpec(n_probes=10, n_samples=32)),
        seed=0,
        total_steps=18,
        steps_per_epoch=6,
    )
    observed = train_pack(variants, dataset, recorder=recorder)
    for name, p in plain.pack.final.params.items():
        assert torch.equal(p, observed.pack.final.params[name])
    steps = sorted({r["step"] for r in recorder.tables["trajectory"]})
    assert steps == sorted(set(scheduled_steps(spec, 18, 6)) | set(range(0, 19, 3)))


def test_sharpness_tracking_matches_a_fresh_eigenvalue_and_reports_two_over_lr(tiny_variant):
    variants = _variants(tiny_variant)
    dataset = load_dataset(variants[0].data)
    total, spe = pack_steps(variants[0], dataset)
    spec = MetricsSpec(
        trajectory=TrajectorySpec(
            enabled=True, metrics=(), sharpness_every=spe, sharpness_iters=100
        )
    )
    rows = run_pack(variants, spec, dataset).tables["trajectory"]
    last = {r["variant_id"]: r for r in rows if r["step"] == total}
    result = train_pack(variants, dataset)
    recorder = spec.recorder(total, spe)
    x, y = result.pack.data.train_sample(
        spec.trajectory.sharpness_samples, torch.Generator().manual_seed(0 + 17)
    )
    exact = hessian_eigenvalues(
        result.pack.net,
        result.pack.final,
        x,
        y,
        k=1,
        max_iter=500,
        tol=1e-7,
        generator=torch.Generator().manual_seed(3),
    ).values[:, 0]
    assert recorder is not None
    for k, v in enumerate(variants):
        assert last[v.variant_id]["sharpness"] == pytest.approx(exact[k].item(), rel=1e-3)
        assert last[v.variant_id]["two_over_lr"] == pytest.approx(2 / v.optim.lr)
        own = 2 * (1 + v.optim.momentum) / v.optim.lr  # SGD with heavy-ball momentum
        assert last[v.variant_id]["stability_threshold"] == pytest.approx(own)


def test_lca_of_training_adds_up_to_the_loss_change(tiny_variant):
    variants = _variants(tiny_variant)
    dataset = load_dataset(variants[0].data)
    total, spe = pack_steps(variants[0], dataset)
    spec = TrajectorySpec(enabled=True, metrics=(), lca=True, lca_window=total, lca_rk4_intervals=4)
    recorder = TrajectoryRecorder(
        spec, MetricsSpec(), seed=0, total_steps=total, steps_per_epoch=spe
    )
    result = train_pack(variants, dataset, recorder=recorder)
    x, y = recorder._lca_sample
    loss = torch.func.vmap(result.pack.net.loss)
    change = loss(result.pack.final.params, result.pack.final.buffers, x, y) - loss(
        result.pack.init.params, result.pack.init.buffers, x, y
    )
    rows = recorder.tables["lca"]
    assert {(r["step"], r["step_end"]) for r in rows} == {(1, total)}
    for k in range(len(variants)):
        allocated = sum(r["allocation"] for r in rows if r["member"] == k)
        assert allocated == pytest.approx(change[k].item(), abs=2e-3)
        assert allocated < 0  # training lowered the loss


def test_snapshots_give_a_pca_path_ending_at_the_origin(tiny_variant):
    variants = _variants(tiny_variant)
    dataset = load_dataset(variants[0].data)
    spec = MetricsSpec(
        trajectory=TrajectorySpec(
            enabled=True, metrics=(), snapshots=True, log_points=6, pca_points=5
        )
    )
    tables = run_pack(variants, spec, dataset).tables
    total, spe = pack_steps(variants[0], dataset)
    for v in variants:
        path = sorted(
            (r for r in tables["path"] if r["variant_id"] == v.variant_id), key=lambda r: r["step"]
        )
        assert [r["step"] for r in path] == scheduled_steps(spec.trajectory, total, spe)
        assert path[-1]["alpha"] == pytest.approx(0, abs=1e-9) and path[-1][
            "beta"
        ] == pytest.approx(0, abs=1e-9)
        plane = [
            r for r in tables["surfaces"] if r["variant_id"] == v.variant_id and r["kind"] == "pca"
        ]
        assert len(plane) == 25


@pytest.mark.parametrize(
    ("momentum", "nesterov"), [(0.0, False), (0.5, False), (0.9, False), (0.5, True), (0.9, True)]
)
def test_stability_threshold_is_where_our_sgd_turns_unstable_on_a_quadratic(momentum, nesterov):
    """On L = lambda w^2 / 2 our SGD update (landscape.optim) shrinks w for lambda just below
    the threshold and blows it up just above: the edge Cohen et al. compare sharpness with."""
    lr = 0.1
    spec = OptimSpec(name="sgd", lr=lr, momentum=momentum, nesterov=nesterov)
    edge = stability_threshold(spec, lr)

    def final_size(curvature: float) -> float:
        w = {"w": torch.ones(1, 1, dtype=torch.float64)}
        state = init_state(spec, w)
        hypers = MemberHypers.from_specs([spec], "cpu")
        alive = torch.ones(1, dtype=torch.bool)
        for step in range(1, 2001):
            alive = apply_update(
                spec, w, {"w": curvature * w["w"]}, state, hypers, hypers.lr, step, alive
            )
        # blown up past landscape.train.DIVERGED_ABOVE: dead, its zeroed weight means nothing
        return w["w"].abs().item() if alive.item() else math.inf

    assert final_size(edge * 0.97) < 1e-3
    assert final_size(edge * 1.03) > 1e3
    assert stability_threshold(OptimSpec(name="adam"), lr) is None
