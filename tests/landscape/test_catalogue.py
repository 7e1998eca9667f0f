"""The catalogue: plain JSON, every name derived from where it is declared."""

import json

import pytest

from landscape.catalogue import catalogue
from landscape.datasets import DATA_NAMES, DATA_SETS
from landscape.variant import ADDED_KNOBS, LAUNCH_KNOBS, ConfigError, DataSpec, Variant


def test_the_catalogue_is_plain_json_with_every_data_set_by_default():
    out = catalogue()
    assert json.loads(json.dumps(out)) == out
    assert set(out) == {"version", "data", "knobs", "tables", "training"}  # "metrics" if given
    assert list(out["data"]) == list(DATA_NAMES)
    assert out["data"]["cifar100"]["classes"] == 100
    assert out["data"]["mnist"]["input_shape"] == [1, 28, 28]
    assert out["data"]["synthetic"]["classes"] == "data.n_classes"  # a knob column
    assert "files" not in out["data"]["digits"]  # bundled: nothing on disk


def test_knob_roles_split_the_variants_columns():
    knobs = catalogue([], axes=["seed", "model.width"], analysis={"load": "model.width",
                      "claims": ["lr"]})["knobs"]  # fmt: skip
    assert knobs["launch"] == list(LAUNCH_KNOBS) and knobs["added"] == ADDED_KNOBS
    assert sorted(knobs["identity"] + knobs["launch"]) == sorted(Variant().flat())
    assert knobs["axes"] == ["model.width", "seed"] and knobs["analysis"] == {"load": "model.width"}


def test_tables_and_metrics_are_as_given():
    out = catalogue(["digits"], schemas={"runs": {"variant_id": "string", "x": "double"}},
                    metrics={"hessian_trace": {"table": "runs"}})  # fmt: skip
    assert list(out["data"]) == ["digits"]
    assert out["tables"] == {"runs": ["variant_id", "x"]}
    assert out["metrics"] == {"hessian_trace": {"table": "runs"}}


def test_data_name_accepts_exactly_the_records():
    for name in DATA_SETS:
        DataSpec(name=name)
    with pytest.raises(ConfigError, match="data.name must be one of digits, synthetic"):
        DataSpec(name="imagenet")
