"""L2 distance over trainable parameters: BN affine in, running statistics out."""

import pytest
import torch

from landscape.functional import init_stack
from landscape.metrics.distance import l2_distance, l2_norm
from landscape.models import MLP


def _pack():
    return init_stack(lambda: MLP(5, 3, 4, 1, True), [0, 1, 2], "cpu")


def test_equals_the_norm_of_the_flattened_difference():
    _, stack = _pack()
    flat = torch.cat([p.flatten(1) for p in stack.params.values()], dim=1).double()  # (3, D)
    d = l2_distance(stack.select([0, 1, 2]).params, stack.select([1, 2, 0]).params)
    expected = (flat - flat[[1, 2, 0]]).norm(dim=1)
    assert torch.allclose(d, expected, rtol=1e-12)
    assert torch.allclose(l2_norm(stack.params), flat.norm(dim=1), rtol=1e-12)


def test_symmetric_and_zero_on_itself():
    _, stack = _pack()
    a, b = stack.select([0]).params, stack.select([1]).params
    assert l2_distance(a, b).item() == pytest.approx(l2_distance(b, a).item(), rel=1e-15)
    assert l2_distance(a, a).item() == 0.0


def test_batchnorm_affine_counts_and_running_statistics_do_not():
    _, stack = _pack()
    a = stack.select([0])
    b = a.clone()
    b.buffers["body.1.running_mean"] += 5.0  # statistics, not coordinates
    assert l2_distance(a.params, b.params).item() == 0.0
    b.params["body.1.weight"] += torch.tensor([3.0, 0, 0, 4.0])  # the BN scale is a parameter
    assert l2_distance(a.params, b.params).item() == pytest.approx(5.0)
