"""Model registry. Every model takes ``forward(x, features=False)``: with ``features=True`` it
returns the penultimate representation (for CKA on features), otherwise logits.

``build_model(spec, input_shape, num_classes)`` is the one constructor; architecture
variants are entries in ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from landscape.variant import ConfigError, ModelSpec


class MLP(nn.Module):
    """Flatten -> depth x [Linear(width) (-> BatchNorm1d) -> ReLU] -> Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int, width: int, depth: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.body(x.flatten(1))  # (N, width)
        return h if features else self.head(h)


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]


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


def _mlp(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_features = int(torch.tensor(input_shape).prod())
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


MODELS: dict[str, Callable[[ModelSpec, tuple[int, ...], int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
}


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if spec.name not in MODELS:
        raise ConfigError(f"model.name must be one of {', '.join(sorted(MODELS))}, got {spec.name!r}")
    return MODELS[spec.name](spec, tuple(input_shape), num_classes)
