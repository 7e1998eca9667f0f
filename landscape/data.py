"""Data sets as device-resident tensors, and the per-variant views of them (subset, label noise).

``load_dataset(spec)`` returns the whole train and test sets as float tensors (N, C, H, W)
in [0, 1] (vectors (N, D) for synthetic data; int64 token ids (N, T) for the generated
algorithmic tasks, ``modular`` and ``parity``), normalised per channel with training-set
statistics when ``data.normalize``; a batch is an index gather, never a DataLoader.
What each data set is (shape, classes, sizes, files) is its record in
:mod:`landscape.datasets`; torchvision's data sets (MNIST, CIFAR-10, ...) are read through
torchvision's own dataset classes from ``data.root`` (the files torchvision's
``download=True`` writes) and converted once. The per-variant knobs (training subset, label
noise) are applied by :func:`member_view`, seeded by the variant's seed, so members of one
pack can differ in them.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from landscape.datasets import DATA_SETS
from landscape.variant import ConfigError, DataSpec


@dataclass
class Dataset:
    name: str
    x_train: Tensor  # (N, *input_shape), float32
    y_train: Tensor  # (N,), int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: Tensor | None = None  # (C,) per-channel training mean subtracted by normalisation
    std: Tensor | None = None  # (C,) per-channel training std divided out by normalisation
    # 0: float inputs; > 0: x_* hold int64 token ids in [0, vocab) (see DataRecord.vocab)
    vocab: int = 0

    @property
    def tokens(self) -> bool:
        """True when inputs are integer token ids (no normalisation, augmentation or mixup)."""
        return self.vocab > 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def pad_value(self) -> Tensor:
        """(C,) the value a raw 0 (black) pixel has after normalisation: what torchvision's
        RandomCrop(padding=4) pads with, since it runs before Normalize."""
        channels = self.x_train.shape[1]
        if self.mean is None or self.std is None:
            return torch.zeros(channels, device=self.x_train.device)
        return -self.mean / self.std

    def to(self, device: torch.device | str) -> Dataset:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
            move(self.mean),
            move(self.std),
            self.vocab,
        )


def _split(x: Tensor, y: Tensor, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits_arrays() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (images (1797, 8, 8), labels (1797,)): the CSV file that
    ships in its package, read without importing scikit-learn (about 1.5 s of imports, which
    every process that loads the data would pay), or ``load_digits`` where the file is not
    where scikit-learn keeps it. The same values either way (a test compares them)."""
    found = importlib.util.find_spec("sklearn")  # finds the package, runs none of it
    places = found.submodule_search_locations if found is not None else None
    path = Path(next(iter(places or [""]))) / "datasets" / "data" / "digits.csv.gz"
    if places and path.is_file():
        with gzip.open(path, "rt") as f:
            rows = torch.tensor(np.loadtxt(f, delimiter=","), dtype=torch.float32)
        return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].long()
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)
    return images, torch.tensor(bunch.target, dtype=torch.long)


