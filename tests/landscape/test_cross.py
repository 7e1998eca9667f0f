import pytest
import torch

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant, load_dataset
from landscape.cross import CrossPairSpec, cross_pairs, interpolate_pair
from landscape.measure import MetricsSpec
from landscape.metrics.hessian import HessianTraceSpec
from landscape.run import run_pack
from landscape.train import evaluate
from landscape.variant import ConfigError


def test_pairs_differ_only_in_the_varied_knobs():
    grid = [
        Variant(optim=OptimSpec(batch_size=b, lr=lr), seed=s)
        for b in (16, 64, 256)
        for lr in (0.1, 0.2)
        for s in (0, 1)
    ]
    pairs = cross_pairs(grid, ["optim.batch_size"])
    assert len(pairs) == 2 * 2 * 3  # per (lr, seed): 3 batch sizes -> 3 pairs
    for a, b in pairs:
        fa, fb = a.flat(), b.flat()
        assert {k for k in fa if fa[k] != fb[k]} == {"optim.batch_size"}


def test_vary_must_keep_one_architecture():
    with pytest.raises(ConfigError, match="must not include architecture"):
        CrossPairSpec(vary=("model.width",))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_interpolation_endpoints_are_the_two_models(tmp_path, batch_norm):
    data = DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3)
    small, large = (
        Variant(
            model=ModelSpec("mlp", width=8, depth=1, batch_norm=batch_norm),
            data=data,
            optim=OptimSpec(lr=0.1, batch_size=b),
            train=TrainSpec(epochs=2),
        )
        for b in (8, 32)
    )
    dataset = load_dataset(data)
    spec = MetricsSpec(hessian_trace=HessianTraceSpec(enabled=False))
    for v in (small, large):
        run_pack([v], spec, dataset, checkpoint_dir=tmp_path)
    cross = CrossPairSpec(enabled=True, n_alphas=5, alpha_min=0.0, alpha_max=1.0, n_samples=1000)
    rows = interpolate_pair(small, large, tmp_path, dataset, cross, "cpu")
    assert {r["split"] for r in rows} == {"train", "test"} and len(rows) == 10
    from landscape.checkpoint import load_checkpoint
    from landscape.functional import FunctionalNet
    from landscape.models import build_model

    net = FunctionalNet(build_model(small.model, dataset.input_shape, dataset.num_classes))
    for v, alpha in ((small, 0.0), (large, 1.0)):
        _, stack = load_checkpoint(tmp_path / f"{v.variant_id}.pt")
        x, y = dataset.x_test.unsqueeze(0), dataset.y_test.unsqueeze(0)
        loss, acc = evaluate(net, stack, x, y)
        row = next(r for r in rows if r["split"] == "test" and r["alpha"] == alpha)
        # with BatchNorm the statistics are recomputed on training batches, so only close
        tol = 0.2 if batch_norm else 1e-5
        assert row["loss"] == pytest.approx(loss.item(), rel=tol)
        if not batch_norm:
            assert row["accuracy"] == pytest.approx(acc.item())
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()
