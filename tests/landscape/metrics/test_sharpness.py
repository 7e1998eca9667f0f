"""Sharpness: closed forms on quadratics, zero at radius 0, non-negative, pack = members."""

from __future__ import annotations

import pytest
import torch

from landscape.metrics.sharpness import (
    adaptive_sharpness_average,
    adaptive_sharpness_worst,
    average_loss_increase,
    epsilon_sharpness,
    worst_case_loss,
)
from tests.landscape.metrics.test_hessian import gen, quadratic, spd, tiny_mlp


def ones_like(params: dict) -> dict:
    return {n: torch.ones_like(p) for n, p in params.items()}


def test_worst_case_l2_at_minimum_is_half_r2_lambda_max() -> None:
    # at w = 0: max over ||d|| <= r of 1/2 d'Ad = 1/2 r^2 lambda_max(A)
    eigs = torch.tensor([4.0, 2.0, 1.0, 0.5, -1.0, 0.1], dtype=torch.float64)
    a = torch.stack([spd(6, eigs, seed=0), spd(6, 2 * eigs, seed=1)])
    params = {"w": torch.zeros(2, 6, dtype=torch.float64)}
    top, base = worst_case_loss(
        quadratic, params, (a,), ones_like(params), radius=0.5, p="2", steps=60, generator=gen()
    )
    torch.testing.assert_close(base, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(
        top, 0.5 * 0.25 * torch.tensor([4.0, 8.0], dtype=torch.float64), rtol=1e-3, atol=0
    )


def test_worst_case_linf_reaches_the_corner() -> None:
    # diagonal PSD A at w = 0: the box maximum is at a corner, 1/2 r^2 tr(A)
    a = torch.diag(torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64))[None]
    params = {"w": torch.zeros(1, 4, dtype=torch.float64)}
    top, _ = worst_case_loss(
        quadratic, params, (a,), ones_like(params), radius=0.1, p="inf", steps=5, generator=gen()
    )
    torch.testing.assert_close(top, torch.tensor([0.5 * 0.01 * 6.5], dtype=torch.float64))


def test_average_increase_matches_closed_form() -> None:
    # L = 1/2 (w-c)'A(w-c) at w = c: E[L(w + d)] - L(w) = 1/2 rho^2 sum_i A_ii s_i^2 for d = rho * s * z
    a = spd(5, torch.tensor([1.0, 2.0, 3.0, 0.5, 0.2], dtype=torch.float64), seed=3)[None]
    params = {"w": torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0]], dtype=torch.float64)}
    center = params["w"].clone()
    scale = {"w": params["w"].abs()}

    def shifted_quadratic(p: dict, a_: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return quadratic({"w": p["w"] - c}, a_)

    rise = average_loss_increase(
        shifted_quadratic,
        params,
        (a, center),
        scale,
        rho=0.1,
        n_draws=2000,
        chunk=500,
        generator=gen(),
    )
    exact = 0.5 * 0.01 * (a[0].diagonal() * params["w"][0] ** 2).sum()
    torch.testing.assert_close(rise[0], exact, rtol=0.05, atol=0)


@pytest.mark.parametrize(
    "metric, kwargs",
    [
        pytest.param(epsilon_sharpness, {"eps": 0.0}, id="epsilon"),
        pytest.param(adaptive_sharpness_worst, {"rho": 0.0}, id="worst-inf"),
        pytest.param(adaptive_sharpness_worst, {"rho": 0.0, "p": "2"}, id="worst-2"),
        pytest.param(adaptive_sharpness_average, {"rho": 0.0, "n_draws": 4}, id="average"),
    ],
)
def test_zero_at_radius_zero(metric, kwargs) -> None:
    net, stack, x, y = tiny_mlp()
    assert (metric(net, stack, x, y, generator=gen(), **kwargs) == 0).all()


@pytest.mark.parametrize(
    "metric, kwargs",
    [
        pytest.param(epsilon_sharpness, {"eps": 1e-2, "steps": 10}, id="epsilon"),
        pytest.param(epsilon_sharpness, {"eps": 1e-2, "steps": 5, "batch_size": 4}, id="epsilon-m"),
        pytest.param(adaptive_sharpness_worst, {"rho": 0.05, "steps": 10}, id="worst-inf"),
        pytest.param(adaptive_sharpness_worst, {"rho": 0.2, "p": "2", "steps": 10}, id="worst-2"),
    ],
)
def test_worst_cases_positive_and_pack_equals_members(metric, kwargs) -> None:
    """Worst-case sharpness of a pack against each member alone: one evaluation of a tiny
    float32 MLP, so no rounding compounds per ascent step; measured exactly equal (measured with
    1 and 2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=3)
    pack = metric(net, stack, x, y, generator=gen(4), **kwargs)
    assert (pack > 0).all()
    for k in range(3):
        alone = metric(net, stack.member(k), x[k : k + 1], y[k : k + 1], generator=gen(4), **kwargs)
        torch.testing.assert_close(pack[k : k + 1], alone, rtol=1e-4, atol=1e-6)


def test_average_pack_equals_members_and_grows_with_rho() -> None:
    """Average sharpness of a pack against each member alone with the same draws: one evaluation
    of a tiny float32 MLP, so no rounding compounds; measured exactly equal (measured with 1 and
    2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    net, stack, x, y = tiny_mlp(members=2)
    small = adaptive_sharpness_average(net, stack, x, y, rho=0.05, n_draws=30, generator=gen(1))
    large = adaptive_sharpness_average(net, stack, x, y, rho=0.5, n_draws=30, generator=gen(1))
    assert (large > small).all()
    for k in range(2):
        alone = adaptive_sharpness_average(
            net, stack.member(k), x[k : k + 1], y[k : k + 1], rho=0.5, n_draws=30, generator=gen(1)
        )
        torch.testing.assert_close(large[k : k + 1], alone, rtol=1e-4, atol=1e-6)


def test_bad_norm_is_rejected() -> None:
    net, stack, x, y = tiny_mlp(members=1)
    with pytest.raises(ValueError, match="p must be one of inf, 2"):
        adaptive_sharpness_worst(net, stack, x, y, p="1", generator=gen())