def _digits(spec: DataSpec) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download).
    A fixed seeded split: 1,347 training and 450 test images (the record's sizes)."""
    record = DATA_SETS["digits"]
    images, y = _digits_arrays()
    x = images.unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    split = _split(x, y, record.test_size_of(spec), seed=spec.data_seed)
    return Dataset("digits", *split, num_classes=record.classes_of(spec))


def _synthetic(spec: DataSpec) -> Dataset:
    """A seeded Gaussian mixture: n_classes unit-variance clusters whose centres are drawn
    with standard deviation ``class_sep`` in ``n_features`` dimensions."""
    g = torch.Generator().manual_seed(spec.data_seed)
    centres = torch.randn(spec.n_classes, spec.n_features, generator=g) * spec.class_sep
    n = spec.n_train + spec.n_test
    y = torch.randint(spec.n_classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, spec.n_features, generator=g)
    return Dataset(
        "synthetic",
        x[: spec.n_train],
        y[: spec.n_train],
        x[spec.n_train :],
        y[spec.n_train :],
        spec.n_classes,
    )


def modular_table(p: int, operation: str) -> tuple[Tensor, Tensor]:
    """Every pair (a, b) of data=modular in order (a major; for div, b != 0) as (a, b) (M, 2)
    int64, and a op b mod p (M,): add, sub, mul, div (a * b^(p - 2), b's inverse by Fermat),
    x2_xy_y2 (a^2 + ab + b^2)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if operation == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    if operation == "add":
        y = a + b
    elif operation == "sub":
        y = a - b
    elif operation == "mul":
        y = a * b
    elif operation == "div":
        y = a * torch.tensor([pow(int(v), p - 2, p) for v in range(p)])[b]
    elif operation == "x2_xy_y2":
        y = a * a + a * b + b * b
    else:
        raise ConfigError(
            f"data.operation must be one of add, sub, mul, div, x2_xy_y2, got {operation!r}"
        )
    return torch.stack([a, b], 1), y.remainder(p)


def _modular(spec: DataSpec) -> Dataset:
    """a op b mod p for every pair (a, b), each example the token sequence (a, b, =) with "="
    the token p (vocab p + 1, p classes). The training set is ``round(train_fraction * pairs)``
    pairs drawn by ``data.split_seed`` (a seeded permutation of the pairs: its head trains,
    the rest is the test set, so the two are complements), each in the table's order."""
    p = spec.modulus
    pairs, y = modular_table(p, spec.operation)
    x = torch.cat([pairs, torch.full((len(y), 1), p, dtype=torch.long)], 1)  # (M, 3)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.split_seed))
    n = spec.modular_train_size
    train, test = perm[:n].sort().values, perm[n:].sort().values
    return Dataset("modular", x[train], y[train], x[test], y[test], p, vocab=spec.modular_vocab)


def parity_bits(spec: DataSpec, g: torch.Generator | None = None) -> Tensor:
    """The ``data.k`` relevant bit positions of data=parity (sorted): the first draw of a
    generator seeded by ``data.data_seed`` (``g``, to go on drawing from it)."""
    g = torch.Generator().manual_seed(spec.data_seed) if g is None else g
    return torch.randperm(spec.n_bits, generator=g)[: spec.k].sort().values


def _parity(spec: DataSpec) -> Dataset:
    """Sparse parity: ``n_train + n_test`` strings of ``n_bits`` uniform random bits (tokens 0 and
    1, vocab 2), the label the XOR of the ``k`` bits :func:`parity_bits` picks; the strings are
    drawn independently (with replacement: for n_bits of 40 a repeat is vanishingly rare) from
    a generator seeded by ``data.data_seed`` after the bits are chosen."""
    g = torch.Generator().manual_seed(spec.data_seed)
    relevant = parity_bits(spec, g)
    x = torch.randint(2, (spec.n_train + spec.n_test, spec.n_bits), generator=g)
    y = x[:, relevant].sum(1).remainder(2)
    n = spec.n_train
    return Dataset("parity", x[:n], y[:n], x[n:], y[n:], 2, vocab=2)


# the data sets read through torchvision's own classes, from their files under data.root
TORCHVISION_SOURCES = {n: r for n, r in DATA_SETS.items() if r.loader == "torchvision"}


def _images_to_float(data) -> Tensor:
    """torchvision's raw arrays -> float32 (N, C, H, W) in [0, 1]: MNIST-style uint8 tensors
    (N, H, W), CIFAR-style uint8 numpy arrays (N, H, W, C)."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.to(torch.float32).div_(255.0).contiguous()


def _no_files(spec: DataSpec, detail: str) -> ConfigError:
    source = TORCHVISION_SOURCES[spec.name]
    where = os.path.join(spec.root, source.folder)
    fetch = (
        "downloading failed"
        if spec.download
        else "set data.download=true to let torchvision fetch them"
    )
    return ConfigError(
        f"data.name={spec.name}: no usable {source.torchvision_class} files in {where!r} (data.root={spec.root!r}); "
        f"torchvision expects {', '.join(source.files)} there ({source.hint}). "
        f"{fetch.capitalize()}, or point data.root at a directory that holds {source.folder}/. "
        f"{detail}"
    )


def check_files(spec: DataSpec) -> None:
    """Raise the loader's ConfigError now if a torchvision data set's files are missing and
    ``data.download`` is off (the files' contents are checked when they are loaded). A check
    a sweep runs before anything starts, on a machine that sees the same ``data.root``."""
    if spec.name not in TORCHVISION_SOURCES or spec.download:
        return
    source = TORCHVISION_SOURCES[spec.name]
    folder = os.path.join(spec.root, source.folder)
    missing = [f for f in source.files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise _no_files(spec, f"Missing: {', '.join(missing)}.")


def _torchvision(spec: DataSpec) -> Dataset:
    """A data set of :data:`TORCHVISION_SOURCES` through torchvision's own dataset class."""
    import torchvision.datasets

    source = TORCHVISION_SOURCES[spec.name]
    cls = getattr(torchvision.datasets, source.torchvision_class)
    try:
        train = cls(spec.root, train=True, download=spec.download)
        test = cls(spec.root, train=False, download=spec.download)
    except (RuntimeError, ValueError, EOFError, IndexError, OSError, pickle.UnpicklingError) as e:
        # torchvision's "Dataset not found or corrupted", or files it could not parse
        raise _no_files(spec, f"torchvision said: {type(e).__name__}: {e}") from e
    return Dataset(
        spec.name,
        _images_to_float(train.data),
        torch.as_tensor(train.targets, dtype=torch.long),
        _images_to_float(test.data),
        torch.as_tensor(test.targets, dtype=torch.long),
        source.classes_of(spec),
    )


# a record's ``loader`` -> the function that builds its Dataset
LOADERS = {
    "digits": _digits,
    "synthetic": _synthetic,
    "torchvision": _torchvision,
    "modular": _modular,
    "parity": _parity,
}


def _normalize(ds: Dataset) -> Dataset:
    """Per-channel (images) or per-feature (vectors) standardisation with training statistics,
    in place on the freshly loaded tensors (a CIFAR training set is 600 MB in float32)."""
    dims = [0] + list(range(2, ds.x_train.dim()))
    std, mean = torch.std_mean(ds.x_train, dim=dims)  # (C,)
    std = std.clamp_min(1e-6)
    shape = (1, -1) + (1,) * (ds.x_train.dim() - 2)
    for x in (ds.x_train, ds.x_test):
        x.sub_(mean.view(shape)).div_(std.view(shape))
    return Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, mean, std)


def load_dataset(spec: DataSpec) -> Dataset:
    """The whole data set as CPU tensors (move with ``.to(device)``).

    ``data.normalize`` is skipped on token data (``Dataset.tokens``): a token id is a name, not
    an intensity, so there is no mean to subtract (a model embeds the ids instead);
    ``data.augment`` is refused for it when the variant is built."""
    if spec.name not in DATA_SETS:
        raise ConfigError(
            f"data.name must be one of {', '.join(sorted(DATA_SETS))}, got {spec.name!r}"
        )
    ds = LOADERS[DATA_SETS[spec.name].loader](spec)
    return _normalize(ds) if spec.normalize and not ds.tokens else ds


def subset_size(spec: DataSpec, n_train: int) -> int:
    """Training-set size after ``data.subset`` (fraction in (0, 1] or a count)."""
    n = round(spec.subset * n_train) if spec.subset <= 1 else int(spec.subset)
    if not 1 <= n <= n_train:
        raise ConfigError(
            f"data.subset must select between 1 and {n_train} training examples, got {spec.subset!r}"
        )
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
    shift = torch.randint(
        1, num_classes, (n_noisy,), generator=g
    )  # never 0: the label always changes
    y[idx] = (y[idx] + shift) % num_classes
    return y


def member_view(ds: Dataset, spec: DataSpec, seed: int) -> tuple[Tensor, Tensor]:
    """A variant's training set as (indices into ``ds.x_train``, its labels with noise applied).

    Subset and noise are drawn from ``spec.sample_seed``, or the variant's ``seed`` when that
    is None."""
    if spec.sample_seed is not None:
        seed = spec.sample_seed
    n = subset_size(spec, len(ds.y_train))
    idx = subset_indices(len(ds.y_train), n, seed=seed + 1_000_003)
    y = ds.y_train[idx.to(ds.y_train.device)]
    if spec.label_noise > 0:
        y = noisy_labels(y.cpu(), spec.label_noise, ds.num_classes, seed=seed + 2_000_003).to(
            y.device
        )
    return idx.to(ds.y_train.device), y
