"""Bezier mode connectivity: Yang's scalar on known errors, the schedule, one stacked SGD step
against autograd, and a known connected valley (a network and its hidden-unit permutation)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscape.functional import Stack, flatten, init_stack
from landscape.metrics.bezier import (
    bezier_coeffs,
    bezier_connectivity,
    bezier_lr_factor,
    convergence,
    train_bezier,
    yang_mc,
)
from landscape.metrics.interpolation import linear_barrier
from landscape.models import MLP


def test_coefficients_hit_the_endpoints_and_sum_to_one():
    c = bezier_coeffs(torch.tensor([0.0, 0.5, 1.0]))
    assert c.tolist() == [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]
    assert torch.allclose(bezier_coeffs(torch.rand(10)).sum(-1), torch.ones(10))


def test_schedule_constant_then_linear_to_one_percent():
    total = 100
    assert [bezier_lr_factor(s, total) for s in (0, 50)] == [1.0, 1.0]
    assert bezier_lr_factor(70, total) == pytest.approx(1 - 0.99 * 0.5)
    assert bezier_lr_factor(90, total) == pytest.approx(0.01)
    assert bezier_lr_factor(99, total) == 0.01


def test_yang_mc_of_known_error_curves():
    errors = torch.tensor(
        [
            [1.0, 5.0, 9.0, 4.0, 1.0],  # a barrier: mid 1, u = 2 -> 1 - 9
            [10.0, 2.0, 3.0, 4.0, 10.0],  # the curve beats its ends: mid 10, u = 1 -> 10 - 2
            [3.0, 3.0, 3.0, 3.0, 3.0],  # flat: connected
            [
                2.0,
                3.0,
                3.0,
                3.0,
                4.0,
            ],  # mid 3: the largest deviation is an endpoint (|2 - 3|), first wins
        ]
    )
    assert yang_mc(errors).tolist() == [-8.0, 8.0, 0.0, 1.0]


def test_one_stacked_step_equals_autograd_sgd_on_garipovs_objective():
    """Cross-entropy at phi(t) plus Garipov et al.'s 0.5 wd ||phi(t)||^2, plain SGD on w_c:
    the step's weight-decay part is wd 2t(1-t) phi(t), not wd w_c."""
    net, stack = init_stack(lambda: MLP(3, 2, 4, 1, False), [0, 1, 2, 3], "cpu")
    a, b = stack.select([0, 1]), stack.select([2, 3])
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (2, 8), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    replay = torch.Generator().set_state(g.get_state())
    control, _ = train_bezier(net, a, b, lambda gen: (x, y), 1, g, lr=0.1, weight_decay=0.01)
    t = torch.rand(2, generator=replay)  # the t each pair drew
    module = MLP(3, 2, 4, 1, False)
    for p in range(2):
        c = {n: ((a.params[n][p] + b.params[n][p]) / 2).requires_grad_() for n in a.params}
        point = {
            n: (1 - t[p]) ** 2 * a.params[n][p]
            + 2 * t[p] * (1 - t[p]) * c[n]
            + t[p] ** 2 * b.params[n][p]
            for n in c
        }
        ce = F.cross_entropy(functional_call(module, point, (x[p],)), y[p])
        grads = torch.autograd.grad(ce, list(c.values()))
        for (name, value), grad in zip(c.items(), grads):
            decay = 0.01 * 2 * t[p] * (1 - t[p]) * point[name]  # d/dw_c of 0.5 wd ||phi(t)||^2
            expected = value - 0.1 * (grad + decay)  # SGD step 1: buffer = gradient
            assert torch.allclose(control[name][p], expected.detach(), atol=1e-6), name
            assert not torch.allclose(control[name][p], (value - 0.1 * (grad + 0.01 * value)))


def test_a_curve_whose_training_blows_up_comes_back_nan():
    """Not a zeroed control point posing as a trained one: NaN control point and loss."""
    net, stack = init_stack(lambda: MLP(3, 2, 4, 1, False), [0, 1, 2, 3], "cpu")
    a, b = stack.select([0, 1]), stack.select([2, 3])
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (2, 8), generator=torch.Generator().manual_seed(1))
    control, loss = train_bezier(
        net, a, b, lambda gen: (x, y), 3, torch.Generator().manual_seed(2), lr=float("inf")
    )
    assert torch.isnan(loss).all()
    assert all(torch.isnan(p).all() for p in control.values())
    control, loss = train_bezier(net, a, b, lambda gen: (x, y), 3, torch.Generator().manual_seed(2))
    assert torch.isfinite(loss).all() and all(torch.isfinite(p).all() for p in control.values())


