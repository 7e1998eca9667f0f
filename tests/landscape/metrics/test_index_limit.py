"""Batched evaluations stay under 32-bit indexing: fewer examples (or parameter sets) per call
when the widest activation of one call would outgrow INDEX_LIMIT, with the same results."""

import pytest
import torch

import landscape.functional as functional
import landscape.metrics.surfaces as surfaces
from landscape.functional import examples_per_call, init_stack
from landscape.metrics.cka import pair_cka
from landscape.metrics.surfaces import evaluate_combinations, stack_basis
from landscape.models import MLP, build_model
from landscape.variant import ModelSpec


def test_widest_activation_counts_one_example():
    with torch.device("meta"):
        net = functional.FunctionalNet(MLP(6, 3, 16, 2, True))
    assert net.widest_activation((6,)) == 16  # the hidden layers' 16 units
    with torch.device("meta"):
        cnn = functional.FunctionalNet(
            build_model(ModelSpec("resnet18", width=128, batch_norm=True), (3, 32, 32), 10)
        )
    assert cnn.widest_activation((3, 32, 32)) == 128 * 32 * 32  # the first stage's maps
    # 60 parameter sets of 512 examples (the barrier at its defaults) outgrow int32 indexing
    assert functional.INDEX_LIMIT < 60 * 512 * 128 * 32 * 32
    assert examples_per_call(cnn, (3, 32, 32), 60, 512) == functional.INDEX_LIMIT // (60 * 131072)


def _limit(monkeypatch, value):
    monkeypatch.setattr(functional, "INDEX_LIMIT", value)
    monkeypatch.setattr(surfaces, "INDEX_LIMIT", value)


def test_a_small_index_limit_splits_calls_and_changes_no_result(monkeypatch):
    """float64, so that summing the same examples in other batches agrees to ~1e-15."""
    net, stack = init_stack(lambda: MLP(6, 3, 16, 2, True), [0, 1, 2, 3], "cpu")
    stack = stack.to("cpu", torch.float64)
    a, b = stack.select([0, 1]), stack.select([2, 3])
    basis = type(stack)(stack_basis(a.params, b.params), stack_basis(a.buffers, b.buffers))
    alphas = torch.linspace(0, 1, 5, dtype=torch.float64)
    coeffs = torch.stack([1 - alphas, alphas], -1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 40), generator=g)
    want = evaluate_combinations(net, basis, coeffs, x, y, chunk=10, batch_size=40)
    _limit(monkeypatch, 10 * 16 * 7)  # 10 sets x 7 examples x 16 units: batches of 7
    got = evaluate_combinations(net, basis, coeffs, x, y, chunk=10, batch_size=40)
    for w, h in zip(want, got):
        torch.testing.assert_close(h, w, rtol=1e-12, atol=1e-12)
    _limit(monkeypatch, 16 * 3)  # not even one example of every set: fewer sets per call
    got = evaluate_combinations(net, basis, coeffs, x, y, chunk=10, batch_size=40)
    for w, h in zip(want, got):
        torch.testing.assert_close(h, w, rtol=1e-12, atol=1e-12)
    cka = pair_cka(net, a, b, x, unbiased_batch_size=None)
    _limit(monkeypatch, 2 * 16 * 5)
    small = pair_cka(net, a, b, x, unbiased_batch_size=None)
    for k in cka:
        torch.testing.assert_close(small[k], cka[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sets", [1, 64])
def test_examples_per_call_is_at_least_one(sets, monkeypatch):
    with torch.device("meta"):
        net = functional.FunctionalNet(MLP(6, 3, 16, 2, True))
    monkeypatch.setattr(functional, "INDEX_LIMIT", 1)
    assert examples_per_call(net, (6,), sets, 512) == 1
