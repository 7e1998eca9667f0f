"""Augmentation: crops are exact windows of the padded image, flips are exact mirrors, the
identity when disabled, and a member's draws depend only on its own generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from landscape.augment import augment_batch, crop, hflip, pad, random_crop_flip
from landscape.variant import ConfigError, DataSpec

K, B, C, H, W = 3, 16, 2, 6, 5


def batch(seed: int = 0) -> torch.Tensor:
    # a random permutation of distinct values: every window of the padded image is unique
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(K * B * C * H * W, generator=g).float().add(1).view(K, B, C, H, W)


def test_crop_at_given_offsets_equals_slicing_the_padded_image():
    x, p = batch(), 4
    g = torch.Generator().manual_seed(1)
    top, left = (
        torch.randint(2 * p + 1, (K, B), generator=g),
        torch.randint(2 * p + 1, (K, B), generator=g),
    )
    out = crop(x, top, left, p)
    for k in range(K):
        for b in range(B):
            padded = F.pad(x[k, b], (p, p, p, p))  # torchvision's zero padding
            t, l_ = int(top[k, b]), int(left[k, b])
            assert torch.equal(out[k, b], padded[:, t : t + H, l_ : l_ + W])
    assert torch.equal(
        crop(x, torch.full((K, B), p), torch.full((K, B), p), p), x
    )  # centre = original


def test_pad_fills_each_channel_with_its_value():
    x = batch()
    padded = pad(x, 2, fill=torch.tensor([-1.5, 7.0]))
    assert padded.shape == (K, B, C, H + 4, W + 4)
    assert torch.equal(padded[..., 2:-2, 2:-2], x)
    assert (padded[:, :, 0, 0, :] == -1.5).all() and (padded[:, :, 1, :, -1] == 7.0).all()


def _windows(padded: torch.Tensor) -> list[torch.Tensor]:
    """Every H x W window of one padded (C, H+2p, W+2p) image."""
    return [
        padded[:, t : t + H, l_ : l_ + W]
        for t in range(padded.shape[1] - H + 1)
        for l_ in range(padded.shape[2] - W + 1)
    ]


def test_random_crops_are_real_crops_and_flips_are_exact_mirrors():
    x = batch()
    out = random_crop_flip(x, torch.Generator().manual_seed(2))
    offsets, flips = set(), 0
    for k in range(K):
        for b in range(B):
            windows = _windows(F.pad(x[k, b], (4, 4, 4, 4)))
            plain = [i for i, w in enumerate(windows) if torch.equal(out[k, b], w)]
            mirrored = [i for i, w in enumerate(windows) if torch.equal(out[k, b], w.flip(-1))]
            assert len(plain) + len(mirrored) >= 1  # an exact window, possibly mirrored
            offsets.update(plain + mirrored)
            flips += bool(mirrored) and not plain
    assert len(offsets) > 10  # offsets really vary
    assert 0 < flips < K * B  # both flipped and unflipped examples


def test_hflip_is_exact():
    x = batch()
    mask = torch.zeros(K, B, dtype=torch.bool)
    mask[1, 3] = True
    out = hflip(x, mask)
    assert torch.equal(out[1, 3], x[1, 3].flip(-1))
    assert torch.equal(out[~mask], x[~mask])


def test_identity_when_disabled():
    x = batch()
    assert augment_batch(x, DataSpec(augment=False), torch.Generator()) is x
    assert torch.equal(random_crop_flip(x, torch.Generator(), crop_padding=0, flip=False), x)


def test_members_draw_only_from_their_own_generator():
    x = batch()
    gens = [torch.Generator().manual_seed(s) for s in (10, 11, 12)]
    packed = augment_batch(x, DataSpec(augment=True), gens)
    solo = augment_batch(x[1:2], DataSpec(augment=True), [torch.Generator().manual_seed(11)])
    assert torch.equal(packed[1], solo[0])  # a member's augmentation ignores the rest of the pack
    again = augment_batch(
        x, DataSpec(augment=True), [torch.Generator().manual_seed(s) for s in (10, 11, 12)]
    )
    assert torch.equal(packed, again)  # seeded: deterministic


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="data.augment"):
        augment_batch(torch.zeros(K, B, 8), DataSpec(augment=True), torch.Generator())
    with pytest.raises(ValueError, match="one generator per pack member"):
        random_crop_flip(batch(), [torch.Generator()])
