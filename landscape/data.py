"""Data sets as device-resident tensors, and the per-variant views of them (subset, label noise).

``load_dataset(spec)`` returns the whole train and test sets as tensors; a batch is an
index gather, never a DataLoader. The per-variant knobs (training subset, label noise)
are applied by :func:`member_view`, seeded by the variant's seed, so members of one pack
can differ in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.variant import ConfigError, DataSpec


@dataclass
class Dataset:
    name: str
    x_train: Tensor  # (N, *input_shape), float32
    y_train: Tensor  # (N,), int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.num_classes)


def _split(x: Tensor, y: Tensor, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits(spec: DataSpec) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download).
    A fixed seeded split: 1,347 training and 450 test images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)
    return Dataset("digits", *_split(x, y, 450, seed=spec.data_seed), num_classes=10)


def _synthetic(spec: DataSpec) -> Dataset:
    """A seeded Gaussian mixture: n_classes unit-variance clusters whose centres are drawn
    with standard deviation ``class_sep`` in ``n_features`` dimensions."""
    g = torch.Generator().manual_seed(spec.data_seed)
    centres = torch.randn(spec.n_classes, spec.n_features, generator=g) * spec.class_sep
    n = spec.n_train + spec.n_test
    y = torch.randint(spec.n_classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, spec.n_features, generator=g)
    return Dataset("synthetic", x[: spec.n_train], y[: spec.n_train], x[spec.n_train:], y[spec.n_train:],
                   spec.n_classes)


LOADERS = {"digits": _digits, "synthetic": _synthetic}


def _normalize(ds: Dataset) -> Dataset:
    dims = [0] + list(range(2, ds.x_train.dim()))  # per channel for images, per feature for vectors
    mean = ds.x_train.mean(dim=dims, keepdim=True)[0]
    std = ds.x_train.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)
    return Dataset(ds.name, (ds.x_train - mean) / std, ds.y_train, (ds.x_test - mean) / std, ds.y_test,
                   ds.num_classes)


def load_dataset(spec: DataSpec) -> Dataset:
    """The whole data set as CPU tensors (move with ``.to(device)``)."""
    if spec.name not in LOADERS:
        raise ConfigError(f"data.name must be one of {', '.join(sorted(LOADERS))}, got {spec.name!r}")
    ds = LOADERS[spec.name](spec)
    return _normalize(ds) if spec.normalize else ds


def subset_size(spec: DataSpec, n_train: int) -> int:
    """Training-set size after ``data.subset`` (fraction in (0, 1] or a count)."""
    n = round(spec.subset * n_train) if spec.subset <= 1 else int(spec.subset)
    if not 1 <= n <= n_train:
        raise ConfigError(f"data.subset must select between 1 and {n_train} training examples, got {spec.subset!r}")
    return n


def subset_indices(n_train: int, n: int, seed: int) -> Tensor:
    """A seeded draw of n distinct training indices (all of them, in order, when n == n_train)."""
    if n == n_train:
        return torch.arange(n_train)
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def noisy_labels(y: Tensor, fraction: float, num_classes: int, seed: int) -> Tensor:
    """Exactly ``round(fraction * len(y))`` labels replaced by a different, uniformly random class."""
    g = torch.Generator().manual_seed(seed)
    n_noisy = round(fraction * len(y))
    y = y.clone()
    idx = torch.randperm(len(y), generator=g)[:n_noisy]
    shift = torch.randint(1, num_classes, (n_noisy,), generator=g)  # never 0: the label always changes
    y[idx] = (y[idx] + shift) % num_classes
    return y


def member_view(ds: Dataset, spec: DataSpec, seed: int) -> tuple[Tensor, Tensor]:
    """A variant's training set as (indices into ``ds.x_train``, its labels with noise applied)."""
    n = subset_size(spec, len(ds.y_train))
    idx = subset_indices(len(ds.y_train), n, seed=seed + 1_000_003)
    y = ds.y_train[idx.to(ds.y_train.device)]
    if spec.label_noise > 0:
        y = noisy_labels(y.cpu(), spec.label_noise, ds.num_classes, seed=seed + 2_000_003).to(y.device)
    return idx.to(ds.y_train.device), y
