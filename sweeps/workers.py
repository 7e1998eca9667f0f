"""Ray workers: long-lived actors, each holding a device share and the data sets already on it.

The only Ray code in the project besides the dispatch loop in ``sweeps.runner``; an actor
method is a thin call into ``landscape``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import ray
import torch

from landscape.data import Dataset, load_dataset
from landscape.measure import MetricsSpec
from landscape.run import run_pack
from landscape.train import resolve_device
from landscape.variant import DataSpec, Variant, canonical_json


def dataset_key(spec: DataSpec) -> str:
    """Data sets are cached per source: the per-member knobs (subset, label noise) are views."""
    return canonical_json(dataclasses.replace(spec, subset=1.0, label_noise=0.0))


class PackWorker:
    """Trains and measures packs on one device share; keeps data sets resident between packs."""

    def __init__(self, device: str, threads: int):
        # torch.func.jvp loads decompositions through torch.jit.script, which warns on every worker
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.datasets: dict[str, Dataset] = {}

    def dataset(self, spec: DataSpec) -> Dataset:
        key = dataset_key(spec)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(spec).to(self.device)
        return self.datasets[key]

    def run(self, variants: list[Variant], metrics: MetricsSpec) -> dict[str, list[dict]]:
        dataset = self.dataset(variants[0].data)
        return run_pack(variants, metrics, dataset, self.device).tables

    def pid(self) -> int:
        return os.getpid()


RemotePackWorker = ray.remote(PackWorker)
