"""The packed layout: a pack's K members side by side in the channel dimension.

``vmap`` batches members into each kernel but moves the member dimension in and out of the
channel dimension around every layer (layout copies), and keeps BatchNorm in float32 (bf16
BatchNorm fails in its batched backward). This module runs the same models with the members
kept side by side between layers: activations of shape (N, K*C, ...), a convolution as one
grouped convolution (groups = K), BatchNorm over the K*C channels (per member by
construction), a linear layer as one batched matmul, and every other layer (ReLU, pooling,
flatten, residual sums) as it is, since it acts per channel. Gradients come from ordinary
autograd on the stacked parameters (members are independent, so the gradient of the sum of
their losses is each member's own gradient): no vmap at all. The training step that does so
is ``packed`` mode in :mod:`landscape.train`.

A model whose parametrised layers are all ``nn.Linear`` (an MLP without BatchNorm) runs
member-major instead, in *member rows*: activations (K*N, ...), member k's examples in rows
k*N to (k+1)*N - 1, so that the members' inputs are a view of the stacked batch, every Linear
one batched matrix product over (K, N, in) views with its bias in the product's kernel (as
``nn.Linear``'s addmm: under bf16 autocast it rounds as the plain module does), and no
activation is transposed between layers. On a CPU, 16 members of the demo's MLPs train
1.5-1.9x faster in member rows than side by side in the channels (``benchmarks/NOTES.md``,
session 13).

It computes what :class:`landscape.functional.FunctionalNet` under vmap computes (tests
compare them: in float64 over several steps, and one float32 step's gradients). Under bf16
autocast the two round differently in one place only: BatchNorm normalises bf16 activations
here (float32 statistics and parameters) and float32 copies of them under vmap. One step's
bf16 gradients of the two agree to ~3% of their distance from the float32 gradients
(ResNet18 width 2, CPU and H200); five steps apart, bf16 rounding alone compounds to 0.24. Supported layers: ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm1d/2d`` and
layers without parameters that act per channel; a model with another parametrised layer is
refused when the packed template is built.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.functional import BoundModule, FunctionalNet, Params
from landscape.objective import classification_loss

__all__ = ["PackedNet", "channels_last_images", "member_losses", "pack_inputs"]


def _conv(self: nn.Conv2d, x: Tensor) -> Tensor:
    w = self.weight  # (K, O, C/groups, kh, kw)
    K = w.shape[0]
    bias = self.bias.flatten() if self.bias is not None else None
    return F.conv2d(
        x, w.flatten(0, 1), bias, self.stride, self.padding, self.dilation, self.groups * K
    )


def _linear(self: nn.Linear, x: Tensor) -> Tensor:
    w = self.weight  # (K, out, in)
    K, n_out, n_in = w.shape
    h = torch.einsum("nki,koi->nko", x.reshape(x.shape[0], K, n_in), w)
    if self.bias is not None:  # in h's dtype, as nn.Linear under autocast (a float32 bias
        h = h + self.bias.to(h.dtype)  # would promote a bf16 activation to float32)
    return h.reshape(x.shape[0], K * n_out)


def _norm(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    # running statistics (K, C) flattened as views: the update lands in the stacked buffers
    if self.training and self.track_running_stats:
        self.num_batches_tracked.add_(1)
    return F.batch_norm(
        x,
        self.running_mean.flatten() if self.track_running_stats else None,
        self.running_var.flatten() if self.track_running_stats else None,
        self.weight.flatten() if self.affine else None,
        self.bias.flatten() if self.affine else None,
        self.training or not self.track_running_stats,
        self.momentum if self.momentum is not None else 0.0,
        self.eps,
    )


_PACKED = ((nn.Conv2d, _conv), (nn.Linear, _linear), (nn.modules.batchnorm._BatchNorm, _norm))


def _linear_rows(self: nn.Linear, x: Tensor) -> Tensor:
    w = self.weight  # (K, out, in); x (K*N, ..., in), member k's rows k*N to (k+1)*N - 1
    K, n_out, n_in = w.shape
    x3 = x.reshape(K, -1, n_in)
    if n_out < n_in:
        # narrow outputs (a classifier head): the products as (out, N) = W (out, in) x^T, so
        # that no product, forward or backward, writes a matrix of few columns (on a CPU,
        # (N, 10) outputs ran at a fifth of the speed of (10, N) ones); one small copy back
        b = self.bias.unsqueeze(2) if self.bias is not None else None
        hT = torch.bmm(w, x3.mT) if b is None else torch.baddbmm(b, w, x3.mT)
        return hT.mT.reshape(*x.shape[:-1], n_out)
    if self.bias is None:
        h = torch.bmm(x3, w.mT)
    else:  # the bias in the product's kernel, as nn.Linear's addmm
        h = torch.baddbmm(self.bias.unsqueeze(1), x3, w.mT)
    return h.view(*x.shape[:-1], n_out)


def channels_last_images(x: Tensor) -> Tensor:
    """Image batches (4-D) on a CUDA device in NHWC layout; anything else as it is."""
    if x.dim() == 4 and x.is_cuda:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def pack_inputs(x: Tensor) -> Tensor:
    """Per-member inputs (K, N, C, ...) -> packed (N, K*C, ...): one copy."""
    K, N = x.shape[:2]
    return x.transpose(0, 1).reshape(N, K * x.shape[2], *x.shape[3:])


def member_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Each member's mean cross-entropy (in float32, or float64 for float64 logits):
    logits (N, K, classes), y (K, N) -> (K,)."""
    return classification_loss(logits, y, reduction="members")[0]


