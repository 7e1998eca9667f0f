"""Model registry. Every model takes ``forward(x, features=False)``: with ``features=True`` it
returns the penultimate representation (for CKA on features), otherwise logits.

``build_model(spec, input_shape, num_classes)`` is the one constructor; architecture
variants are entries in ``MODELS``. Every model runs under ``torch.func.functional_call`` +
``vmap`` over stacked parameters and buffers, in train mode too (BatchNorm running
statistics update in place on the stacked buffers): no in-place activations, no ops that
vmap cannot batch. BatchNorm runs in float32 even under bf16 autocast (see
:class:`BatchNorm2d`); a model made float64 runs in float64 throughout.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from landscape.variant import ConfigError, ModelSpec

_NATIVE_NORM: ContextVar[bool] = ContextVar("native_norm", default=False)


@contextmanager
def native_norm() -> Iterator[None]:
    """Inside this context BatchNorm takes low-precision activations as they are (the
    library normalises them with float32 statistics and parameters, as in ordinary mixed
    precision training), saving two casts of every activation. For models run one member
    at a time (``StepFn`` mode ``loop``); not under vmap (see :class:`_Float32Norm`)."""
    token = _NATIVE_NORM.set(True)
    try:
        yield
    finally:
        _NATIVE_NORM.reset(token)


class _Float32Norm:
    """Mixin: normalise low-precision (bf16, float16) activations in float32 and hand back
    the input's dtype. vmap + bf16 autocast + BatchNorm fails in the backward pass on CUDA
    ("Expected running_mean to have type BFloat16 but got Float"); float32 inside the
    stacked model avoids it. float32 and float64 activations are normalised as they are (a
    float64 model has float64 statistics)."""

    def forward(self, x: Tensor) -> Tensor:
        if _NATIVE_NORM.get() or x.dtype in (torch.float32, torch.float64):
            return super().forward(x)  # type: ignore[misc]
        return super().forward(x.float()).to(x.dtype)  # type: ignore[misc]


class BatchNorm1d(_Float32Norm, nn.BatchNorm1d):
    pass


class BatchNorm2d(_Float32Norm, nn.BatchNorm2d):
    pass


class MLP(nn.Module):
    """Flatten -> depth x [Linear(width) (-> BatchNorm1d) -> ReLU] -> Linear(num_classes)."""

    def __init__(
        self, in_features: int, num_classes: int, width: int, depth: int, batch_norm: bool
    ):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if batch_norm:
                layers.append(BatchNorm1d(width))
            layers.append(nn.ReLU())
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        x = x.flatten(1)
        if not x.is_floating_point():  # token ids (data=modular, parity) read as numbers
            x = x.to(self.head.weight.dtype)
        h = self.body(x)  # (N, width)
        return h if features else self.head(h)


def _conv_block(
    c_in: int, c_out: int, batch_norm: bool, bias: bool | None = None
) -> list[nn.Module]:
    """3x3 conv (bias only without BN unless ``bias`` says otherwise) (-> BN) -> ReLU."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm if bias is None else bias)
    return [conv, BatchNorm2d(c_out), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]


