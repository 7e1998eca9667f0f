"""BN recomputation gives the exact batch statistics and torch's cumulative averages."""

import pytest
import torch
from torch.func import vmap

from landscape.functional import init_stack, unstack
from landscape.metrics.batchnorm import bn_batches, has_batchnorm, recompute_bn_stats
from landscape.models import CNN, MLP


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_one_batch_gives_the_exact_batch_statistics():
    net, stack = init_stack(lambda: MLP(6, 3, 5, 1, True), [0], "cpu")
    params, buffers = unstack(stack, 0)
    x = _x(1, 32, 6)
    out = recompute_bn_stats(net, params, buffers, x)
    h = x[0] @ params["body.0.weight"].T + params["body.0.bias"]  # input of the BN layer
    assert torch.allclose(out["body.1.running_mean"], h.mean(0), atol=1e-6)
    assert torch.allclose(out["body.1.running_var"], h.var(0, correction=1), atol=1e-5)
    assert out["body.1.num_batches_tracked"].item() == 1


def test_several_batches_equal_torch_cumulative_average():
    net, stack = init_stack(lambda: CNN(1, 3, 4, True), [0], "cpu")
    params, buffers = unstack(stack, 0)
    x = _x(3, 16, 1, 8, 8, seed=1)
    out = recompute_bn_stats(net, params, buffers, x)
    module = CNN(1, 3, 4, True)
    module.load_state_dict({**params, **buffers})
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    module.train()
    with torch.no_grad():
        for k in range(3):
            module(x[k])
    for name, value in module.state_dict().items():
        if name in buffers:
            assert torch.allclose(out[name].float(), value.float(), atol=1e-5), name


def test_pure_and_vmappable_over_members():
    """Recomputed BatchNorm statistics, vmapped over members against one member at a time: one
    forward pass, nothing compounds."""
    net, stack = init_stack(lambda: MLP(6, 3, 5, 2, True), [0, 1, 2], "cpu")
    before = {n: b.clone() for n, b in stack.buffers.items()}
    x = _x(3, 2, 8, 6, seed=2)
    batched = vmap(lambda p, b, xb: recompute_bn_stats(net, p, b, xb))(
        stack.params, stack.buffers, x
    )
    for k in range(3):
        params, buffers = unstack(stack, k)
        single = recompute_bn_stats(net, params, buffers, x[k])
        for name in single:
            assert torch.allclose(batched[name][k].float(), single[name].float(), atol=1e-6)
    for name in before:
        assert torch.equal(before[name], stack.buffers[name])  # inputs untouched


def test_no_batchnorm_is_a_no_op_and_detected():
    net, stack = init_stack(lambda: MLP(6, 3, 5, 1, False), [0], "cpu")
    assert not has_batchnorm(net)
    params, buffers = unstack(stack, 0)
    assert recompute_bn_stats(net, params, buffers, _x(1, 4, 6)) == buffers
    bn_net, _ = init_stack(lambda: CNN(1, 3, 4, True), [0], "cpu")
    assert has_batchnorm(bn_net)


def test_bn_batches_shapes_and_errors():
    x = _x(2, 50, 3)
    assert bn_batches(x, 4, 16).shape == (2, 3, 16, 3)  # only 3 whole batches of 16 in 50
    assert bn_batches(x, 2, 128).shape == (2, 1, 50, 3)  # one batch of everything
    with pytest.raises(ValueError, match="batch_size >= 2"):
        bn_batches(x, 1, 1)
    net, stack = init_stack(lambda: MLP(3, 3, 5, 1, True), [0], "cpu")
    params, buffers = unstack(stack, 0)
    with pytest.raises(ValueError, match=">= 2 inputs"):
        recompute_bn_stats(net, params, buffers, _x(1, 1, 3))