def _xor(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return x, ((x[:, 0] * x[:, 1]) > 0).long()


def test_a_known_connected_valley_has_mc_near_zero():
    """A trained ReLU net and the same net with its hidden units permuted compute the same
    function; the straight line between them averages units and has an error barrier, while
    a quadratic curve finds the valley that joins them (Garipov et al. 2018)."""
    x, y = _xor()
    torch.manual_seed(0)
    model = MLP(2, 2, 64, 1, False)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(400):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    w = {n: p.detach() for n, p in model.named_parameters()}
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    permuted = {
        "body.0.weight": w["body.0.weight"][perm],
        "body.0.bias": w["body.0.bias"][perm],
        "head.weight": w["head.weight"][:, perm],
        "head.bias": w["head.bias"],
    }
    net, _ = init_stack(lambda: MLP(2, 2, 64, 1, False), [0], "cpu")
    a = Stack({n: v[None] for n, v in w.items()}, {})
    b = Stack({n: v[None] for n, v in permuted.items()}, {})

    def draw(gen):
        i = torch.randint(0, len(y), (64,), generator=gen)
        return x[i][None], y[i][None]

    straight = linear_barrier(net, a, b, x[None], y[None], n_alphas=11)
    curve = bezier_connectivity(
        net,
        a,
        b,
        draw,
        300,
        x[None],
        y[None],
        torch.Generator().manual_seed(1),
        lr=0.2,
        weight_decay=0.0,
    )
    assert curve.curve_error[0, 0].item() == 0.0 and curve.curve_error[0, -1].item() == 0.0
    assert straight.error.item() > 3.0  # the straight line crosses a barrier
    assert abs(curve.mc.item()) <= 1.0  # the curve does not (1 % = 2.56 of 256 examples)
    assert curve.mc.item() > -straight.error.item() / 2


def test_identical_endpoints_are_connected():
    net, stack = init_stack(lambda: MLP(2, 2, 16, 1, True), [0], "cpu")
    x, y = _xor(64)
    bn_x = x[None, :64].reshape(1, 2, 32, 2)
    res = bezier_connectivity(
        net,
        stack,
        stack,
        lambda g: (x[None, :32], y[None, :32]),
        5,
        x[None],
        y[None],
        torch.Generator().manual_seed(0),
        bn_x=bn_x,
    )
    assert res.mc.item() == pytest.approx(0.0, abs=1e-4)
    assert res.curve_error.shape == (1, 5)


def test_ts_must_span_the_curve():
    net, stack = init_stack(lambda: MLP(2, 2, 4, 1, False), [0], "cpu")
    with pytest.raises(ValueError, match="from 0.0 to 1.0"):
        bezier_connectivity(
            net,
            stack,
            stack,
            None,
            1,
            torch.zeros(1, 4, 2),
            torch.zeros(1, 4, dtype=torch.long),
            torch.Generator(),
            ts=(0.0, 0.5),
        )


def test_a_blown_up_pair_reads_nan_and_leaves_the_other_pairs_unchanged():
    """A pair whose curve training turns NaN at step 1 is quarantined: the other pair's curve
    equals its curve in a pack of the same shape whose pair 0 is healthy. Same shapes, so the
    same kernels on the other pair's numbers: equal to float32 rounding, measured exactly equal
    (measured with 1 and 2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack = init_stack(lambda: MLP(2, 2, 8, 1, False), [0, 1, 2, 3], "cpu")
    a, b = stack.select([0, 1]), stack.select([2, 3])
    x, y = _xor(64)
    xs, ys = x[None].repeat(2, 1, 1), y[None].repeat(2, 1)
    bad = xs.clone()
    bad[0, 0, 0] = float("nan")  # pair 0's training batch: its loss turns NaN at step 1

    def run(a, b, train_x, n):
        return bezier_connectivity(
            net, a, b, lambda g: (train_x, ys[:n]), 4, xs[:n], ys[:n],
            torch.Generator().manual_seed(0), lr=0.1,
        )  # fmt: skip

    both = run(a, b, bad, 2)
    assert torch.isnan(both.mc[0]) and torch.isnan(both.curve_loss[0]).all()
    assert torch.isfinite(both.curve_loss[1]).all()
    assert both.curve_error.shape == (2, 5)
    healthy = run(a, b, xs, 2)  # the same draws of t, pair 0 healthy
    torch.testing.assert_close(both.curve_loss[1], healthy.curve_loss[1])
    torch.testing.assert_close(both.mc[1], healthy.mc[1])


def _curve_pairs(device: str):
    net, stack = init_stack(lambda: MLP(6, 3, 16, 2, True), [0, 1, 2, 3], device)
    x = torch.randn(2, 32, 6, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.randint(0, 3, (2, 32), generator=torch.Generator().manual_seed(1)).to(device)
    return net, stack.select([0, 1]), stack.select([2, 3]), (lambda gen: (x, y))


def test_bf16_curve_step_is_the_fp32_step_to_bf16_rounding():
    """One curve step under bf16 autocast against the same step in fp32, from the same point on
    the same batch and t: the update is lr x a gradient computed with bf16 operands (8-bit
    mantissa, relative rounding ~4e-3 per product, a few products deep), so the two updates
    agree to a few percent of the update's norm; one step, so nothing compounds it."""
    net, a, b, draw = _curve_pairs("cpu")
    start = {n: (a.params[n] + b.params[n]) / 2 for n in a.params}
    fp32, _ = train_bezier(net, a, b, draw, 1, torch.Generator().manual_seed(3), lr=0.5)
    bf16, loss = train_bezier(
        net, a, b, draw, 1, torch.Generator().manual_seed(3), lr=0.5, precision="bf16"
    )
    assert torch.isfinite(loss).all()
    d32 = torch.cat([(fp32[n] - start[n]).flatten() for n in start])
    d16 = torch.cat([(bf16[n] - start[n]).flatten() for n in start])
    assert d32.norm() > 0
    assert (d16 - d32).norm() <= 0.05 * d32.norm()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replayed_curve_steps_equal_eager_steps():
    """Six curve steps (three eager warm-ups, the recording, two replays) against six eager
    steps: a replay launches the kernels the eager step launched on the same inputs, so the
    control points agree to float32 rounding of identical arithmetic (an MLP: plain matrix
    products, no algorithm search that could pick other kernels)."""
    net, a, b, draw = _curve_pairs("cuda")
    eager, le = train_bezier(
        net, a, b, draw, 6, torch.Generator().manual_seed(3), cuda_graphs=False
    )
    graph, lg = train_bezier(net, a, b, draw, 6, torch.Generator().manual_seed(3), cuda_graphs=True)
    assert torch.allclose(le, lg, atol=1e-6)
    for n in eager:
        assert torch.allclose(eager[n], graph[n], atol=1e-6), n


def test_convergence_windows_are_the_last_two_fifths():
    """Per-step losses of two pairs over 10 steps: windows of 2 steps, steps 6-7 and 8-9."""
    losses = [torch.tensor([10.0 - i, 1.0]) for i in range(10)]
    prev, last, improvement = convergence(losses)
    assert prev.tolist() == [3.5, 1.0] and last.tolist() == [1.5, 1.0]
    assert improvement.tolist() == [pytest.approx(2 / 3.5), 0.0]
    # under 5 steps there is no window: NaN, not a verdict
    assert torch.isnan(convergence(losses[:4])[2]).all()


def test_train_bezier_history_is_each_steps_loss():
    """The history's last entry is the loss train_bezier returns, one entry per step."""
    net, stack = init_stack(lambda: MLP(3, 2, 4, 1, False), [0, 1, 2, 3], "cpu")
    a, b = stack.select([0, 1]), stack.select([2, 3])
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (2, 8), generator=torch.Generator().manual_seed(1))
    history = []
    _, loss = train_bezier(
        net, a, b, lambda gen: (x, y), 6, torch.Generator().manual_seed(1), history=history
    )
    assert len(history) == 6 and torch.equal(history[-1], loss)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pair_by_pair_curve_step_equals_the_vmapped_one(batch_norm):
    """``CurveStep(mode="loop")`` (the CPU default for a few pairs) against ``mode="vmap"``:
    three steps from the same start in float64, control points and losses. The two evaluate
    the same objective with the same kernels up to how a matrix product is batched, so in
    float64 they agree to rounding (1e-12 relative), far below any difference a wrong term
    (a missing t factor, the decay on w_c instead of phi(t), running instead of batch
    statistics) would make."""
    from landscape.metrics.bezier import CurveStep
    from landscape.optim import MemberHypers

    net, stack = init_stack(lambda: MLP(5, 3, 6, 2, batch_norm).double(), [0, 1, 2, 3], "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 2, 8), generator=g)
    t = torch.rand(3, 2, generator=g, dtype=torch.float64)
    out = {}
    for mode in ("loop", "vmap"):
        a, b = stack.select([0, 1]), stack.select([2, 3])
        c = {n: (a.params[n] + b.params[n]) / 2 for n in a.params}
        hypers = MemberHypers(*(torch.full((2,), v, dtype=torch.float64) for v in (0.1, 0.9, 0.0)))
        step = CurveStep(net, c, a, b, hypers, weight_decay=0.01, mode=mode)
        losses = [step(x[i], y[i], t[i], hypers.lr) for i in range(3)]
        out[mode] = (step.flat["control"].clone(), torch.stack(losses))
    start = (flatten(stack.select([0, 1]).params, 1) + flatten(stack.select([2, 3]).params, 1)) / 2
    assert not torch.allclose(out["loop"][0], start)  # the control points moved
    for got, want in zip(out["loop"], out["vmap"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
