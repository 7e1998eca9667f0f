"""``BoundModule`` (tensors set into a module copy by hand) is ``functional_call`` without its
per-call cost: the same forward on the same tensors, so the same logits bit for bit, BatchNorm
statistics updated in place in the caller's buffers, and gradients equal to functorch's."""

import pytest
import torch
from torch import nn
from torch.func import grad

from landscape.functional import BoundModule, FunctionalNet, init_stack, unstack
from landscape.models import build_model
from landscape.variant import ModelSpec

MODELS = [
    (ModelSpec("mlp", width=8, batch_norm=True), (1, 8, 8), 0),
    (ModelSpec("cnn", width=4, batch_norm=True), (3, 8, 8), 0),
    (ModelSpec("transformer", width=8, depth=1, heads=2, mlp_ratio=2), (4,), 7),
]


@pytest.mark.parametrize(("spec", "shape", "vocab"), MODELS, ids=["mlp", "cnn", "transformer"])
def test_bound_module_equals_functional_call(spec, shape, vocab):
    net, stack = init_stack(lambda: build_model(spec, shape, 10, vocab), [0, 1], "cpu")
    params, buffers = unstack(stack, 1)
    g = torch.Generator().manual_seed(0)
    if vocab:
        x = torch.randint(vocab, (6, *shape), generator=g)
    else:
        x = torch.randn(6, *shape, generator=g)
    ref_buffers = {n: b.clone() for n, b in buffers.items()}
    expected = net.logits(params, ref_buffers, x, train=True)
    bound = BoundModule(net)
    got = bound(params, buffers, x, train=True)
    assert torch.equal(got, expected)
    for n in buffers:  # the running statistics moved the same way, in the caller's tensors
        assert torch.equal(buffers[n], ref_buffers[n]), n
    leaves = [p.detach().requires_grad_() for p in params.values()]
    y = torch.arange(6) % 10
    by_autograd = torch.autograd.grad(
        nn.functional.cross_entropy(
            bound(dict(zip(params, leaves)), ref_buffers, x, train=True), y
        ),
        leaves,
    )
    by_functorch = grad(
        lambda p, b: nn.functional.cross_entropy(net.logits(p, b, x, train=True), y)
    )(params, {n: b.clone() for n, b in buffers.items()})
    for (n, expected_grad), got_grad in zip(by_functorch.items(), by_autograd, strict=True):
        assert torch.equal(got_grad, expected_grad), n


def test_a_tied_architecture_is_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = self.a

        def forward(self, x, features=False):
            return self.b(self.a(x))

    with pytest.raises(ValueError, match="ties parameters"):
        BoundModule(FunctionalNet(Tied()))
