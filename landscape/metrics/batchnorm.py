"""Recompute BatchNorm running statistics for given parameters, as a pure function.

Parameters that were never trained as such (a point on an interpolation path, on a Bezier
curve) have no running statistics of their own: evaluating them with the endpoints'
statistics makes even the endpoints look wrong (a known complaint against
dnn-mode-connectivity). :func:`recompute_bn_stats` gives a point its own statistics by a
train-mode pass over training batches, exactly as ``torch.optim.swa_utils.update_bn`` /
``BatchNorm(momentum=None)`` would: after batches 1..m every running mean is the plain
average of the m batch means, and every running variance the average of the m unbiased
batch variances (equal-sized batches, so this is also the example-weighted average).

It writes nothing in place (the statistics are read with forward pre-hooks on a private
copy of the architecture whose BatchNorm layers keep no running statistics), so it is
``vmap``-able over pack members and over grid points alike, buffers batched or not.

The registered setting ``batch_norm`` (``landscape.metrics.registry``, family ``setting``) says
how many training batches the global metrics' path points recompute their statistics from.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscape.functional import FunctionalNet, Params, loss_precision
from landscape.metrics.registry import Metric, register, require_positive
from landscape.variant import ConfigError

_BN = nn.modules.batchnorm._BatchNorm


def has_batchnorm(net: FunctionalNet) -> bool:
    """Whether the architecture has any BatchNorm layer (with running statistics)."""
    return any(isinstance(m, _BN) and m.track_running_stats for m in net.module.modules())


class BatchStatNet:
    """Train-mode view of an architecture that normalises with batch statistics, never
    touches running buffers, and reports each BatchNorm layer's input statistics.

    ``logits`` is the training-mode forward (used for Bezier curve training);
    ``batch_stats`` also returns ``{layer: (mean (C,), unbiased var (C,))}``.
    """

    def __init__(self, net: FunctionalNet):
        self.module = copy.deepcopy(net.module)  # on the meta device, like the template
        self.layers: dict[str, nn.Module] = {}
        self._sink: dict[str, tuple[Tensor, Tensor]] | None = None
        for name, m in self.module.named_modules():
            if isinstance(m, _BN) and m.track_running_stats:
                m.track_running_stats = False  # train mode then uses (and updates) no running stats
                self.layers[name] = m
                m.register_forward_pre_hook(self._hook(name))
        self.module.train(True)

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if self._sink is not None:
                x = loss_precision(args[0])  # (B, C) or (B, C, *spatial)
                dims = [0, *range(2, x.dim())]
                self._sink[name] = (x.mean(dims), x.var(dims, correction=1))

        return record

    def logits(self, params: Params, buffers: Params, x: Tensor) -> Tensor:
        """Train-mode logits of one member (batch statistics), x (B, *input) -> (B, C)."""
        return functional_call(
            self.module, (params, buffers), (x,), {"features": False}, strict=True
        )

    def batch_stats(
        self, params: Params, buffers: Params, x: Tensor
    ) -> dict[str, tuple[Tensor, Tensor]]:
        self._sink = {}
        try:
            self.logits(params, buffers, x)
            return self._sink
        finally:
            self._sink = None


_CACHE: weakref.WeakKeyDictionary[FunctionalNet, BatchStatNet] = weakref.WeakKeyDictionary()


def batch_stat_net(net: FunctionalNet) -> BatchStatNet:
    """The (cached) :class:`BatchStatNet` of an architecture."""
    if net not in _CACHE:
        _CACHE[net] = BatchStatNet(net)
    return _CACHE[net]


def recompute_bn_stats(
    net: FunctionalNet, params: Params, buffers: Params, x_batches: Tensor
) -> Params:
    """Running statistics of ONE member (or grid point) recomputed from training batches.

    ``x_batches``: (m, B, *input_shape), m >= 1 batches of B >= 2 inputs. Returns a new
    buffer dict: for every BatchNorm layer ``running_mean`` = mean over the m batches of the
    batch mean of the layer's input, ``running_var`` = mean of the unbiased batch variances
    (torch's cumulative average, ``momentum=None``), ``num_batches_tracked`` = m. Each layer
    sees the train-mode (batch-normalised) output of the layers before it, as in
    ``torch.optim.swa_utils.update_bn``. Other buffers are returned unchanged. Callers vmap
    over members or grid points.
    """
    m, batch = x_batches.shape[0], x_batches.shape[1]
    if m < 1 or batch < 2:
        raise ValueError(
            f"BN recomputation needs >= 1 batch of >= 2 inputs, got {m} batches of {batch}"
        )
    stat_net = batch_stat_net(net)
    sums: dict[str, list[Tensor]] = {}
    for k in range(m):
        for name, (mean, var) in stat_net.batch_stats(params, buffers, x_batches[k]).items():
            if name in sums:
                sums[name][0] = sums[name][0] + mean
                sums[name][1] = sums[name][1] + var
            else:
                sums[name] = [mean, var]
    out = dict(buffers)
    for name, (mean_sum, var_sum) in sums.items():
        prefix = f"{name}." if name else ""
        dtype = buffers[prefix + "running_mean"].dtype
        out[prefix + "running_mean"] = (mean_sum / m).to(dtype)
        out[prefix + "running_var"] = (var_sum / m).to(dtype)
        tracked = prefix + "num_batches_tracked"
        if tracked in buffers:
            out[tracked] = torch.zeros_like(buffers[tracked]) + m
    return out


def bn_batches(x: Tensor, n_batches: int, batch_size: int) -> Tensor:
    """Split per-member inputs x (P, n, *input) into (P, m, B, *input) whole batches:
    B = min(batch_size, n), m = min(n_batches, n // B); the remainder is dropped."""
    n = x.shape[1]
    if n_batches < 1 or batch_size < 2:
        raise ValueError(
            f"batch_norm needs n_batches >= 1 and batch_size >= 2, got {n_batches}, {batch_size}"
        )
    if n < 2:
        raise ValueError(f"BN recomputation needs >= 2 training inputs per member, got {n}")
    b = min(batch_size, n)
    m = min(n_batches, n // b)
    return x[:, : m * b].reshape(x.shape[0], m, b, *x.shape[2:])


@dataclass(frozen=True)
class BatchNormSpec:
    """Recomputation of BatchNorm statistics at every point of a path (barrier, Bezier, MLI),
    for models with BatchNorm. 8 x 128 training inputs is our CPU-sized default;
    dnn-mode-connectivity passes over the whole training set."""

    enabled: bool = True
    n_batches: int = 8
    batch_size: int = 128

    def __post_init__(self) -> None:
        require_positive("metrics.batch_norm.n_batches", self.n_batches)
        if self.batch_size < 2:
            raise ConfigError(f"metrics.batch_norm.batch_size must be >= 2, got {self.batch_size}")


register(
    Metric(
        name="batch_norm",
        spec=BatchNormSpec,
        family="setting",
        order=106,
        hashed_when_off=True,
        on_by_default=True,
    )
)
