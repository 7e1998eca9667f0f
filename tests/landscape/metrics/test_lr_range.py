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
