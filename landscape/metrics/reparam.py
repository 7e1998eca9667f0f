"""Reparametrisation probe (Dinh, Pascanu, Bengio & Bengio 2017, "Sharp Minima Can Generalize
For Deep Nets", ICML): a flatness measure that changes under a rescaling that leaves the
network's function unchanged cannot, by itself, be what makes the function generalise.

ReLU is positively homogeneous: relu(alpha z) = alpha relu(z) for alpha > 0. For an affine
layer a whose output reaches layer b only through ReLUs (and other degree-1 homogeneous maps:
max or average pooling, flatten), multiplying a's weight and bias by alpha and b's weight by
1 / alpha gives the same function (Dinh et al.'s alpha-scale transformation).
In a BatchNorm MLP, Linear -> BN -> ReLU, the Linear layer's scale is divided out by BN, so
the pair to rescale is (the BN's affine, the next Linear): gamma and beta times alpha, the
next weight over alpha (exact in train and eval mode).

What each measure does under T_alpha (every entry of the pair scaled by a positive factor):

- the Hessian of the loss, hence its trace and top eigenvalue, changes: H' = T^-1 H T^-1;
  blocks of layer a shrink by alpha^2, those of layer b grow by alpha^2.
- adaptive sharpness with scale |w| on every parameter, weights AND biases
  (:func:`~landscape.metrics.sharpness.adaptive_sharpness_average`, delta ~ N(0, rho^2
  diag(w^2)), and :func:`~landscape.metrics.sharpness.adaptive_sharpness_worst`, the ball
  ||delta / |w| ||_p <= rho) is invariant: T is diagonal and positive, so |T w| = T |w| and
  L(T w + T |w| u) = L(w + |w| u) for every u; with the same random draws the two values
  agree up to rounding. An adaptivity on weights only, or epsilon-sharpness's |w| + 1, breaks
  this.

The registered metric ``reparam`` (family ``pack``) writes the probe of a pack's MLP members
into the ``reparam`` table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import vmap

from landscape.functional import FunctionalNet, Params, Stack
from landscape.metrics.hessian import hessian_trace
from landscape.metrics.registry import Metric, register
from landscape.metrics.sharpness import (
    adaptive_sharpness_average,
    adaptive_sharpness_worst,
    epsilon_sharpness,
)
from landscape.models import MLP
from landscape.variant import ConfigError

if TYPE_CHECKING:
    from landscape.pack import TrainedPack


def find_relu_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Layer pairs (a, b) of a :class:`~landscape.models.MLP` that :func:`rescale_relu_layers`
    may rescale: for each ReLU, a is the affine module feeding it (the Linear, or the
    BatchNorm1d when the MLP has BN) and b the Linear it feeds, e.g. ``("body.0", "body.2")``
    and ``("body.2", "head")`` for depth 2 without BN. Other architectures raise: their
    module order is not their data flow (skip connections), so pass the names yourself."""
    if not isinstance(module, MLP):
        raise ValueError(
            f"find_relu_pairs supports landscape.models.MLP, got {type(module).__name__}; "
            "pass layer names to rescale_relu_layers yourself"
        )
    chain = [(f"body.{i}", m) for i, m in enumerate(module.body)] + [("head", module.head)]
    pairs = []
    for i, (_, m) in enumerate(chain):
        if isinstance(m, nn.ReLU):
            a, b = chain[i - 1][0], chain[i + 1][0]  # MLP: affine -> ReLU -> Linear
            pairs.append((a, b))
    return pairs


def rescale_relu_layers(params: Params, layer_a: str, layer_b: str, alpha: float) -> Params:
    """Dinh et al.'s alpha-scale transformation: ``{layer_a}.weight`` and ``{layer_a}.bias``
    (if present) times alpha, ``{layer_b}.weight`` divided by alpha; every other tensor is
    shared with ``params``, not copied. Works on one member's or on stacked params. The
    function is unchanged when only degree-1 homogeneous maps (ReLU, pooling) lie between
    a and b and a feeds nothing else; :func:`find_relu_pairs` lists such pairs for an MLP."""
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    for name in (f"{layer_a}.weight", f"{layer_b}.weight"):
        if name not in params:
            raise ValueError(f"no parameter {name!r}; parameters are {', '.join(params)}")
    out = dict(params)
    for name in (f"{layer_a}.weight", f"{layer_a}.bias"):
        if name in params:
            out[name] = params[name] * alpha
    out[f"{layer_b}.weight"] = params[f"{layer_b}.weight"] / alpha
    return out


@dataclass
class ReparamProbe:
    layers: tuple[str, str]  # (a, b) as given to rescale_relu_layers
    alpha: float
    before: dict[str, Tensor]  # metric -> (K,) on the original pack
    after: dict[str, Tensor]  # metric -> (K,) on the rescaled pack
    ratio: dict[str, Tensor]  # metric -> (K,) after / before
    output_change: Tensor  # (K,) max |logit change| over the sample: ~0 (rounding) by design


