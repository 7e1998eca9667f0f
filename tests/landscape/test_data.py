"""Data: torchvision's real on-disk formats (tiny files written here) loaded through the real
path, the missing-files error, normalisation, and exact subset / label-noise fractions."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from landscape.data import (
    LOADERS,
    TORCHVISION_SOURCES,
    check_files,
    load_dataset,
    member_view,
    noisy_labels,
    subset_indices,
    subset_size,
)
from landscape.datasets import DATA_NAMES, DATA_SETS, IDX_FILES, train_set_size
from landscape.variant import ConfigError, DataSpec, Variant

N_TRAIN, N_TEST = 12, 5


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx-ubyte format: big-endian magic (0x08 = uint8, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four IDX files of torchvision's MNIST family under ``root/folder`` (``MNIST/raw``)."""
    raw = root / folder
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST),
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


def write_cifar(
    root: Path, name: str, rng: np.random.Generator, monkeypatch
) -> dict[str, np.ndarray]:
    """CIFAR python batches: dicts with 'data' (n, 3072) uint8 rows (1024 red, 1024 green, 1024
    blue, each 32x32 row-major) and 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).

    torchvision checks every file's md5 against a table of the real files' sums; the only
    thing patched is that table (on the class), set to the sums of the files written here."""
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    out = {"x_train": [], "y_train": [], "x_test": None, "y_test": None}
    train_files = [f for f, _ in cls.train_list]
    per_file = N_TRAIN // len(train_files) if len(train_files) > 1 else N_TRAIN
    for f in train_files:
        x, y = (
            rng.integers(0, 256, (per_file, 3072)).astype(np.uint8),
            rng.integers(0, classes, per_file),
        )
        _pickle(folder / f, {"data": x, label_key: y.tolist(), "batch_label": f})
        out["x_train"].append(x)
        out["y_train"].append(y)
    (test_file,) = [f for f, _ in cls.test_list]
    out["x_test"], out["y_test"] = (
        rng.integers(0, 256, (N_TEST, 3072)).astype(np.uint8),
        rng.integers(0, classes, N_TEST),
    )
    _pickle(folder / test_file, {"data": out["x_test"], label_key: out["y_test"].tolist()})
    _pickle(folder / cls.meta["filename"], {cls.meta["key"]: [f"class{i}" for i in range(classes)]})
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[test_file, _md5(folder / test_file)]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    out["x_train"], out["y_train"] = np.concatenate(out["x_train"]), np.concatenate(out["y_train"])
    return out


IDX_SETS = [n for n, r in DATA_SETS.items() if r.format == "idx"]  # the MNIST family


def test_every_data_set_has_a_config_and_every_config_a_data_set():
    conf = Path(__file__).resolve().parents[2] / "conf" / "data"
    assert sorted(p.stem for p in conf.glob("*.yaml")) == sorted(DATA_NAMES)
    for name in DATA_NAMES:
        assert f"name: {name}\n" in (conf / f"{name}.yaml").read_text()
        assert DATA_SETS[name].loader in LOADERS


@pytest.mark.parametrize("name", IDX_SETS)
def test_mnist_formats_load_through_torchvision(tmp_path, name):
    # written where the record says, read through torchvision's own class for the record
    record = DATA_SETS[name]
    assert record.files == IDX_FILES and record.folder == f"{record.torchvision_class}/raw"
    arrays = write_mnist(tmp_path, record.folder, np.random.default_rng(0))
    ds = load_dataset(DataSpec(name=name, root=str(tmp_path), normalize=False))
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert ds.x_test.shape == (N_TEST, 1, 28, 28) and ds.num_classes == 10
    assert ds.input_shape == record.input_shape and ds.num_classes == record.classes
    expected = (
        torch.tensor(arrays["train-images-idx3-ubyte"], dtype=torch.float32).unsqueeze(1) / 255
    )
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.y_train.dtype == torch.long


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_formats_load_through_torchvision(tmp_path, monkeypatch, name, classes):
    arrays = write_cifar(tmp_path, name, np.random.default_rng(1), monkeypatch)
    ds = load_dataset(DataSpec(name=name, root=str(tmp_path), normalize=False))
    assert ds.x_train.shape == (
        N_TRAIN if name == "cifar100" else 10,
        3,
        32,
        32,
    )  # CIFAR-10: 5 files x 2
    assert ds.num_classes == classes
    # a row is 1024 red, 1024 green, 1024 blue values: reshape (3, 32, 32) is the CHW image
    expected = torch.tensor(arrays["x_train"].reshape(-1, 3, 32, 32), dtype=torch.float32) / 255
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    assert ds.y_test.tolist() == arrays["y_test"].tolist()
    assert ds.x_train.is_contiguous()


