"""CKA against independent references: Kornblith et al.'s formula written out with an explicit
centring matrix, and the unbiased HSIC as the U-statistic it estimates (Song et al. 2012)."""

import itertools

import numpy as np
import pytest
import torch

from landscape.functional import init_stack
from landscape.metrics.cka import (
    cka_from_grams,
    gram_linear,
    gram_rbf,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    minibatch_cka,
    mixup_inputs,
    pair_cka,
)
from landscape.models import MLP


def _x(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_cka(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Kornblith et al. (2019), eq. for HSIC with H = I - 11'/n, written out."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def reference_hsic_u(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The U-statistic HSIC_1 estimates: E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq] over
    distinct indices (Song et al. 2012), by brute force."""
    n = k.shape[0]
    t1 = np.mean([k[i, j] * l[i, j] for i, j in itertools.permutations(range(n), 2)])
    t2 = np.mean([k[i, j] * l[q, r] for i, j, q, r in itertools.permutations(range(n), 4)])
    t3 = np.mean([k[i, j] * l[i, q] for i, j, q in itertools.permutations(range(n), 3)])
    return t1 + t2 - 2 * t3


def test_linear_cka_equals_kornblith_formula():
    x, y = _x(50, 7, 0), _x(50, 3, 1) + 0.5 * _x(50, 7, 0)[:, :3]
    ref = reference_cka((x @ x.T).numpy(), (y @ y.T).numpy())
    assert linear_cka(x, y).item() == pytest.approx(ref, rel=1e-10)
    assert cka_from_grams(gram_linear(x), gram_linear(y)).item() == pytest.approx(ref, rel=1e-10)


def test_rbf_cka_equals_formula_with_median_bandwidth():
    x, y = _x(30, 5, 2), _x(30, 4, 3)
    xn = x.numpy()
    d2 = ((xn[:, None] - xn[None]) ** 2).sum(-1)
    # Kornblith et al.'s code: np.median over all n^2 squared distances, diagonal included
    sigma2 = np.median(d2) * 0.8**2
    k = np.exp(-d2 / (2 * sigma2))
    assert np.allclose(gram_rbf(x, 0.8).numpy(), k)
    yn = y.numpy()
    e2 = ((yn[:, None] - yn[None]) ** 2).sum(-1)
    l = np.exp(-e2 / (2 * np.median(e2) * 0.64))  # noqa: E741
    assert cka_from_grams(gram_rbf(x, 0.8), gram_rbf(y, 0.8)).item() == pytest.approx(
        reference_cka(k, l), rel=1e-10
    )


def test_unbiased_hsic_equals_u_statistic():
    k, l = gram_linear(_x(7, 3, 4)), gram_linear(_x(7, 2, 5))  # noqa: E741
    assert hsic_unbiased(k, l).item() == pytest.approx(
        reference_hsic_u(k.numpy(), l.numpy()), rel=1e-9
    )


def test_biased_hsic_equals_formula():
    k, l = gram_linear(_x(9, 3, 6)), gram_linear(_x(9, 2, 7))  # noqa: E741
    n = 9
    h = np.eye(n) - 1 / n
    assert hsic_biased(k, l).item() == pytest.approx(
        np.trace(k.numpy() @ h @ l.numpy() @ h) / (n - 1) ** 2
    )


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(unbiased):
    x = _x(64, 6, 8)
    q, _ = torch.linalg.qr(_x(6, 6, 9))

    def cka(a, b):
        return minibatch_cka(a, b, 16) if unbiased else linear_cka(a, b)

    assert cka(x, x @ q).item() == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 3.7 * x).item() == pytest.approx(1.0, abs=1e-10)
    y = _x(64, 4, 10)
    assert cka(2.5 * x, y).item() == pytest.approx(cka(x, y).item(), rel=1e-10)


def test_not_invariant_to_general_linear_map():
    x = _x(64, 6, 11)
    a = torch.diag(torch.tensor([10.0, 1, 1, 0.1, 0.1, 0.01], dtype=torch.float64)) @ _x(6, 6, 12)
    assert linear_cka(x, x @ a).item() < 0.9


def test_symmetric_in_its_arguments():
    x, y = _x(40, 5, 13), _x(40, 3, 14)
    assert linear_cka(x, y).item() == pytest.approx(linear_cka(y, x).item(), rel=1e-12)
    assert minibatch_cka(x, y, 8).item() == pytest.approx(minibatch_cka(y, x, 8).item(), rel=1e-12)


def test_unbiased_finite_at_four_and_a_clear_error_below():
    x, y = _x(4, 3, 15), _x(4, 2, 16)
    assert torch.isfinite(hsic_unbiased(gram_linear(x), gram_linear(y)))
    with pytest.raises(ValueError, match="n >= 4"):
        hsic_unbiased(gram_linear(x[:3]), gram_linear(y[:3]))
    with pytest.raises(ValueError, match=">= 4 inputs"):
        minibatch_cka(_x(100, 3, 1), _x(100, 3, 2), batch_size=3)
    with pytest.raises(ValueError, match=">= 4 inputs"):
        minibatch_cka(x[:3], y[:3], batch_size=256)


def test_unbiased_cka_may_be_negative_and_nan_for_a_constant_representation():
    # independent representations: the unbiased estimate scatters around 0, some below it
    values = [minibatch_cka(_x(8, 2, s), _x(8, 2, 100 + s), 8).item() for s in range(20)]
    assert all(np.isfinite(values)) and min(values) < 0
    const = torch.ones(16, 3, dtype=torch.float64)
    assert torch.isnan(linear_cka(const, _x(16, 3, 17)))
    assert torch.isnan(minibatch_cka(const, _x(16, 3, 17), 8))


def test_asymmetric_gram_fails_even_when_the_other_is_fine():
    k = gram_linear(_x(6, 3, 18))
    bad = k.clone()
    bad[0, 1] += 1.0
    for args in [(k, bad), (bad, k)]:
        with pytest.raises(ValueError, match="symmetric"):
            hsic_biased(*args)
        with pytest.raises(ValueError, match="symmetric"):
            hsic_unbiased(*args)


def test_leading_dims_equal_a_loop():
    """Batched CKA against a loop: float64 throughout, so 1e-12 relative holds on any CPU."""
    x, y = (
        torch.stack([_x(32, 4, s) for s in range(3)]),
        torch.stack([_x(32, 5, 10 + s) for s in range(3)]),
    )
    batched_lin, batched_unb = linear_cka(x, y), minibatch_cka(x, y, 8)
    for p in range(3):
        assert batched_lin[p].item() == pytest.approx(linear_cka(x[p], y[p]).item(), rel=1e-12)
        assert batched_unb[p].item() == pytest.approx(
            minibatch_cka(x[p], y[p], 8).item(), rel=1e-12
        )


def test_minibatch_cka_averages_hsic_over_batches():
    x, y = _x(24, 3, 19), _x(24, 3, 20)
    kl = kk = ll = 0.0
    for i in range(3):
        k, l = gram_linear(x[8 * i : 8 * i + 8]), gram_linear(y[8 * i : 8 * i + 8])  # noqa: E741
        kl += reference_hsic_u(k.numpy(), l.numpy())
        kk += reference_hsic_u(k.numpy(), k.numpy())
        ll += reference_hsic_u(l.numpy(), l.numpy())
    assert minibatch_cka(x, y, 8).item() == pytest.approx(kl / np.sqrt(kk * ll), rel=1e-8)


def test_mixup_stays_between_inputs_and_is_seeded():
    x = torch.rand(2, 100, 3)
    a = mixup_inputs(x, torch.Generator().manual_seed(0))
    b = mixup_inputs(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert (a >= x.amin(1, keepdim=True) - 1e-6).all() and (
        a <= x.amax(1, keepdim=True) + 1e-6
    ).all()
    same = mixup_inputs(torch.ones(1, 10, 2), torch.Generator().manual_seed(1))
    assert torch.allclose(same, torch.ones(1, 10, 2))


def test_mixup_draws_one_weight_per_batch_and_partners_within_it():
    # Inputs 0 and 1 within each batch of 4 (x_i = 1 at even positions, 0 at odd, plus a
    # tag i * 1e3 in a second feature): a mixed input is lam x_i + (1 - lam) x_j, so the
    # first feature of a pair (i, j) of different parity reads lam or 1 - lam.
    n, batch = 10, 4  # batches [0, 4), [4, 8), [8, 10)
    x = torch.stack([torch.arange(n) % 2 == 0, torch.arange(n) * 1e3], -1).double()[None]
    out = mixup_inputs(x.expand(3, n, 2), torch.Generator().manual_seed(2), 16.0, batch)
    for row in out:
        for start in range(0, n, batch):
            block = row[start : start + batch]
            lam_x = block[:, 1] / 1e3  # lam i + (1 - lam) partner(i), in [start, end)
            assert (lam_x >= start - 1e-9).all() and (lam_x <= start + len(block) - 1 + 1e-9).all()
            # one weight per batch: every example's own weight is the same lam
            # (x_i = lam x_i + (1 - lam) x_j solved where partner differs in parity)
            own = torch.arange(start, start + len(block)).double()
            first = block[:, 0]
            mixed = (first > 1e-9) & (first < 1 - 1e-9)
            lams = torch.where(own % 2 == 0, first, 1 - first)[mixed]
            assert len(lams) == 0 or torch.allclose(lams, lams[0].expand_as(lams))
    # different batches draw different weights (Beta(16, 16) is continuous)
    first = out[0, :, 0]
    assert (
        len(torch.unique(torch.round(torch.where(first > 0.5, first, 1 - first), decimals=9))) > 2
    )


def test_pair_cka_of_a_model_with_itself_is_one():
    net, stack = init_stack(lambda: MLP(6, 3, 8, 1, False), [0, 1], "cpu")
    a, b = stack.select([0, 1]), stack.select([0, 0])
    x = torch.randn(2, 40, 6, generator=torch.Generator().manual_seed(0))
    out = pair_cka(net, a, b, x, unbiased_batch_size=20, rbf_threshold=1.0)
    assert set(out) == {
        f"{e}_{r}" for e in ("linear", "unbiased", "rbf") for r in ("logits", "softmax", "features")
    }
    for value in out.values():
        assert value[0].item() == pytest.approx(1.0, abs=1e-9)  # pair 0 is member 0 with itself
        assert value[1].item() < 1.0
