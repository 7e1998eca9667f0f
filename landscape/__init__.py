"""landscape: loss-landscape science on packed models. Pure torch; no Ray, no Hydra."""

from landscape.data import Dataset, load_dataset
from landscape.functional import FunctionalNet, Stack, init_stack
from landscape.models import build_model
from landscape.pack import PackData, TrainedPack, make_packs, pack_key
from landscape.variant import (
    ConfigError,
    DataSpec,
    ModelSpec,
    OptimSpec,
    TrainSpec,
    Variant,
)

__all__ = [
    "ConfigError",
    "DataSpec",
    "Dataset",
    "FunctionalNet",
    "ModelSpec",
    "OptimSpec",
    "PackData",
    "Stack",
    "TrainSpec",
    "TrainedPack",
    "Variant",
    "build_model",
    "init_stack",
    "load_dataset",
    "make_packs",
    "pack_key",
]
