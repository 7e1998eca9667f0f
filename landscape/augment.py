"""On-device data augmentation for packed batches: random crop with zero-mean padding and
horizontal flip, the standard CIFAR recipe (He et al. 2016; torchvision
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``).

A batch has shape ``(K, B, C, H, W)``: K pack members, B examples each. Every example gets
its own crop offset and flip coin, drawn from explicit generators: one per member (then a
member's augmentations depend only on its own generator, so a packed run equals a solo
run) or one for the whole pack. No Python loop over examples: crops are two gathers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from landscape.variant import ConfigError, DataSpec

Generators = torch.Generator | Sequence[torch.Generator]


def _check_batch(x: Tensor) -> None:
    if x.dim() != 5:
        raise ValueError(
            f"augmentation needs a packed image batch (K, B, C, H, W), got shape {tuple(x.shape)}"
        )


def pad(x: Tensor, padding: int, fill: float | Tensor = 0.0) -> Tensor:
    """(K, B, C, H, W) -> (K, B, C, H + 2p, W + 2p), border filled with ``fill`` (a scalar or a
    (C,) per-channel value, e.g. ``Dataset.pad_value``: black after normalisation)."""
    K, B, C, H, W = x.shape
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand(C)
    out = fill.view(1, 1, C, 1, 1).expand(K, B, C, H + 2 * padding, W + 2 * padding).clone()
    out[..., padding : padding + H, padding : padding + W] = x
    return out


def crop(
    x: Tensor, top: Tensor, left: Tensor, padding: int = 4, fill: float | Tensor = 0.0
) -> Tensor:
    """Each example's H x W window of its padded image at offset (top, left), both (K, B)
    integers in [0, 2 * padding]; offset (padding, padding) is the original image."""
    _check_batch(x)
    K, B, C, H, W = x.shape
    padded = pad(x, padding, fill)  # (K, B, C, H+2p, W+2p)
    rows = top.view(K, B, 1, 1, 1) + torch.arange(H, device=x.device).view(1, 1, 1, H, 1)
    padded = padded.gather(3, rows.expand(K, B, C, H, W + 2 * padding))  # (K, B, C, H, W+2p)
    cols = left.view(K, B, 1, 1, 1) + torch.arange(W, device=x.device).view(1, 1, 1, 1, W)
    return padded.gather(4, cols.expand(K, B, C, H, W))  # (K, B, C, H, W)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the examples where the (K, B) bool ``mask`` is True."""
    _check_batch(x)
    return torch.where(mask.view(*mask.shape, 1, 1, 1), x.flip(-1), x)


def _draw(generator: Generators, K: int, B: int, high: int, device: torch.device) -> Tensor:
    """Integers in [0, high) of shape (K, B): member k's row from generator k when given K
    generators, else one (K, B) draw. Drawn on each generator's device, moved to ``device``."""
    if isinstance(generator, torch.Generator):
        return torch.randint(high, (K, B), generator=generator, device=generator.device).to(device)
    if len(generator) != K:
        raise ValueError(f"need one generator per pack member ({K}), got {len(generator)}")
    rows = [torch.randint(high, (B,), generator=g, device=g.device).to(device) for g in generator]
    return torch.stack(rows)


def random_crop_flip(
    x: Tensor,
    generator: Generators,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    fill: float | Tensor = 0.0,
) -> Tensor:
    """Random crop of the ``crop_padding``-padded image (0 disables it), then a horizontal
    flip with probability 1/2 (``flip``). Per member, the draws are: crop rows, crop
    columns, flip coins, each (B,), in that order."""
    _check_batch(x)
    K, B = x.shape[:2]
    if crop_padding > 0:
        top = _draw(generator, K, B, 2 * crop_padding + 1, x.device)
        left = _draw(generator, K, B, 2 * crop_padding + 1, x.device)
        x = crop(x, top, left, crop_padding, fill)
    if flip:
        x = hflip(x, _draw(generator, K, B, 2, x.device).bool())
    return x


def augment_batch(
    x: Tensor, spec: DataSpec, generator: Generators, fill: float | Tensor = 0.0
) -> Tensor:
    """``data.augment``: random crop (padding 4) and horizontal flip; the identity when off.
    Pass ``fill=Dataset.pad_value`` to pad with black as torchvision does before Normalize."""
    if not spec.augment:
        return x
    if x.dim() != 5:
        raise ConfigError(
            f"data.augment=true needs image data (K, B, C, H, W), got a batch of shape {tuple(x.shape)} "
            f"for data.name={spec.name}; set data.augment=false"
        )
    return random_crop_flip(x, generator, crop_padding=4, flip=True, fill=fill)
