"""Loss change allocation (Lan, Liu, Zhou & Yosinski 2019, "LCA: Loss Change Allocation for
Neural Network Training", NeurIPS): which parameters made one training step lower the loss.

The loss change of a step from theta_t to theta_{t+1} is a path integral of the gradient
along the straight segment theta(s) = theta_t + s (theta_{t+1} - theta_t), s in [0, 1]:

    L(theta_{t+1}) - L(theta_t) = sum_i A_i,
    A_i = (theta_{t+1,i} - theta_{t,i}) * integral_0^1 dL/dtheta_i(theta(s)) ds.

A_i is parameter i's allocation; a negative A_i means the parameter's move lowered the loss
(it "helped"), a positive one that it raised it ("hurt"). Lan et al. evaluate the integral
with fourth-order Runge-Kutta; since the integrand does not depend on the running integral,
RK4 reduces to Simpson's rule: weights 1/6, 4/6, 1/6 on the gradients at the start, midpoint
and end of the segment (the paper's two midpoint evaluations coincide). ``rk4_intervals`` = m
splits the segment into m pieces (composite Simpson, 2m + 1 gradients); the error falls as
m^-4 and is zero whenever the loss is a polynomial of degree <= 3 along the segment (a
quadratic loss, for instance). Lan et al. measured the loss on the whole training set; pass
the sample you want the allocation of as ``x``, ``y``. Eval mode: BatchNorm buffers are held
fixed along the segment, so only the parameters' share of the change is allocated.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import grad, vmap

from landscape.functional import FunctionalNet, Params, Stack
from landscape.hvp import LossFn

BY = ("tensor", "layer")


def simpson_nodes(rk4_intervals: int) -> list[tuple[float, float]]:
    """(s, weight) pairs of composite Simpson on [0, 1] with ``rk4_intervals`` pieces; the
    weights sum to 1 (m = 1: (0, 1/6), (1/2, 4/6), (1, 1/6))."""
    if rk4_intervals < 1:
        raise ValueError(f"rk4_intervals must be >= 1, got {rk4_intervals}")
    m = rk4_intervals
    nodes = []
    for j in range(2 * m + 1):
        if j in (0, 2 * m):
            w = 1.0
        else:
            w = 4.0 if j % 2 else 2.0  # midpoints 4, shared piece ends 2
        nodes.append((j / (2 * m), w / (6 * m)))
    return nodes


def allocate_loss_change(
    loss: LossFn, before: Params, after: Params, args: tuple = (), *, rk4_intervals: int = 1
) -> Params:
    """Per-parameter allocation A of ``loss(after, *args) - loss(before, *args)`` for ONE
    member (unstacked params), shaped like ``before``. See the module docstring."""
    delta = {n: after[n] - before[n] for n in before}
    mean_grad = None  # Simpson average of the gradient along the segment
    for s, w in simpson_nodes(rk4_intervals):
        g = grad(loss)({n: before[n] + s * delta[n] for n in before}, *args)
        mean_grad = (
            {n: w * g[n] for n in g}
            if mean_grad is None
            else {n: mean_grad[n] + w * g[n] for n in g}
        )
    return {n: mean_grad[n] * delta[n] for n in delta}


def loss_change_allocation(
    net: FunctionalNet,
    buffers: Params,
    before: Params,
    after: Params,
    x: Tensor,
    y: Tensor,
    *,
    rk4_intervals: int = 1,
) -> Params:
    """Loss change allocation of one step of ONE member (Lan et al. 2019): per-parameter A
    with sum(A) ~ L(after) - L(before), mean cross-entropy in eval mode on x (N, ...),
    y (N,) with ``buffers`` fixed. Unstacked params in and out; :func:`lca_stacked` for a
    pack. ``rk4_intervals`` = 1 is the paper's single RK4 step per training step."""
    return allocate_loss_change(
        net.loss, before, after, (buffers, x, y), rk4_intervals=rk4_intervals
    )


def lca_stacked(
    net: FunctionalNet,
    before: Stack,
    after: Stack | Params,
    x: Tensor,
    y: Tensor,
    *,
    rk4_intervals: int = 1,
) -> Params:
    """:func:`loss_change_allocation` for K members at once (vmapped): ``before`` is the pack
    before the step (its buffers are used), ``after`` the pack or its stacked parameters
    after it, x (K, N, ...), y (K, N). Returns allocations shaped (K, *shape)."""
    after = after.params if isinstance(after, Stack) else after

    def member(b: Params, bufs: Params, a: Params, xs: Tensor, ys: Tensor) -> Params:
        return loss_change_allocation(net, bufs, b, a, xs, ys, rk4_intervals=rk4_intervals)

    return vmap(member)(before.params, before.buffers, after, x, y)


def layer_of(name: str) -> str:
    """The layer prefix of a parameter name: ``body.0.weight`` -> ``body.0``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def allocation_by_layer(alloc: Params, *, by: str = "layer") -> dict[str, Tensor]:
    """Sum stacked allocations (K, *shape) per parameter tensor (``by="tensor"``: keys are
    parameter names) or per layer (``by="layer"``: keys are prefixes, ``body.0``, ``head``),
    in float64: each value is (K,). Summing the values gives each member's total."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    out: dict[str, Tensor] = {}
    for name, a in alloc.items():
        key = name if by == "tensor" else layer_of(name)
        total = a.double().flatten(1).sum(1)
        out[key] = out[key] + total if key in out else total
    return out


def lca_rows(
    alloc: Params, step: int, members: list[int] | None = None, *, by: str = "layer"
) -> list[dict]:
    """Rows for the ``lca`` table from stacked allocations (K, *shape) of one training step:
    member, step, layer (a layer prefix, or a parameter name with ``by="tensor"``),
    allocation (negative: the layer's move lowered the loss)."""
    sums = {k: v.tolist() for k, v in allocation_by_layer(alloc, by=by).items()}
    K = next(iter(alloc.values())).shape[0]
    members = list(range(K)) if members is None else members
    return [
        {"member": member, "step": step, "layer": layer, "allocation": values[k]}
        for k, member in enumerate(members)
        for layer, values in sums.items()
    ]
