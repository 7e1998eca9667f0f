import json
import re
import subprocess
import sys

import pytest

from landscape.variant import (
    ConfigError,
    DataSpec,
    ModelSpec,
    OptimSpec,
    TrainSpec,
    Variant,
    build_spec,
)


def test_variant_id_is_stable_across_processes():
    v = Variant(model=ModelSpec("cnn", width=8), optim=OptimSpec(lr=0.05), seed=3)
    code = (
        "from landscape.variant import *; "
        "print(Variant(model=ModelSpec('cnn', width=8), optim=OptimSpec(lr=0.05), seed=3).variant_id)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == v.variant_id


def test_variant_id_independent_of_key_order():
    d1 = {"model": {"name": "mlp", "width": 16}, "optim": {"lr": 0.1, "batch_size": 32}, "seed": 1}
    d2 = {"seed": 1, "optim": {"batch_size": 32, "lr": 0.1}, "model": {"width": 16, "name": "mlp"}}
    assert Variant.from_dict(d1).variant_id == Variant.from_dict(d2).variant_id
    # ints given for float knobs hash like the floats
    d3 = json.loads(json.dumps(d1).replace("0.1", "0.1"))
    assert Variant.from_dict(d3).variant_id == Variant.from_dict(d1).variant_id


def test_ids_distinguish_points_and_groups():
    a, b = Variant(seed=0), Variant(seed=1)
    c = Variant(optim=OptimSpec(lr=0.2), seed=0)
    assert a.variant_id != b.variant_id
    assert a.group_id == b.group_id  # replicate group: equal but for the seed
    assert a.group_id != c.group_id
    assert a.group_id != a.variant_id


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimSpec(lr=0.0), "optim.lr must be finite and > 0, got 0.0"),
        (
            lambda: OptimSpec(batch_size=-1),
            "optim.batch_size must be an integer > 0, or 0 for the whole training set (full batch), got -1",
        ),
        (lambda: ModelSpec(width=0), "model.width must be an integer > 0, got 0"),
        (lambda: TrainSpec(epochs=0), "train.epochs must be an integer >= 1, got 0"),
        (lambda: TrainSpec(pack_streams=0), "train.pack_streams must be an integer >= 1, got 0"),
        (lambda: ModelSpec(name="gpt"), "model.name must be one of"),
        (lambda: DataSpec(label_noise=1.0), "data.label_noise must be in [0, 1)"),
        (lambda: build_spec(ModelSpec, {"widht": 3}, "model"), "model.widht is not a known key"),
        (
            lambda: build_spec(OptimSpec, {"lr": "fast"}, "optim"),
            "optim.lr must be a number, got 'fast'",
        ),
        (
            lambda: build_spec(ModelSpec, {"batch_norm": 1}, "model"),
            "model.batch_norm must be true or false",
        ),
    ],
)
def test_bad_values_name_key_value_and_rule(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_flat_has_every_knob_once():
    flat = Variant().flat()
    assert flat["model.width"] == 32 and flat["optim.lr"] == 0.1 and flat["seed"] == 0
    assert isinstance(flat["optim.step_at"], list)
    assert len(flat) == len(set(flat))


def test_where_the_data_lives_is_not_part_of_the_id():
    here = Variant(data=DataSpec("cifar10", root="data"))
    there = Variant(data=DataSpec("cifar10", root="/mnt/shared/datasets", download=True))
    assert here.variant_id == there.variant_id and here.group_id == there.group_id
    assert Variant(data=DataSpec("cifar100")).variant_id != here.variant_id