def reparametrisation_probe(
    net: FunctionalNet,
    stack: Stack,
    x: Tensor,
    *,
    alpha: float,
    metrics: dict[str, Callable[[Stack], Tensor]],
    layers: tuple[str, str] | None = None,
) -> ReparamProbe:
    """Each metric on the pack and on its alpha-rescaled copy (:func:`rescale_relu_layers`
    on ``layers``, default the first pair of :func:`find_relu_pairs`), and their ratio per
    member: 1 for a reparametrisation-invariant measure, not 1 for the raw Hessian.

    ``metrics`` map a name to ``Stack -> (K,)`` with data and settings closed over. A
    stochastic metric must use common random numbers: build its generator from the same
    seed on every call, so the two evaluations see the same draws. ``x`` (K, N, ...) serves
    to check that the logits did not change (``output_change``, eval mode).
    """
    a, b = layers if layers is not None else find_relu_pairs(net.module)[0]
    rescaled = Stack(rescale_relu_layers(stack.params, a, b, alpha), stack.buffers)
    logits = vmap(net.logits)
    change = logits(rescaled.params, stack.buffers, x) - logits(stack.params, stack.buffers, x)
    before = {name: m(stack) for name, m in metrics.items()}
    after = {name: m(rescaled) for name, m in metrics.items()}
    ratio = {name: after[name] / before[name] for name in metrics}
    return ReparamProbe((a, b), alpha, before, after, ratio, change.abs().flatten(1).amax(1))


def reparam_rows(probe: ReparamProbe, members: list[int] | None = None) -> list[dict]:
    """Rows for a ``reparam`` table: member, metric, alpha, layer_a, layer_b, before, after,
    ratio."""
    rows = []
    for name in probe.ratio:
        values = zip(
            probe.before[name].tolist(), probe.after[name].tolist(), probe.ratio[name].tolist()
        )
        for k, (b, a, r) in enumerate(values):
            rows.append(
                {
                    "member": k if members is None else members[k],
                    "metric": name,
                    "alpha": probe.alpha,
                    "layer_a": probe.layers[0],
                    "layer_b": probe.layers[1],
                    "before": b,
                    "after": a,
                    "ratio": r,
                }
            )
    return rows


def _hessian_trace(net, stack, x, y, spec, g):
    return hessian_trace(net, stack, x, y, n_probes=spec.n_probes, tol=0.0, generator=g).estimate


# The metrics the probe can take, by their runs column: (net, stack, x, y, spec, generator) -> (K,)
PROBES: dict[str, Callable[..., Tensor]] = {
    "hessian_trace": _hessian_trace,
    "eps_sharpness": lambda net, s, x, y, spec, g: epsilon_sharpness(net, s, x, y, generator=g),
    "adaptive_sharpness_worst": (
        lambda net, s, x, y, spec, g: adaptive_sharpness_worst(net, s, x, y, generator=g)
    ),
    "adaptive_sharpness_avg": (
        lambda net, s, x, y, spec, g: adaptive_sharpness_average(net, s, x, y, generator=g)
    ),
}


@dataclass(frozen=True)
class ReparamSpec:
    """The reparametrisation probe as a metric option: each chosen metric before and after
    rescaling the first ReLU pair of an MLP by ``alpha`` and 1/alpha (same function)."""

    enabled: bool = False
    alpha: float = 5.0
    metrics: tuple[str, ...] = tuple(PROBES)
    n_samples: int = 256  # training examples the metrics are taken on
    n_probes: int = 30  # Hutchinson probes for hessian_trace

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(
                f"metrics.reparam.alpha must be > 0 (a positive rescaling), got {self.alpha}"
            )
        unknown = set(self.metrics) - set(PROBES)
        if unknown:
            raise ConfigError(
                f"metrics.reparam.metrics must be a subset of {', '.join(PROBES)}, got {sorted(unknown)}"
            )


def probe_metrics(
    net: FunctionalNet, x: Tensor, y: Tensor, spec: ReparamSpec, seed: int
) -> dict[str, Callable[[Stack], Tensor]]:
    """``Stack -> (K,)`` closures for the probe, each rebuilding its generator from ``seed``
    on every call (common random numbers for the before/after comparison)."""

    def closure(probe: Callable[..., Tensor]) -> Callable[[Stack], Tensor]:
        return lambda s: probe(net, s, x, y, spec, torch.Generator(x.device).manual_seed(seed))

    return {name: closure(PROBES[name]) for name in spec.metrics}


def reparam_pack(pack: TrainedPack, spec: ReparamSpec, seed: int) -> list[dict]:
    """Dinh et al.'s probe on the alive members of a pack (its ``reparam`` rows); a model
    without a ReLU pair gets no rows. The sample is drawn with ``seed + 3``, the metrics' own
    randomness comes from ``seed + 4``."""
    try:
        find_relu_pairs(pack.net.module)
    except ValueError:
        return []
    alive = pack.alive.nonzero().flatten().tolist()
    if not alive:
        return []
    stack = pack.final.select(alive)
    x, y = pack.data.train_sample(spec.n_samples, torch.Generator().manual_seed(seed + 3))
    x, y = x[alive], y[alive]
    metrics = probe_metrics(pack.net, x, y, spec, seed=seed + 4)
    probe = reparametrisation_probe(pack.net, stack, x, alpha=spec.alpha, metrics=metrics)
    return reparam_rows(probe, members=alive)


register(
    Metric(
        name="reparam",
        spec=ReparamSpec,
        family="pack",
        order=111,
        hashed_when_off=True,
        tables=("reparam",),
        measure=reparam_pack,
    )
)
