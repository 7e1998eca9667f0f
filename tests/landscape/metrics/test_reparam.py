"""Reparametrisation probe: the rescaled net computes the same function, its Hessian trace
moves as T^-1 H T^-1 predicts, adaptive sharpness (scale |w| on weights and biases) does not."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from landscape.functional import init_stack
from landscape.metrics.reparam import (
    find_relu_pairs,
    reparam_rows,
    reparametrisation_probe,
    rescale_relu_layers,
)
from landscape.metrics.sharpness import (
    adaptive_sharpness_average,
    adaptive_sharpness_worst,
    epsilon_sharpness,
)
from landscape.models import CNN, MLP
from tests.landscape.metrics.test_hessian import exact_hessian, gen, tiny_mlp


def exact_trace(net, x, y):
    """Stack -> (K,) trace of each member's exact Hessian (torch.func.hessian)."""
    return lambda s: torch.stack([exact_hessian(net, s, x, y, k).trace() for k in range(s.members)])


def test_pairs_of_mlps_with_and_without_batchnorm() -> None:
    assert find_relu_pairs(MLP(4, 3, 5, 2, batch_norm=False)) == [
        ("body.0", "body.2"),
        ("body.2", "head"),
    ]
    # with BN the pair is (the BN's affine, the next Linear): Linear -> BN -> ReLU
    assert find_relu_pairs(MLP(4, 3, 5, 2, batch_norm=True)) == [
        ("body.1", "body.3"),
        ("body.4", "head"),
    ]
    with pytest.raises(ValueError, match="supports landscape.models.MLP, got CNN"):
        find_relu_pairs(CNN(1, 3, 4, batch_norm=False))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("alpha", [5.0, 0.2])
def test_every_pair_rescaling_leaves_the_logits_unchanged(batch_norm: bool, alpha: float) -> None:
    """Logits before and after a function-preserving rescaling: one float32 forward, the
    rescaling changes only rounding; within 0.007 of the tolerance (measured with 1 and 2
    threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack = init_stack(lambda: MLP(4, 3, 6, 2, batch_norm), [0, 1], "cpu")
    if batch_norm:  # non-trivial running statistics and affine, so eval mode is a real test
        g = gen(7)
        stack.buffers = {
            n: (b + torch.rand(b.shape, generator=g) if b.is_floating_point() else b)
            for n, b in stack.buffers.items()
        }
        stack.params = {
            n: p + 0.3 * torch.randn(p.shape, generator=g) for n, p in stack.params.items()
        }
    x = torch.randn(2, 10, 4, generator=gen(1))
    logits = vmap(net.logits)
    base = logits(stack.params, stack.buffers, x)
    for a, b in find_relu_pairs(net.module):
        scaled = rescale_relu_layers(stack.params, a, b, alpha)
        assert not torch.allclose(scaled[f"{b}.weight"], stack.params[f"{b}.weight"])
        torch.testing.assert_close(logits(scaled, stack.buffers, x), base, rtol=1e-5, atol=1e-5)


def test_rescaling_round_trips_and_rejects_bad_input() -> None:
    _, stack, _, _ = tiny_mlp(members=2)
    there = rescale_relu_layers(stack.params, "body.0", "head", 5.0)
    back = rescale_relu_layers(there, "body.0", "head", 0.2)
    for n, p in stack.params.items():
        torch.testing.assert_close(back[n], p)
    assert back["head.bias"] is stack.params["head.bias"]  # untouched tensors are shared
    with pytest.raises(ValueError, match="alpha must be"):
        rescale_relu_layers(stack.params, "body.0", "head", 0.0)
    with pytest.raises(ValueError, match="no parameter 'body.9.weight'"):
        rescale_relu_layers(stack.params, "body.9", "head", 2.0)


def test_hessian_trace_changes_as_predicted_and_adaptive_sharpness_does_not() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=32)
    metrics = {
        "hessian_trace": exact_trace(net, x, y),
        # common random numbers: a fresh generator from one seed on every call
        "adaptive_average": lambda s: adaptive_sharpness_average(
            net, s, x, y, rho=0.5, n_draws=20, generator=gen(5)
        ),
        "adaptive_worst_inf": lambda s: adaptive_sharpness_worst(
            net, s, x, y, rho=0.01, generator=gen(5)
        ),
        "adaptive_worst_l2": lambda s: adaptive_sharpness_worst(
            net, s, x, y, rho=0.05, p="2", generator=gen(5)
        ),
        "epsilon": lambda s: epsilon_sharpness(net, s, x, y, eps=1e-2, generator=gen(5)),
    }
    probe = reparametrisation_probe(net, stack, x, alpha=5.0, metrics=metrics)
    assert probe.layers == ("body.0", "head")
    assert (probe.output_change < 1e-5).all()
    # H' = T^-1 H T^-1 with T = 5 on body.0.{weight,bias}, 1/5 on head.weight, 1 on head.bias:
    # tr H' = sum_i H_ii / t_i^2. 4*5+5 = 25 entries of body.0, then 15 of head.weight, 3 of bias
    t = torch.cat([torch.full((25,), 5.0), torch.full((15,), 0.2), torch.ones(3)])
    for k in range(2):
        predicted = (exact_hessian(net, stack, x, y, k).diagonal() / t**2).sum()
        torch.testing.assert_close(probe.after["hessian_trace"][k], predicted, rtol=1e-4, atol=0)
    assert (probe.ratio["hessian_trace"] > 2).all()  # 8.8 and 2.9 for these two members
    for name in ("adaptive_average", "adaptive_worst_inf", "adaptive_worst_l2"):
        assert (probe.before[name].abs() > 1e-3).all(), name  # well above rounding
        torch.testing.assert_close(probe.ratio[name], torch.ones(2), rtol=0, atol=1e-3)
    assert (probe.ratio["epsilon"] > 1.2).all()  # |w| + 1 is not a per-weight scale


def test_rows() -> None:
    net, stack, x, y = tiny_mlp(members=2)
    probe = reparametrisation_probe(
        net,
        stack,
        x,
        alpha=2.0,
        metrics={"norm": lambda s: s.params["head.weight"].norm(dim=(1, 2))},
    )
    rows = reparam_rows(probe, members=[4, 6])
    assert [r["member"] for r in rows] == [4, 6]
    row = rows[0]
    assert (row["metric"], row["alpha"], row["layer_a"], row["layer_b"]) == (
        "norm",
        2.0,
        "body.0",
        "head",
    )
    assert row["after"] == pytest.approx(row["before"] / 2) and row["ratio"] == pytest.approx(0.5)