def test_normalisation_uses_training_statistics_per_channel(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar100", np.random.default_rng(2), monkeypatch)
    raw = load_dataset(DataSpec(name="cifar100", root=str(tmp_path), normalize=False))
    ds = load_dataset(DataSpec(name="cifar100", root=str(tmp_path)))
    torch.testing.assert_close(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    mean = raw.x_train.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std = raw.x_train.std(dim=(0, 2, 3)).view(1, 3, 1, 1)
    torch.testing.assert_close(
        ds.x_test, (raw.x_test - mean) / std
    )  # test set: training statistics
    torch.testing.assert_close(ds.pad_value, (-mean / std).flatten())  # a black pixel, normalised


@pytest.mark.parametrize("name", sorted(TORCHVISION_SOURCES))
def test_missing_files_say_where_they_go_and_how_to_get_them(tmp_path, name):
    folder = TORCHVISION_SOURCES[name].folder
    root = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        load_dataset(DataSpec(name=name, root=str(root)))  # download defaults to False: no network
    message = str(err.value)
    assert str(root / folder) in message
    assert "data.download=true" in message
    assert not root.exists()  # nothing written


@pytest.mark.parametrize("name", IDX_SETS)
def test_present_but_unreadable_files_are_a_config_error_and_pass_the_presence_check(
    tmp_path, name
):
    folder = TORCHVISION_SOURCES[name].folder
    spec = DataSpec(name=name, root=str(tmp_path))
    (tmp_path / folder).mkdir(parents=True)
    for f in TORCHVISION_SOURCES[name].files:
        (tmp_path / folder / f).touch()  # empty
    check_files(spec)  # planning only checks presence
    with pytest.raises(ConfigError, match="no usable .* files .* torchvision said: ValueError"):
        load_dataset(spec)


def test_cifar_with_wrong_checksums_is_a_config_error(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", np.random.default_rng(3), monkeypatch)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", "0" * 32]])
    with pytest.raises(ConfigError, match="md5"):
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))


def test_digits_and_synthetic_still_load():
    digits = load_dataset(DataSpec(name="digits"))
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    small = DataSpec(name="synthetic", n_train=100, n_test=20, n_features=6, n_classes=3)
    synth = load_dataset(small)
    assert synth.x_train.shape == (100, 6) and synth.num_classes == 3
    for ds, spec in ((digits, DataSpec(name="digits")), (synth, small)):  # as their records say
        record = DATA_SETS[spec.name]
        assert ds.input_shape == record.shape_of(spec) and ds.num_classes == record.classes_of(spec)
        sizes = (len(ds.y_train), len(ds.y_test))
        assert sizes == (train_set_size(spec), record.test_size_of(spec))
    torch.testing.assert_close(synth.x_train.mean(0), torch.zeros(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("subset", "n"), [(1.0, 1000), (0.1, 100), (0.25, 250), (0.0333, 33), (37.0, 37)]
)
def test_subset_size_is_exact(subset, n):
    assert subset_size(DataSpec(subset=subset), 1000) == n


def test_subset_size_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="data.subset"):
        subset_size(DataSpec(subset=2000.0), 1000)


