"""Loss change allocation: allocations add up to the step's loss change (exactly for a
quadratic, to the integrator's m^-4 error for a smooth net), stacked equals a loop, and a
parameter that moves downhill gets a negative allocation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from landscape.functional import init_stack, unstack
from landscape.metrics.lca import (
    allocate_loss_change,
    allocation_by_layer,
    lca_rows,
    lca_stacked,
    loss_change_allocation,
    simpson_nodes,
)
from tests.landscape.metrics.test_hessian import gen, quadratic, spd, tiny_mlp


class SmoothNet(nn.Module):
    """4 -> 5 (tanh) -> 3: a loss that is smooth along any segment (no ReLU kinks)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = self.body(x)
        return h if features else self.head(h)


def sgd_step(net, stack, x, y, lr: float) -> tuple[dict, torch.Tensor]:
    """Stacked params after one full-batch SGD step, and the step's loss change (K,)."""
    g = vmap(grad(net.loss))(stack.params, stack.buffers, x, y)
    after = {n: p - lr * g[n] for n, p in stack.params.items()}
    change = vmap(net.loss)(after, stack.buffers, x, y) - vmap(net.loss)(
        stack.params, stack.buffers, x, y
    )
    return after, change.double()


def total(alloc: dict) -> torch.Tensor:
    return sum(allocation_by_layer(alloc).values())


def test_simpson_weights() -> None:
    assert simpson_nodes(1) == [(0.0, 1 / 6), (0.5, 4 / 6), (1.0, 1 / 6)]
    # m = 2 pieces of width 1/2: 1/12 (1, 4, 2, 4, 1) at s = 0, 1/4, ..., 1
    s, w = zip(*simpson_nodes(2))
    assert s == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert w == pytest.approx((1 / 12, 4 / 12, 2 / 12, 4 / 12, 1 / 12))
    assert sum(w for _, w in simpson_nodes(7)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rk4_intervals"):
        simpson_nodes(0)


def test_quadratic_allocation_is_exact_and_matches_closed_form() -> None:
    # L = 1/2 w'Aw: the gradient is linear along the segment, so Simpson is exact and
    # A_i = d_i (A (w0 + w1) / 2)_i with d = w1 - w0
    a = spd(6, torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, -0.4], dtype=torch.float64), seed=0)
    w0 = torch.randn(6, generator=gen(1), dtype=torch.float64)
    w1 = w0 - 0.7 * a @ w0 + 0.1 * torch.randn(6, generator=gen(2), dtype=torch.float64)
    alloc = allocate_loss_change(quadratic, {"w": w0}, {"w": w1}, (a,))
    torch.testing.assert_close(alloc["w"], (w1 - w0) * (a @ (w0 + w1) / 2), rtol=1e-12, atol=0)
    change = quadratic({"w": w1}, a) - quadratic({"w": w0}, a)
    torch.testing.assert_close(alloc["w"].sum(), change, rtol=1e-12, atol=1e-14)


def test_small_sgd_step_on_relu_mlp_adds_up_to_the_loss_change() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=32)
    after, change = sgd_step(net, stack, x, y, lr=0.1)
    alloc = lca_stacked(net, stack, after, x, y)
    assert (change < -1e-3).all()  # the step helped, so the allocations sum negative
    torch.testing.assert_close(total(alloc), change, rtol=0, atol=2e-6)


def test_integration_error_falls_with_more_intervals() -> None:
    net, stack = init_stack(SmoothNet, [0, 1], "cpu")
    x = torch.randn(2, 32, 4, generator=gen(2))
    y = torch.randint(0, 3, (2, 32), generator=gen(3))
    after, change = sgd_step(net, stack, x, y, lr=3.0)  # a long step: curvature matters
    err = {
        m: (total(lca_stacked(net, stack, after, x, y, rk4_intervals=m)) - change).abs().max()
        for m in (1, 4)
    }
    assert err[1] > 1e-5  # one RK4 step is visibly off for this step (about 1e-4) ...
    assert err[4] < err[1] / 50  # ... four are (m^-4) far closer (about 3e-7 here)


def test_stacked_equals_a_loop_over_members() -> None:
    """Stacked loss-change allocation against a loop over members: one step of a tiny MLP;
    within 0.015 of the tolerance (measured with 1 and 2 threads and
    ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3, n=16)
    after, _ = sgd_step(net, stack, x, y, lr=0.5)
    got = lca_stacked(net, stack, after, x, y, rk4_intervals=2)
    for k in range(3):
        before, buffers = unstack(stack, k)
        one = loss_change_allocation(
            net, buffers, before, {n: p[k] for n, p in after.items()}, x[k], y[k], rk4_intervals=2
        )
        for n in one:
            torch.testing.assert_close(got[n][k], one[n], rtol=1e-5, atol=1e-8)


def test_a_parameter_moved_downhill_gets_negative_credit_and_still_ones_get_zero() -> None:
    net, stack, x, y = tiny_mlp(members=2, n=16)
    g = vmap(grad(net.loss))(stack.params, stack.buffers, x, y)
    after = dict(stack.params)
    after["head.bias"] = stack.params["head.bias"] - 0.5 * g["head.bias"]
    by_tensor = allocation_by_layer(lca_stacked(net, stack, after, x, y), by="tensor")
    assert (by_tensor["head.bias"] < 0).all()
    for name in ("body.0.weight", "body.0.bias", "head.weight"):
        assert torch.equal(by_tensor[name], torch.zeros(2, dtype=torch.float64)), name


def test_layer_sums_and_rows() -> None:
    alloc = {
        "body.0.weight": torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]]),  # (K=2, 1, 2)
        "body.0.bias": torch.tensor([[0.5], [0.25]]),
        "head.weight": torch.tensor([[[-4.0]], [[1.0]]]),
    }
    by_layer = allocation_by_layer(alloc)
    assert list(by_layer) == ["body.0", "head"]
    assert by_layer["body.0"].tolist() == [3.5, -0.75]
    assert by_layer["head"].tolist() == [-4.0, 1.0]
    assert allocation_by_layer(alloc, by="tensor")["body.0.bias"].tolist() == [0.5, 0.25]
    rows = lca_rows(alloc, step=7, members=[3, 5])
    assert rows[0] == {"member": 3, "step": 7, "layer": "body.0", "allocation": 3.5}
    assert rows[-1] == {"member": 5, "step": 7, "layer": "head", "allocation": 1.0}
    assert len(rows) == 4
    with pytest.raises(ValueError, match="by must be"):
        allocation_by_layer(alloc, by="neuron")
