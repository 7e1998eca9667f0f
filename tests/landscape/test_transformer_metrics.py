"""Every metric of ``metrics=full`` on a tiny transformer over token ids: each gives a value
or is refused on purpose, none fails (``metric_errors`` stays empty); and the refusals on
token inputs (CKA's mixup, stiffness by input distance, augmentation) are one line each."""

from pathlib import Path

import pytest
import torch
import yaml

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant
from landscape.data import Dataset
from landscape.measure import MetricsSpec, base_settings, measure_pack
from landscape.metrics.cka import mixup_inputs
from landscape.metrics.stiffness_distance import stiffness_by_distance
from landscape.train import train_pack
from landscape.variant import ConfigError, build_spec

V, T, C = 7, 3, 5  # vocab, sequence length, classes
FULL = Path(__file__).parents[2] / "conf" / "metrics" / "full.yaml"
SMALL = dict(n_probes=8, n_samples=24, n_iter=6, steps=10, points_1d=5, points_2d=3, epochs=1)


def token_dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(
        "synthetic",
        torch.randint(V, (48, T), generator=g),
        torch.randint(C, (48,), generator=g),
        torch.randint(V, (24, T), generator=g),
        torch.randint(C, (24,), generator=g),
        C,
        vocab=V,
    )


def variants(**data) -> list[Variant]:
    return [
        Variant(
            model=ModelSpec("transformer", width=8, depth=1, heads=2, mlp_ratio=2),
            data=DataSpec("synthetic", n_train=48, n_test=24, n_classes=C, **data),
            optim=OptimSpec(name="adam", lr=0.01, batch_size=16),
            train=TrainSpec(epochs=2),
            seed=seed,
        )
        for seed in (0, 1)
    ]


def full_preset_small() -> MetricsSpec:
    """The ``full`` preset's metrics, every one switched on, with small sample sizes."""
    settings = base_settings()
    for name, values in yaml.safe_load(FULL.read_text()).items():
        if isinstance(values, dict) and name in settings:
            settings[name].update(values)
            settings[name].update({k: v for k, v in SMALL.items() if k in settings[name]})
    settings["preset"] = "full"
    return build_spec(MetricsSpec, settings, "metrics")


def test_the_full_preset_on_a_tiny_transformer_gives_every_metric_without_an_error():
    spec = full_preset_small()
    pack = train_pack(variants(), token_dataset(), "cpu").pack
    m = measure_pack(pack, spec)
    assert m.columns["metric_errors"] == [None, None]
    for table in ("pairs", "spectra", "stiffness", "surfaces", "lr_range"):
        assert m.tables.get(table), table
    filled = [k for k, v in m.columns.items() if k != "metric_errors"]
    assert filled and all(
        all(x is not None for x in m.columns[k]) for k in filled if k.startswith("hessian")
    )
    pair = m.tables["pairs"][0]
    assert 0 < pair["cka_linear_features"] <= 1 + 1e-6  # CKA on the real token inputs
    # stiffness by input distance is refused on token ids: class stiffness rows only
    assert not any("distance_bin_lo" in r for r in m.tables["stiffness"])


def test_token_ids_are_refused_where_they_cannot_be_mixed_or_measured_by_distance():
    x = torch.randint(V, (2, 8, T))
    with pytest.raises(ValueError, match="metrics.cka.inputs=mixup needs float inputs"):
        mixup_inputs(x, torch.Generator())
    with pytest.raises(ValueError, match="stiffness by input distance needs float inputs"):
        stiffness_by_distance(None, None, x, torch.zeros(2, 8, dtype=torch.long), n_bins=3)
    with pytest.raises(ConfigError, match="data.augment must be false for token data"):
        train_pack(variants(augment=True), token_dataset(), "cpu")
