"""The generated token data sets (data=modular, data=parity) and full-batch training on them:
exact splits and labels (computed here independently, in plain Python), one-line refusals,
unchanged variant ids, and ``optim.batch_size=0`` = a batch of the whole training set."""

from __future__ import annotations

import pytest
import torch

from landscape.data import load_dataset, modular_table, parity_bits
from landscape.datasets import DATA_SETS
from landscape.train import pack_steps, train_pack
from landscape.variant import ConfigError, DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant

OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    # the inverse by search, not Fermat's little theorem the loader uses
    "div": lambda a, b, p: (a * next(c for c in range(1, p) if (b * c) % p == 1)) % p,
    "x2_xy_y2": lambda a, b, p: (a * a + a * b + b * b) % p,
}


def _pairs(ds) -> tuple[set, set]:
    return (
        {tuple(r[:2]) for r in ds.x_train.tolist()},
        {tuple(r[:2]) for r in ds.x_test.tolist()},
    )


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_modular_label_is_the_operation(op):
    p = 11
    ds = load_dataset(DataSpec(name="modular", modulus=p, operation=op, train_fraction=0.4))
    assert ds.tokens and ds.vocab == p + 1 and ds.num_classes == p
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.long and x.shape[1] == 3
        assert (x[:, 2] == p).all()  # the "=" token
        for (a, b, _), label in zip(x.tolist(), y.tolist()):
            assert label == OPS[op](a, b, p)
    train, test = _pairs(ds)
    every = {(a, b) for a in range(p) for b in range(p) if op != "div" or b != 0}
    assert train | test == every and not train & test  # complements
    assert len(train) == round(0.4 * len(every)) and len(modular_table(p, op)[1]) == len(every)


