"""LR range test: schedule, untouched input, stop rule, pack = members, plain-SGD reference."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.functional import unstack
from landscape.metrics.lr_range import lr_range_rows, lr_range_test
from landscape.optim import MemberHypers
from landscape.pack import PackData
from landscape.variant import OptimSpec
from tests.landscape.metrics.test_hessian import gen, tiny_mlp


def pack_data(members: int, n_train: int = 32) -> PackData:
    g = gen(11)
    x = torch.randn(48, 4, generator=g)
    idx = torch.stack([torch.randperm(48, generator=g)[:n_train] for _ in range(members)])
    y = torch.randint(0, 3, (members, n_train), generator=g)
    return PackData(x, idx, y, x[:8], torch.randint(0, 3, (8,), generator=g), num_classes=3)


def hypers(members: int, momentum: float = 0.9, wd: float = 5e-4) -> MemberHypers:
    return MemberHypers(
        lr=torch.ones(members),
        momentum=torch.full((members,), momentum) * torch.arange(1, members + 1) / members,
        weight_decay=torch.full((members,), wd),
    )


def member_data(data: PackData, k: int) -> PackData:
    return PackData(
        data.x_train,
        data.train_idx[k : k + 1],
        data.y_train[k : k + 1],
        data.x_test,
        data.y_test,
        3,
    )


def test_schedule_and_untouched_stack() -> None:
    net, stack, _, _ = tiny_mlp(members=2)
    before = stack.clone()
    curve = lr_range_test(
        net,
        stack,
        pack_data(2),
        OptimSpec(),
        hypers(2),
        lr_min=1e-4,
        lr_max=1.0,
        steps=9,
        batch_size=8,
        generator=gen(),
    )
    torch.testing.assert_close(curve.lr, torch.logspace(-4, 0, 9, dtype=torch.float64))
    assert curve.loss.shape == (2, 9)
    for n in stack.params:
        assert torch.equal(stack.params[n], before.params[n])


def test_matches_plain_sgd_loop() -> None:
    # one member, no momentum or weight decay: p <- p - lr_t grad on the same minibatches
    net, stack, _, _ = tiny_mlp(members=1)
    data = pack_data(1)
    curve = lr_range_test(
        net,
        stack,
        data,
        OptimSpec(momentum=0.0),
        hypers(1, 0.0, 0.0),
        lr_min=1e-3,
        lr_max=1e-1,
        steps=6,
        batch_size=8,
        generator=gen(2),
    )
    params, buffers = unstack(stack, 0)
    params = {n: p.clone() for n, p in params.items()}
    g = gen(2)
    for t in range(6):
        pos = torch.randint(0, data.n_train, (8,), generator=g)
        x, y = data.train_batch(pos[None])
        live = {n: p.requires_grad_() for n, p in params.items()}
        loss = net.loss(live, buffers, x[0], y[0], train=True)
        torch.testing.assert_close(curve.loss[0, t], loss.detach(), rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(loss, list(live.values()))
        lr = 1e-3 * 100 ** (t / 5)
        params = {n: (p - lr * gr).detach() for (n, p), gr in zip(live.items(), grads)}


def test_divergent_members_stop_and_rows_end_there() -> None:
    net, stack, _, _ = tiny_mlp(members=2)
    curve = lr_range_test(
        net,
        stack,
        pack_data(2),
        OptimSpec(),
        hypers(2),
        lr_min=1e-2,
        lr_max=1e4,
        steps=40,
        batch_size=8,
        generator=gen(),
    )
    stopped = curve.loss.isnan()
    assert stopped[:, -1].all()  # a learning rate of 1e4 blows up every member
    for k in range(2):  # once stopped, stopped for good
        first = int(stopped[k].nonzero()[0])
        assert stopped[k, first:].all() and not stopped[k, :first].any()
    rows = lr_range_rows(curve, members=[7, 9])
    assert len(rows) == int((~stopped).sum())
    assert {r["member"] for r in rows} == {7, 9} and all(math.isfinite(r["loss"]) for r in rows)


def test_pack_equals_members() -> None:
    """The range test of a pack against each member alone: 12 steps of a tiny MLP (width 5) with
    no unit near ReLU's kink; measured exactly equal (measured with 1 and 2 threads and
    ATEN_CPU_CAPABILITY=default/avx2/avx512), so 1e-4 has room for other kernels."""
    net, stack, _, _ = tiny_mlp(members=3)
    data, h = pack_data(3), hypers(3)
    kwargs = {"lr_min": 1e-4, "lr_max": 1.0, "steps": 12, "batch_size": 8}
    pack = lr_range_test(net, stack, data, OptimSpec(), h, generator=gen(5), **kwargs)
    for k in range(3):
        hk = MemberHypers(h.lr[k : k + 1], h.momentum[k : k + 1], h.weight_decay[k : k + 1])
        alone = lr_range_test(
            net, stack.member(k), member_data(data, k), OptimSpec(), hk, generator=gen(5), **kwargs
        )
        torch.testing.assert_close(
            pack.loss[k : k + 1], alone.loss, rtol=1e-4, atol=1e-6, equal_nan=True
        )


def test_rejects_bad_range() -> None:
    net, stack, _, _ = tiny_mlp(members=1)
    with pytest.raises(ValueError, match="need 0 < lr_min < lr_max"):
        lr_range_test(
            net,
            stack,
            pack_data(1),
            OptimSpec(),
            hypers(1),
            lr_min=1.0,
            lr_max=0.1,
            generator=gen(),
        )


def _trained_member() -> tuple:
    """One tiny MLP fitted by full-batch gradient descent to a learnable labelling (y the
    argmax of a fixed linear map of x), so its training loss is far below chance (ln 3)."""
    net, stack, _, _ = tiny_mlp(members=1)
    g = gen(4)
    x = torch.randn(48, 4, generator=g)
    y = (x @ torch.randn(4, 3, generator=g)).argmax(-1)
    idx = torch.arange(32)[None]
    data = PackData(x, idx, y[:32][None], x[32:], y[32:], num_classes=3)
    params, buffers = unstack(stack, 0)
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    opt = torch.optim.SGD(list(params.values()), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        net.loss(params, buffers, x[:32], y[:32], train=True).backward()
        opt.step()
    trained = stack.clone()
    for n, p in params.items():
        trained.params[n] = p.detach()[None]
    return net, trained, data


def _first_stop(curve) -> int:
    stopped = curve.loss[0].isnan().nonzero()
    return int(stopped[0]) if len(stopped) else curve.loss.shape[1]


def test_a_trained_model_is_followed_until_its_loss_is_worse_than_chance() -> None:
    net, stack, data = _trained_member()
    kwargs = {"lr_min": 1e-6, "lr_max": 1e3, "steps": 60, "batch_size": 8}
    full = lr_range_test(  # no stop but a non-finite loss: the whole curve
        net, stack, data, OptimSpec(), hypers(1, 0.0, 0.0), stop_factor=1e30,
        generator=gen(6), **kwargs,
    )  # fmt: skip
    loss = full.loss[0]
    assert loss[0] < 0.1 * math.log(3)  # trained: far below chance
    # The rule, replayed on the full curve: stop at the first loss above
    # max(4 x the best so far, ln 3), or not finite.
    best = torch.cummin(loss, 0).values
    over = ~torch.isfinite(loss) | (loss > torch.clamp(4 * best, min=math.log(3)))
    expected = int(over.nonzero()[0])
    ours = lr_range_test(
        net, stack, data, OptimSpec(), hypers(1, 0.0, 0.0), generator=gen(6), **kwargs
    )
    assert _first_stop(ours) == expected
    torch.testing.assert_close(ours.loss[0, :expected], loss[:expected])
    # fastai's rule alone (reference 0) stops within minibatch noise, at a far smaller rate
    fastai = lr_range_test(
        net, stack, data, OptimSpec(), hypers(1, 0.0, 0.0), reference=0.0,
        generator=gen(6), **kwargs,
    )  # fmt: skip
    assert full.lr[_first_stop(fastai)] * 100 < full.lr[expected]