class CNN(nn.Module):
    """Two conv stages (width, 2*width channels), max-pool between, global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int, batch_norm: bool):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(in_channels, width, batch_norm),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width, batch_norm),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.body(x)  # (N, 2*width)
        return h if features else self.head(h)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, batch_norm: bool) -> nn.Sequential:
    """Conv (no bias when BN follows) (-> BN): the unit ResNet blocks are made of."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm)
    return nn.Sequential(conv, BatchNorm2d(c_out)) if batch_norm else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """He et al.'s basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).

    The shortcut is the identity, or a strided 1x1 conv (+ BN) when the shape changes. With
    ``skip=False`` there is no shortcut at all and no projection parameters (Li et al.'s
    "noshort" nets): relu(bn(conv(relu(bn(conv(x)))))).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool, skip: bool):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, batch_norm)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, batch_norm)
        self.relu = nn.ReLU()
        self.skip = skip
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut: nn.Module = _conv_bn(c_in, c_out, 1, stride, batch_norm)
        elif skip:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.skip:
            out = out + self.shortcut(x)
        return self.relu(out)


class ResNet18(nn.Module):
    """CIFAR-style ResNet18 (He et al. 2016 as in kuangliu/pytorch-cifar, used by Yang et al.
    2021): 3x3 stem conv (stride 1, no max-pool), four stages of two basic blocks with
    k, 2k, 4k, 8k channels (stride 1, 2, 2, 2), global average pool, linear head. k = 64 is
    the standard net (11,173,962 parameters for 10 classes). Adaptive pooling makes any
    input size work (32x32 CIFAR, 28x28 MNIST, 8x8 digits)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int, batch_norm: bool, skip: bool
    ):
        super().__init__()
        k = width
        self.stem = nn.Sequential(_conv_bn(in_channels, k, 3, 1, batch_norm), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = k
        for i, c_out in enumerate((k, 2 * k, 4 * k, 8 * k)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(c_in, c_out, stride, batch_norm, skip),
                    BasicBlock(c_out, c_out, 1, batch_norm, skip),
                )
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * k, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.pool(self.stages(self.stem(x)))  # (N, 8k)
        return h if features else self.head(h)


class VGG9(nn.Module):
    """Li et al. (2018)'s VGG-9 (tomgoldstein/loss-landscape ``cifar10/models/vgg.py``) with
    conv widths scaled by k (k = 64 is theirs): conv [k, k, M, 2k, 2k, M, 4k, 4k, 4k, M], each
    conv 3x3 with bias (-> BN) -> ReLU, max-pools 2x2 with ceil_mode; then
    Linear(4k * s * s, 4k) (-> BatchNorm1d) -> ReLU and Linear(4k, num_classes): 7 conv + 2
    linear layers. s is the spatial size after the three pools (4 for 32x32 and 28x28 inputs,
    1 for 8x8), so the 32x32 net is exactly theirs. Conv biases are kept under BN, as in the
    reference. ``features`` is the 4k-dim output of the hidden linear layer."""

    def __init__(
        self,
        in_channels: int,
        spatial: tuple[int, int],
        num_classes: int,
        width: int,
        batch_norm: bool,
    ):
        super().__init__()
        k = width
        layers: list[nn.Module] = []
        c_in = in_channels
        h, w = spatial
        for stage in ((k, k), (2 * k, 2 * k), (4 * k, 4 * k, 4 * k)):
            for c_out in stage:
                layers += _conv_block(c_in, c_out, batch_norm, bias=True)
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.body = nn.Sequential(*layers, nn.Flatten())
        fc: list[nn.Module] = [nn.Linear(4 * k * h * w, 4 * k)]
        if batch_norm:
            fc.append(BatchNorm1d(4 * k))
        self.fc = nn.Sequential(*fc, nn.ReLU())
        self.head = nn.Linear(4 * k, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.fc(self.body(x))  # (N, 4k)
        return h if features else self.head(h)


def _mlp(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_features = math.prod(input_shape)
    return MLP(in_features, num_classes, spec.width, spec.depth, spec.batch_norm)


def _image_channels(spec: ModelSpec, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name={spec.name} needs image inputs of shape (C, H, W), got {tuple(input_shape)}; "
            "use model=mlp for vector data"
        )
    return input_shape[0]


def _cnn(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CNN(_image_channels(spec, input_shape), num_classes, spec.width, spec.batch_norm)


def _resnet18(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    skip = getattr(spec, "skip", True)
    return ResNet18(
        _image_channels(spec, input_shape), num_classes, spec.width, spec.batch_norm, skip
    )


def _vgg9(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels = _image_channels(spec, input_shape)
    return VGG9(
        channels, (input_shape[1], input_shape[2]), num_classes, spec.width, spec.batch_norm
    )


MODELS: dict[str, Callable[[ModelSpec, tuple[int, ...], int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet18": _resnet18,
    "vgg9": _vgg9,
}


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if spec.name not in MODELS:
        raise ConfigError(
            f"model.name must be one of {', '.join(sorted(MODELS))}, got {spec.name!r}"
        )
    return MODELS[spec.name](spec, tuple(input_shape), num_classes)


@functools.lru_cache(maxsize=4096)
def model_forward_flops(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> float:
    """Forward FLOPs of one example (two per multiply-accumulate, as ``torch.utils.flop_counter``
    counts), counted on the ``meta`` device: nothing is allocated or computed. A model whose
    work the counter cannot see (no matmul or convolution) counts its parameter count."""
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes).eval()  # BatchNorm takes 1 example
        x = torch.empty(1, *input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return max(float(counter.get_total_flops()), float(sum(p.numel() for p in model.parameters())))