def test_modular_split_is_seeded_and_of_the_stated_size():
    spec = DataSpec(name="modular", modulus=13, train_fraction=0.3, split_seed=0)
    a, b = load_dataset(spec), load_dataset(spec)
    other = load_dataset(DataSpec(name="modular", modulus=13, train_fraction=0.3, split_seed=1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert _pairs(a)[0] != _pairs(other)[0]
    assert len(a.y_train) == round(0.3 * 169) == 51 and len(a.y_test) == 169 - 51
    record = DATA_SETS["modular"]
    assert record.train_size_of(spec) == 51 and record.test_size_of(spec) == 118
    assert record.vocab_of(spec) == 14 and record.classes_of(spec) == 13
    assert record.shape_of(spec) == (3,)


def test_parity_labels_are_the_xor_of_the_relevant_bits():
    spec = DataSpec(name="parity", n_bits=12, k=3, n_train=64, n_test=32, data_seed=5)
    ds = load_dataset(spec)
    bits = parity_bits(spec).tolist()
    assert len(set(bits)) == 3 and all(0 <= i < 12 for i in bits)
    assert ds.vocab == 2 and ds.num_classes == 2 and ds.x_train.shape == (64, 12)
    assert ds.x_test.shape == (32, 12) and set(ds.x_train.unique().tolist()) <= {0, 1}
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for row, label in zip(x.tolist(), y.tolist()):
            assert label == row[bits[0]] ^ row[bits[1]] ^ row[bits[2]]
    again = load_dataset(spec)
    assert torch.equal(again.x_train, ds.x_train)
    other = DataSpec(name="parity", n_bits=12, k=3, n_train=64, n_test=32, data_seed=6)
    assert not torch.equal(load_dataset(other).x_train, ds.x_train)


def test_token_data_is_not_normalised():
    ds = load_dataset(DataSpec(name="modular", modulus=5, normalize=True))
    assert ds.mean is None and ds.x_train.dtype == torch.long and ds.x_train.max() == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="modular", modulus=91), "data.modulus must be a prime (2, 3, 5, 7, ..., 97, ...), got 91"),
        (dict(name="modular", modulus=1), "data.modulus must be a prime"),
        (dict(name="modular", train_fraction=1.0), "data.train_fraction must be in (0, 1), got 1.0"),
        (dict(name="modular", train_fraction=0.0), "data.train_fraction must be in (0, 1), got 0.0"),
        (dict(name="modular", modulus=2, train_fraction=0.05), "data.train_fraction must be a fraction that leaves"),
        (dict(name="modular", operation="pow"), "data.operation must be one of add, sub, mul, div, x2_xy_y2, got 'pow'"),
        (dict(name="parity", n_bits=4, k=5), "data.k must be an integer in [1, data.n_bits=4], got 5"),
        (dict(name="parity", k=0), "data.k must be an integer in [1, data.n_bits=40], got 0"),
        (dict(name="parity", augment=True), "data.augment must be false for data.name=parity"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as e:
        DataSpec(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_new_knobs_leave_existing_ids_alone():
    identity = Variant().identity()
    for key in ("modulus", "operation", "train_fraction", "split_seed", "n_bits", "k"):
        assert f"data.{key}" not in identity
    assert Variant(data=DataSpec(modulus=23)).variant_id != Variant().variant_id


def test_full_batch_refuses_batch_scaled_lr():
    with pytest.raises(
        ConfigError, match=r"^optim.lr_ref_batch_size must be 0 with optim.batch_size=0"
    ):
        OptimSpec(batch_size=0, lr_ref_batch_size=64)
    with pytest.raises(
        ConfigError, match=r"^optim.batch_size must be an integer > 0, or 0 .*got -1$"
    ):
        OptimSpec(batch_size=-1)


@pytest.mark.parametrize("mode", ["vmap", "packed"])
def test_full_batch_is_one_step_per_epoch_and_equals_batch_of_n(mode):
    """batch_size=0 and batch_size=N draw the same permutation each epoch and take the same
    single step on the same examples, so the runs are the same arithmetic: equal bit for bit."""
    spec = DataSpec(name="modular", modulus=7, train_fraction=0.5)
    ds = load_dataset(spec)
    n = len(ds.y_train)
    runs = {}
    for b in (0, n):
        v = Variant(
            model=ModelSpec(width=8),
            data=spec,
            optim=OptimSpec(batch_size=b, lr=0.05),
            train=TrainSpec(epochs=3, pack_step=mode),
        )
        assert pack_steps(v, ds) == (3, 1)
        runs[b] = train_pack([v, Variant(**{**v.__dict__, "seed": 1})], ds)
    full, by_n = runs[0], runs[n]
    assert [c["step"] for c in full.curves if c["member"] == 0] == [0, 1, 2, 3]

    def rows(r):  # the initial row's running loss is NaN (NaN != NaN): compared as a string
        return [{**c, "train_loss_running": repr(c["train_loss_running"])} for c in r.curves]

    assert rows(full) == rows(by_n)
    for name, p in full.pack.final.params.items():
        assert torch.equal(p, by_n.pack.final.params[name])


def test_the_catalogue_records_vocab_and_how_derived_sizes_follow_from_the_knobs():
    from landscape.catalogue import data_catalogue

    records = data_catalogue(["modular", "parity", "digits"])
    assert records["parity"]["vocab"] == 2 and "derived" not in records["parity"]
    assert "vocab" not in records["digits"]
    modular = records["modular"]
    assert modular["vocab"] == "data.modular_vocab" and modular["classes"] == "data.modulus"
    assert modular["derived"]["data.modular_vocab"] == "data.modulus + 1"
    assert set(modular["derived"]) == {
        "data.modular_vocab", "data.modular_train_size", "data.modular_test_size",
    }  # fmt: skip
    spec = DataSpec(name="modular", modulus=5, operation="div", train_fraction=0.5)
    assert DATA_SETS["modular"].vocab_of(spec) == 6  # 5 + 1
    assert DATA_SETS["modular"].train_size_of(spec) == 10  # round(0.5 * 5 * 4)
