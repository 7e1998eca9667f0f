"""param_norm against its closed form: constant parameters c_k on member k give
||w_k||_2 = |c_k| sqrt(P); buffers are not parameters; a diverged member gets None."""

import math

import pytest
import torch

from landscape.functional import Stack
from landscape.measure import MetricsSpec, measure_pack
from landscape.metrics.local import measure_local
from landscape.metrics.param_norm import ParamNormSpec
from landscape.metrics.registry import metric_catalogue
from tests.landscape.metrics.test_hessian import gen
from tests.landscape.metrics.test_local import tiny_pack

ON = {"param_norm": ParamNormSpec(enabled=True)}


def _constant(pack, values: list[float]):
    """The pack with every parameter entry of member k equal to values[k], and its buffers
    (none for this MLP) left alone."""
    params = {
        n: torch.stack([torch.full_like(p[k], v) for k, v in enumerate(values)])
        for n, p in pack.final.params.items()
    }
    return pack.replace(final=Stack(params, pack.final.buffers))


def test_constant_parameters_have_the_closed_form_norm():
    pack = _constant(tiny_pack(3), [0.5, -2.0, 3.0])
    P = sum(p[0].numel() for p in pack.final.params.values())  # MLP(4, 3, 5, 1): 4*5+5+5*3+3 = 43
    assert P == 43
    result = measure_local(pack, ON, gen(0))
    assert list(result.columns) == ["param_norm"]
    # c^2 * 43 is exact in float64 for these c, so the square root is the same rounding
    assert result.columns["param_norm"] == [math.sqrt(c * c * 43) for c in (0.5, -2.0, 3.0)]


def test_a_diverged_member_gets_none():
    pack = tiny_pack(3)
    pack = pack.replace(alive=torch.tensor([True, False, True]))
    result = measure_local(pack, ON, gen(0))
    norms = result.columns["param_norm"]
    assert norms[1] is None
    for k in (0, 2):
        flat = torch.cat([p[k].double().flatten() for p in pack.final.params.values()])
        assert norms[k] == pytest.approx(flat.norm().item(), rel=1e-12)


def test_it_is_a_runs_column_of_the_catalogue_when_enabled():
    pack = tiny_pack(2)
    spec = MetricsSpec(param_norm=ParamNormSpec(enabled=True))
    assert "param_norm" in measure_pack(pack, spec).columns
    assert metric_catalogue(spec)["param_norm"]["columns"][0]["table"] == "runs"
    assert not metric_catalogue(MetricsSpec())["param_norm"]["enabled"]
