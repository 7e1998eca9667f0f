"""Ray workers: long-lived actors, each holding a device share and the data sets already on it.

The runner wraps a worker class with ``ray.remote`` (one actor per device share) and calls
``run(variants, metrics)`` once per pack; an actor method is a thin call into ``landscape``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings

import torch

from landscape.data import Dataset, load_dataset
from landscape.measure import MetricsSpec
from landscape.pack import pack_id
from landscape.run import base_row, metrics_id, run_pack
from landscape.train import resolve_device
from landscape.variant import DataSpec, Variant, canonical_json


def dataset_key(spec: DataSpec) -> str:
    """Data sets are cached per source: the per-member knobs (subset, label noise) are views."""
    return canonical_json(dataclasses.replace(spec, subset=1.0, label_noise=0.0))


class PackWorker:
    """Trains and measures packs on one device share; keeps data sets resident between packs."""

    def __init__(self, device: str, threads: int):
        # torch.func.jvp loads decompositions through torch.jit.script, which warns on every worker
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning
        )
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.datasets: dict[str, Dataset] = {}

    def dataset(self, spec: DataSpec) -> Dataset:
        key = dataset_key(spec)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(spec).to(self.device)
        return self.datasets[key]

    def run(
        self, variants: list[Variant], metrics: MetricsSpec, checkpoint_dir: str | None = None
    ) -> dict[str, list[dict]]:
        dataset = self.dataset(variants[0].data)
        return run_pack(
            variants, metrics, dataset, self.device, checkpoint_dir=checkpoint_dir
        ).tables

    def ready(self, variant: Variant, metrics: MetricsSpec) -> dict:
        """Answered once the actor is up (the runner sends packs only to ready workers), with
        the ids this process's code gives a variant and the metrics settings: the driver
        compares them with its own, so that a node with other code is caught before it writes."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.device),
            "variant_id": variant.variant_id,
            "metrics_id": metrics_id(metrics),
        }


class NoopPackWorker(PackWorker):
    """Returns a ``runs`` row and one ``curves`` row per epoch for every variant, without
    training: what the benchmark uses to measure the sweep machinery alone."""

    def run(
        self, variants: list[Variant], metrics: MetricsSpec, checkpoint_dir: str | None = None
    ) -> dict[str, list[dict]]:
        pid, mid = pack_id(variants), metrics_id(metrics)
        runs = [
            {
                **base_row(v, pid, mid, str(self.device)),
                "status": "ok",
                "error": None,
                "train_loss": 0.0,
                "test_acc": 0.0,
                "pack_members": len(variants),
            }
            for v in variants
        ]
        curves = [
            {"variant_id": v.variant_id, "epoch": e, "train_loss": 0.0}
            for v in variants
            for e in range(v.train.epochs + 1)
        ]
        return {"runs": runs, "curves": curves}