def test_subset_indices_are_distinct_seeded_and_deterministic():
    a, b = subset_indices(1000, 250, seed=7), subset_indices(1000, 250, seed=7)
    assert torch.equal(a, b)
    assert len(a.unique()) == 250 and a.min() >= 0 and a.max() < 1000
    assert not torch.equal(a, subset_indices(1000, 250, seed=8))
    assert torch.equal(subset_indices(1000, 1000, seed=7), torch.arange(1000))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.333, 0.8])
def test_noisy_labels_change_exactly_round_f_n_labels(fraction):
    y = torch.randint(10, (997,), generator=torch.Generator().manual_seed(0))
    noisy = noisy_labels(y, fraction, 10, seed=3)
    assert int((noisy != y).sum()) == round(fraction * 997)
    assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(noisy, noisy_labels(y, fraction, 10, seed=3))  # deterministic
    assert torch.equal(
        y, torch.randint(10, (997,), generator=torch.Generator().manual_seed(0))
    )  # input untouched


def test_member_view_applies_subset_then_noise_per_seed():
    ds = load_dataset(DataSpec(name="synthetic", n_train=200, n_test=10))
    spec = DataSpec(name="synthetic", n_train=200, n_test=10, subset=0.5, label_noise=0.2)
    idx, y = member_view(ds, spec, seed=4)
    assert len(idx) == 100 and int((y != ds.y_train[idx]).sum()) == 20
    idx2, y2 = member_view(ds, spec, seed=4)
    assert torch.equal(idx, idx2) and torch.equal(y, y2)
    assert not torch.equal(idx, member_view(ds, spec, seed=5)[0])


def test_a_sample_seed_gives_every_seed_the_same_subset_and_noisy_labels():
    ds = load_dataset(DataSpec(name="synthetic", n_train=200, n_test=10))
    shared = DataSpec(name="synthetic", n_train=200, n_test=10, subset=0.5, label_noise=0.2)
    shared = dataclasses.replace(shared, sample_seed=7)
    idx4, y4 = member_view(ds, shared, seed=4)
    idx5, y5 = member_view(ds, shared, seed=5)
    assert torch.equal(idx4, idx5) and torch.equal(y4, y5)  # Yang et al.: one noisy set
    own = dataclasses.replace(shared, sample_seed=None)
    assert torch.equal(member_view(ds, own, seed=7)[1], y4)  # the draw seed 7 would get itself
    with pytest.raises(ConfigError, match="data.sample_seed must be null"):
        DataSpec(sample_seed=-1)


def test_sample_seed_at_its_default_leaves_variant_ids_as_they_were():
    v = Variant(data=DataSpec(name="synthetic"), seed=3)
    assert "data.sample_seed" not in v.identity()  # the ids from before the knob existed
    shared = dataclasses.replace(v, data=dataclasses.replace(v.data, sample_seed=0))
    assert shared.variant_id != v.variant_id and shared.identity()["data.sample_seed"] == 0


def test_digits_are_read_from_scikit_learns_file_as_load_digits_gives_them(monkeypatch):
    """The digits come from the CSV file in scikit-learn's package, without importing it (its
    imports cost every process ~1.5 s); they must be ``load_digits``' images and labels, bit
    for bit, and where the file is not found ``load_digits`` itself answers."""
    import importlib.util
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from landscape.data import _digits_arrays

    bunch = load_digits()
    want = torch.tensor(bunch.images, dtype=torch.float32), torch.tensor(bunch.target)
    got = _digits_arrays()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no file: the fallback
    fallback = _digits_arrays()
    assert torch.equal(fallback[0], want[0]) and torch.equal(fallback[1], want[1])
    code = (
        "import sys; from landscape.data import load_dataset; from landscape.variant import "
        "DataSpec; load_dataset(DataSpec(name='digits')); print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