class PackedNet:
    """The packed view of a :class:`FunctionalNet`'s architecture: ``logits(params, buffers,
    x_packed)`` with stacked parameters and buffers (K, ...) returns (N, K, classes), for
    inputs laid out by :meth:`inputs`. ``rows``: the layout is member rows (see the module)."""

    def __init__(self, net: FunctionalNet):
        self.module = copy.deepcopy(net.module)  # a meta-device copy, its layers rewritten
        subs = list(self.module.modules())
        self.rows = all(
            isinstance(m, nn.Linear) or not list(m.parameters(recurse=False)) for m in subs
        ) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in subs)
        for name, sub in self.module.named_modules():
            own = list(sub.parameters(recurse=False))
            kind = next((fn for cls, fn in _PACKED if isinstance(sub, cls)), None)
            if self.rows and kind is _linear:
                kind = _linear_rows
            if kind is not None:
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.momentum is None:
                    raise ValueError(f"packed layout: {name} uses a cumulative moving average")
                sub.forward = types.MethodType(kind, sub)
            elif own:
                raise ValueError(
                    f"packed layout does not support {type(sub).__name__} ({name or 'model'})"
                )
        self.bound = BoundModule(net, self.module)  # called with the stacked tensors set in it

    def logits(self, params: Params, buffers: Params, x: Tensor, train: bool) -> Tensor:
        """x packed (N, K*C, ...) -> logits (N, K, classes); BatchNorm statistics of every
        member update in place in ``buffers`` when ``train``."""
        K = next(iter(params.values())).shape[0]
        out = self.bound(params, buffers, x, train)
        if self.rows:
            return out.view(K, -1, out.shape[-1]).transpose(0, 1)
        return out.reshape(out.shape[0], K, -1)

    def inputs(self, x: Tensor) -> Tensor:
        """Per-member inputs (K, N, ...) in this layout."""
        return x.flatten(0, 1) if self.rows else pack_inputs(x)

    def losses(self, params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        """(K,) mean cross-entropy of every member in eval mode, from per-member inputs
        x (K, N, ...) and labels y (K, N): :meth:`FunctionalNet.loss` for all members at once,
        without vmap (so it can be differentiated twice by plain autograd)."""
        return member_losses(self.logits(params, buffers, self.inputs(x), train=False), y)
