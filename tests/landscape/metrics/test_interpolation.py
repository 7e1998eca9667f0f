"""Linear interpolation barrier and MLI: exact answers on a model with itself and on a convex
problem (multinomial logistic regression, whose cross-entropy is convex in the weights)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.functional import Stack, init_stack, unstack
from landscape.metrics.batchnorm import bn_batches, recompute_bn_stats
from landscape.metrics.interpolation import (
    barrier,
    evaluate_line,
    linear_barrier,
    max_bump,
    monotonic_linear_interpolation,
)
from landscape.models import MLP


class LogisticRegression(nn.Module):
    def __init__(self, d: int = 6, c: int = 3):
        super().__init__()
        self.head = nn.Linear(d, c)

    def forward(self, x, features=False):
        return x if features else self.head(x)


def _data(n=96, d=6, c=3, seed=0, members=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)  # random labels: not separable, a finite optimum
    return x.expand(members, n, d), y.expand(members, n)


def _optimum(x, y, stack: Stack, k=0) -> Stack:
    """Member k of ``stack`` moved to the logistic-regression optimum on (x, y) by L-BFGS."""
    model = LogisticRegression()
    model.load_state_dict(unstack(stack, k)[0])
    opt = torch.optim.LBFGS(
        model.parameters(), max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    return Stack({n: p.detach()[None] for n, p in model.named_parameters()}, {})


def test_barrier_of_known_curves():
    alphas = torch.linspace(0, 1, 5)
    assert barrier(torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0]), alphas).item() == 2.0
    assert barrier(torch.tensor([1.0, 1.25, 1.5, 1.75, 2.0]), alphas).item() == 0.0  # on the chord
    assert barrier(torch.tensor([[2.0, 1.0, 0.0, 1.0, 2.0]]), alphas).tolist() == [
        0.0
    ]  # below: 0 at the ends
    with pytest.raises(ValueError, match="from 0 to 1"):
        barrier(torch.zeros(3), torch.tensor([0.0, 0.5, 0.9]))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
def test_barrier_between_a_model_and_itself_is_zero(batch_norm):
    net, stack = init_stack(lambda: MLP(6, 3, 8, 2, batch_norm), [0], "cpu")
    x, y = _data(members=1)
    bn_x = bn_batches(x, 2, 32) if batch_norm else None
    res = linear_barrier(net, stack, stack, x, y, n_alphas=11, bn_x=bn_x)
    assert res.loss.item() == pytest.approx(0.0, abs=1e-5)
    assert res.error.item() == pytest.approx(0.0, abs=1e-4)  # float32 chord of equal ends
    assert res.curve_loss.shape == (1, 11)


def test_barrier_is_zero_on_a_convex_problem():
    net, stack = init_stack(LogisticRegression, [0, 1, 2, 3], "cpu")
    a, b = stack.select([0, 1]), stack.select([2, 3])
    x, y = _data()
    res = linear_barrier(net, a, b, x, y, n_alphas=21)
    chord = (1 - res.alphas) * res.curve_loss[:, :1] + res.alphas * res.curve_loss[:, -1:]
    assert (res.curve_loss - chord <= 1e-6).all()  # convexity: the path never rises above the chord
    assert torch.allclose(res.loss, torch.zeros(2), atol=1e-6)
    assert (res.curve_loss[:, 1:-1] - chord[:, 1:-1] < -1e-3).all()  # strictly below inside


def test_evaluate_line_equals_direct_evaluation():
    net, stack = init_stack(lambda: MLP(6, 3, 8, 1, True), [0, 1], "cpu")
    x, y = _data(members=1)
    bn_x = bn_batches(x, 2, 48)
    alphas = torch.tensor([0.0, 0.3, 1.0])
    loss, acc = evaluate_line(
        net, stack.select([0]), stack.select([1]), alphas, x, y, bn_x=bn_x, chunk=2
    )
    pa, ba = unstack(stack, 0)
    pb, _ = unstack(stack, 1)
    for i, alpha in enumerate(alphas.tolist()):
        params = {n: (1 - alpha) * pa[n] + alpha * pb[n] for n in pa}
        buffers = recompute_bn_stats(net, params, ba, bn_x[0])
        logits = functional_call(MLP(6, 3, 8, 1, True).eval(), (params, buffers), (x[0],))
        assert loss[0, i].item() == pytest.approx(
            nn.functional.cross_entropy(logits, y[0]).item(), rel=1e-5
        )
        assert acc[0, i].item() == pytest.approx((logits.argmax(-1) == y[0]).float().mean().item())


def test_max_bump_of_known_paths():
    assert max_bump(torch.tensor([3.0, 2.0, 1.0])).item() == 0.0
    assert max_bump(torch.tensor([3.0, 1.0, 2.0, 0.0])).item() == 1.0
    assert max_bump(torch.tensor([1.0, 2.0, 0.5, 3.0])).item() == 2.5  # 3 - 0.5, after the dip


def test_mli_toward_a_convex_optimum_is_monotonic():
    net, stack = init_stack(LogisticRegression, [0], "cpu")
    x, y = _data(members=1)
    final = _optimum(x[0], y[0], stack)
    res = monotonic_linear_interpolation(net, stack, final, x, y, n_alphas=21, tol=1e-6)
    assert res.monotonic.tolist() == [True]
    assert res.max_bump.item() <= 1e-6
    # away from the optimum the loss only rises: the bump is the whole rise L(w_1) - L(w_0)
    away = monotonic_linear_interpolation(net, final, stack, x, y, n_alphas=21)
    assert away.monotonic.tolist() == [False]
    assert away.max_bump.item() == pytest.approx(
        (away.loss[0, -1] - away.loss[0, 0]).item(), rel=1e-6
    )
