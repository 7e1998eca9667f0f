"""Every data set a variant may name, one record each: what it is, not how it is loaded.

A :class:`DataRecord` holds a data set's input shape, number of classes, training and test set
sizes, where it comes from, and (for torchvision's data sets) the folder under ``data.root``
and the files torchvision reads there. Everything else derives from :data:`DATA_SETS`: the
names ``data.name`` accepts (``landscape.variant``), the loaders and the missing-files check
(``landscape.data``), batch-size checks and cost estimates (``sweeps``), and the catalogue a
sweep writes into ``manifest.json`` (``landscape.catalogue``), from which ``analysis`` reads the
number of classes. Adding a data set is a record here and its ``conf/data/<name>.yaml``.

A size, a class count or a dimension is a number, or the ``data.*`` knob that sets it (the
synthetic data set's are its own knobs), or a quantity ``DataSpec`` derives from its knobs
(``data.modular_train_size``: the modular task's split of its p^2 pairs); :meth:`DataRecord.resolve`
reads it from a ``DataSpec``. Nothing here imports torch (``landscape.variant`` reads the names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from landscape.variant import DataSpec

Size = int | str  # a number, or the ``data.*`` knob that sets it


@dataclass(frozen=True)
class DataRecord:
    """One data set. ``loader`` names the function of ``landscape.data.LOADERS`` that builds it;
    ``format`` is the on-disk format of ``files`` (what a test writes to load it for real)."""

    name: str
    source: str  # where it comes from, in words
    loader: (
        str  # "torchvision", "digits", "synthetic", "modular", "parity" (landscape.data.LOADERS)
    )
    format: str  # "idx", "cifar-python" (files under data.root), "bundled", "generated"
    input_shape: tuple[Size, ...]
    classes: Size
    train_size: Size
    test_size: Size
    torchvision_class: str | None = None  # class in torchvision.datasets
    folder: str | None = None  # directory under data.root that holds ``files``
    files: tuple[str, ...] = ()
    hint: str = ""  # what torchvision checks, and how data.download=true gets the files
    # 0: float inputs (images (C, H, W), vectors (D,)); > 0: integer token ids in [0, vocab),
    # inputs of shape (T,) and dtype int64 (generated algorithmic tasks)
    vocab: Size = 0

    def resolve(self, value: Size, spec: DataSpec) -> int:
        """A number as it is; a knob (``data.n_classes``) read from ``spec``."""
        return value if isinstance(value, int) else int(getattr(spec, value.partition(".")[2]))

    def shape_of(self, spec: DataSpec) -> tuple[int, ...]:
        return tuple(self.resolve(d, spec) for d in self.input_shape)

    def classes_of(self, spec: DataSpec) -> int:
        return self.resolve(self.classes, spec)

    def train_size_of(self, spec: DataSpec) -> int:
        return self.resolve(self.train_size, spec)

    def test_size_of(self, spec: DataSpec) -> int:
        return self.resolve(self.test_size, spec)

    def vocab_of(self, spec: DataSpec) -> int:
        return self.resolve(self.vocab, spec)

    def record(self) -> dict[str, Any]:
        """The record as plain JSON (lists for tuples; torchvision's fields only where set)."""
        out: dict[str, Any] = {
            "source": self.source,
            "loader": self.loader,
            "format": self.format,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "train_size": self.train_size,
            "test_size": self.test_size,
        }
        if self.vocab:
            out["vocab"] = self.vocab
        derived = {
            v: DERIVED[v]
            for v in (*self.input_shape, self.classes, self.train_size, self.test_size, self.vocab)
            if v in DERIVED
        }
        if derived:  # names no knob column carries: how a reader computes them from the knobs
            out["derived"] = derived
        if self.torchvision_class:
            out |= {
                "torchvision_class": self.torchvision_class,
                "folder": self.folder,
                "files": list(self.files),
            }
        return out


# the quantities a record may name that ``DataSpec`` derives from its knobs, in words (the
# manifest carries these, as no knob column holds them)
DERIVED = {
    "data.modular_vocab": "data.modulus + 1",
    "data.modular_train_size": "round(data.train_fraction * pairs), pairs = data.modulus^2 "
    "(data.modulus * (data.modulus - 1) for data.operation=div)",
    "data.modular_test_size": "pairs - data.modular_train_size",
}


# torchvision's MNIST family: the same four IDX files (uncompressed) under <Class>/raw
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX = "uncompressed; data.download=true fetches the .gz files, or uses .gz files already there, and extracts them"
_MD5 = "each file's md5 is checked; data.download=true fetches {0}, or uses {0} already in data.root, and extracts it"


def _idx(name: str, cls: str, source: str) -> DataRecord:
    """A 28x28 grey-scale, 10-class set in torchvision's MNIST layout (60,000 / 10,000 images)."""
    return DataRecord(
        name,
        source,
        loader="torchvision",
        format="idx",
        input_shape=(1, 28, 28),
        classes=10,
        train_size=60000,
        test_size=10000,
        torchvision_class=cls,
        folder=os.path.join(cls, "raw"),
        files=IDX_FILES,
        hint=_IDX,
    )


_RECORDS = (
    DataRecord(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits (1,797 images; a fixed seeded split)",
        loader="digits",
        format="bundled",
        input_shape=(1, 8, 8),
        classes=10,
        train_size=1347,
        test_size=450,
    ),
    DataRecord(
        "synthetic",
        "a seeded Gaussian mixture: data.n_classes clusters in data.n_features dimensions",
        loader="synthetic",
        format="generated",
        input_shape=("data.n_features",),
        classes="data.n_classes",
        train_size="data.n_train",
        test_size="data.n_test",
    ),
    DataRecord(
        "modular",
        "generated modular arithmetic: (a, b, =) -> a op b mod data.modulus over every pair, "
        "a data.train_fraction of the pairs (drawn by data.split_seed) for training",
        loader="modular",
        format="generated",
        input_shape=(3,),
        classes="data.modulus",
        train_size="data.modular_train_size",
        test_size="data.modular_test_size",
        vocab="data.modular_vocab",
    ),
    DataRecord(
        "parity",
        "generated sparse parity: data.n_bits random bits, the label the XOR of data.k of them "
        "(chosen, with the examples, by data.data_seed)",
        loader="parity",
        format="generated",
        input_shape=("data.n_bits",),
        classes=2,
        train_size="data.n_train",
        test_size="data.n_test",
        vocab=2,
    ),
    _idx("mnist", "MNIST", "torchvision's MNIST handwritten digits"),
    _idx("fashion_mnist", "FashionMNIST", "torchvision's Fashion-MNIST clothing images"),
    _idx("kmnist", "KMNIST", "torchvision's Kuzushiji-MNIST cursive Japanese characters"),
    DataRecord(
        "cifar10",
        "torchvision's CIFAR-10 colour images",
        loader="torchvision",
        format="cifar-python",
        input_shape=(3, 32, 32),
        classes=10,
        train_size=50000,
        test_size=10000,
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        hint=_MD5.format("cifar-10-python.tar.gz"),
    ),
    DataRecord(
        "cifar100",
        "torchvision's CIFAR-100 colour images (fine labels)",
        loader="torchvision",
        format="cifar-python",
        input_shape=(3, 32, 32),
        classes=100,
        train_size=50000,
        test_size=10000,
        torchvision_class="CIFAR100",
        folder="cifar-100-python",
        files=("train", "test", "meta"),
        hint=_MD5.format("cifar-100-python.tar.gz"),
    ),
)
DATA_SETS: dict[str, DataRecord] = {r.name: r for r in _RECORDS}
DATA_NAMES = tuple(DATA_SETS)


def train_set_size(spec: DataSpec) -> int:
    """Training examples of ``spec``'s data set before ``data.subset``."""
    return DATA_SETS[spec.name].train_size_of(spec)
