"""Filter-normalised directions and surfaces: filter norms match, alpha=0 is the model's loss,
stacked evaluation equals one point at a time, and a convex problem has roughness 1."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.functional import Stack, init_stack, unstack
from landscape.metrics.batchnorm import recompute_bn_stats
from landscape.metrics.surfaces import (
    evaluate_combinations,
    filter_normalized_direction,
    normalized_total_variation,
    roughness_index,
    stack_basis,
    surface_1d,
    surface_2d,
)
from landscape.models import CNN, MLP


def _data(members, n=64, shape=(1, 8, 8), c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(members, n, *shape, generator=g)
    return x, torch.randint(0, c, (members, n), generator=g)


def test_each_filter_of_the_direction_has_the_norm_of_its_weights():
    _, stack = init_stack(lambda: CNN(1, 3, 4, True), [0, 1], "cpu")
    d = filter_normalized_direction(stack.params, torch.Generator().manual_seed(0))
    for name, w in stack.params.items():
        if w.dim() <= 2:  # (K, n): biases and BN affine are zeroed
            assert torch.equal(d[name], torch.zeros_like(w)), name
            continue
        for k in range(2):
            for i in range(w.shape[1]):  # every filter / neuron row of every member
                assert d[name][k, i].norm().item() == pytest.approx(
                    w[k, i].norm().item(), rel=1e-5
                ), name
    copied = filter_normalized_direction(
        stack.params, torch.Generator().manual_seed(0), one_dim="weights"
    )
    assert torch.equal(copied["head.bias"], stack.params["head.bias"])
    with pytest.raises(ValueError, match="one_dim"):
        filter_normalized_direction(stack.params, torch.Generator(), one_dim="filter")


def test_direction_is_seeded():
    _, stack = init_stack(lambda: MLP(4, 3, 5, 1, False), [0], "cpu")
    a = filter_normalized_direction(stack.params, torch.Generator().manual_seed(3))
    b = filter_normalized_direction(stack.params, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "build", [lambda: MLP(64, 3, 8, 2, True), lambda: CNN(1, 3, 4, False)], ids=["mlp-bn", "cnn"]
)
def test_1d_surface_at_zero_is_the_models_loss(build):
    net, stack = init_stack(build, [0, 1], "cpu")
    x, y = _data(2)
    d = filter_normalized_direction(stack.params, torch.Generator().manual_seed(0))
    alphas = torch.linspace(-1, 1, 5)
    loss, acc = surface_1d(net, stack, d, alphas, x, y)
    for k in range(2):
        params, buffers = unstack(stack, k)
        logits = net.logits(params, buffers, x[k])
        assert loss[k, 2].item() == pytest.approx(F.cross_entropy(logits, y[k]).item(), rel=1e-6)
        assert acc[k, 2].item() == pytest.approx((logits.argmax(-1) == y[k]).float().mean().item())
    assert not torch.allclose(loss[:, 0], loss[:, 2])  # the direction does move the loss


def test_stacked_evaluation_equals_one_at_a_time():
    net, stack = init_stack(lambda: CNN(1, 3, 4, True), [0, 1], "cpu")
    x, y = _data(2)
    g = torch.Generator().manual_seed(1)
    d1, d2 = (filter_normalized_direction(stack.params, g) for _ in range(2))
    grid = torch.linspace(-0.5, 0.5, 3)
    loss, acc = surface_2d(net, stack, d1, d2, grid, grid, x, y, chunk=18, batch_size=20)
    loss1, acc1 = surface_2d(net, stack, d1, d2, grid, grid, x, y, chunk=1, batch_size=64)
    assert torch.allclose(loss, loss1, atol=1e-6) and torch.equal(acc, acc1)
    for k in range(2):  # a plain loop: materialise each point, evaluate it
        params, buffers = unstack(stack, k)
        for i, alpha in enumerate(grid.tolist()):
            for j, beta in enumerate(grid.tolist()):
                point = {n: params[n] + alpha * d1[n][k] + beta * d2[n][k] for n in params}
                expected = F.cross_entropy(net.logits(point, buffers, x[k]), y[k])
                assert loss[k, i, j].item() == pytest.approx(expected.item(), rel=1e-5)


def test_combinations_with_bn_recomputation_equal_a_loop():
    net, stack = init_stack(lambda: MLP(64, 3, 8, 1, True), [0, 1], "cpu")
    x, y = _data(1)
    bn_x = x[:, :48].reshape(1, 3, 16, 1, 8, 8)
    basis = Stack(
        stack_basis(stack.select([0]).params, stack.select([1]).params),
        stack_basis(stack.select([0]).buffers, stack.select([1]).buffers),
    )
    coeffs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    loss, _ = evaluate_combinations(net, basis, coeffs, x, y, bn_x=bn_x, chunk=2)
    pa, ba = unstack(stack, 0)
    pb, _ = unstack(stack, 1)
    for i, (ca, cb) in enumerate(coeffs.tolist()):
        params = {n: ca * pa[n] + cb * pb[n] for n in pa}
        buffers = recompute_bn_stats(net, params, ba, bn_x[0])
        expected = F.cross_entropy(net.logits(params, buffers, x[0]), y[0])
        assert loss[0, i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_normalized_total_variation_of_known_slices():
    assert normalized_total_variation(
        torch.tensor([4.0, 1.0, 0.0, 1.0, 4.0])
    ).item() == pytest.approx(1.0)  # bowl
    assert normalized_total_variation(torch.tensor([3.0, 2.0, 1.0])).item() == pytest.approx(
        1.0
    )  # slope
    assert normalized_total_variation(torch.tensor([0.0, 2.0, 3.0, 1.0])).item() == pytest.approx(
        1.0
    )  # hill
    # down-up-down: TV 1 + 3 + 3 = 7 over max(valley 1 + 0, hill 2 + 3) = 5
    assert normalized_total_variation(torch.tensor([2.0, 1.0, 4.0, 1.0])).item() == pytest.approx(
        7 / 5
    )
    assert normalized_total_variation(
        torch.tensor([2.0, 0.0, 1.0, 0.0, 2.0])
    ).item() == pytest.approx(6 / 4)
    assert normalized_total_variation(torch.ones(2, 7)).tolist() == [1.0, 1.0]  # flat


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 3)

    def forward(self, x, features=False):
        return x.flatten(1) if features else self.head(x.flatten(1))


def test_roughness_of_a_convex_loss_is_one():
    net, stack = init_stack(_Linear, [0, 1], "cpu")
    x, y = _data(2)
    r = roughness_index(
        net, stack, x, y, torch.Generator().manual_seed(0), n_directions=3, n_points=11
    )
    assert r.per_direction.shape == (2, 3)
    assert torch.allclose(
        r.index, torch.ones(2, dtype=torch.float64), atol=1e-6
    )  # every slice is convex


class _Sine(nn.Module):
    """logits = head(sin(W x)): with large W the loss oscillates along any direction in W."""

    def __init__(self, scale: float):
        super().__init__()
        self.body = nn.Linear(64, 8, bias=False)
        self.head = nn.Linear(8, 3)
        self.body.weight.data *= scale

    def forward(self, x, features=False):
        h = torch.sin(self.body(x.flatten(1)))
        return h if features else self.head(h)


def test_roughness_sees_an_oscillating_landscape():
    x, y = _data(1)
    g = torch.Generator().manual_seed(0)
    rough_net, rough = init_stack(lambda: _Sine(20.0), [0], "cpu")
    calm_net, calm = init_stack(lambda: _Sine(0.05), [0], "cpu")
    rough_r = roughness_index(rough_net, rough, x, y, g, n_directions=4, n_points=41)
    calm_r = roughness_index(calm_net, calm, x, y, g, n_directions=4, n_points=41)
    assert rough_r.index.item() > 2.0
    assert calm_r.index.item() < 1.1


def test_roughness_equals_slices_one_direction_at_a_time():
    net, stack = init_stack(lambda: _Sine(3.0), [0, 1], "cpu")
    x, y = _data(2)
    g = torch.Generator().manual_seed(4)
    replay = torch.Generator().set_state(g.get_state())
    r = roughness_index(net, stack, x, y, g, n_directions=3, n_points=9, chunk=7)
    alphas = torch.linspace(-1, 1, 9)
    for k in range(3):
        d = filter_normalized_direction(stack.params, replay)
        loss, _ = surface_1d(net, stack, d, alphas, x, y)
        expected = normalized_total_variation(loss.double())
        assert torch.allclose(r.per_direction[:, k], expected, rtol=1e-4), k
