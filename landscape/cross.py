"""Cross-variant pairs: interpolation between models of different sweep points.

Li et al. (2018, figure 3) interpolate between a small-batch and a large-batch solution
and plot train and test loss and accuracy along the line (alpha from -0.5 to 1.5). A
pairing rule names the knobs that may differ (``vary``, e.g. ``optim.batch_size``); two
variants pair when every other knob, the seed included, is equal. Such variants live in
different packs (the batch size fixes the step count), so this runs after training, from
the per-variant checkpoints (``checkpoints=true``). Its settings are registered as
``metrics.cross`` (``landscape.metrics.registry``, family ``setting``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from landscape.checkpoint import load_checkpoint
from landscape.data import Dataset
from landscape.functional import FunctionalNet
from landscape.metrics.batchnorm import bn_batches, has_batchnorm
from landscape.metrics.interpolation import evaluate_line
from landscape.metrics.registry import Metric, register
from landscape.models import build_model
from landscape.variant import ConfigError, Variant

PER_VARIANT_SHAPE_KEYS = (
    "model.name",
    "model.width",
    "model.depth",
    "model.batch_norm",
    "model.skip",
    "data.name",
)


@dataclass(frozen=True)
class CrossPairSpec:
    enabled: bool = False
    vary: tuple[str, ...] = ("optim.batch_size",)  # knobs that may differ within a pair
    n_alphas: int = 21
    alpha_min: float = -0.5  # Li et al. plot from -0.5 to 1.5
    alpha_max: float = 1.5
    n_samples: int = 1024  # training and test examples the line is evaluated on
    max_pairs: int = 200  # pairs per sweep (the first ones in a stable order)
    bn_batches: int = (
        8  # with BatchNorm: statistics recomputed at every alpha from this many batches
    )
    bn_batch_size: int = 128

    def __post_init__(self) -> None:
        knobs = Variant().flat()
        unknown = sorted(set(self.vary) - set(knobs))
        if unknown:
            raise ConfigError(
                f"metrics.cross.vary must name knobs of a variant (e.g. optim.batch_size, "
                f"optim.lr, seed), got unknown {unknown}"
            )
        shape = set(self.vary) & set(PER_VARIANT_SHAPE_KEYS)
        if shape:
            raise ConfigError(
                f"metrics.cross.vary must not include architecture or data keys (interpolation needs one "
                f"architecture), got {sorted(shape)}"
            )
        if self.n_alphas < 2 or self.max_pairs < 1 or self.n_samples < 1:
            raise ConfigError(
                f"metrics.cross needs n_alphas >= 2, max_pairs >= 1, n_samples >= 1, got "
                f"{self.n_alphas}, {self.max_pairs}, {self.n_samples}"
            )


register(
    Metric(
        name="cross",
        spec=CrossPairSpec,
        family="setting",
        order=120,
        hashed_when_off=True,
        tables=("cross",),
    )
)


def cross_pairs(variants: Sequence[Variant], vary: Sequence[str]) -> list[tuple[Variant, Variant]]:
    """Pairs of variants equal in every knob but those in ``vary`` (which must differ)."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        flat = v.flat()
        unknown = set(vary) - set(flat)
        if unknown:
            raise ConfigError(f"metrics.cross.vary names unknown knobs {sorted(unknown)}")
        key = repr(sorted((k, repr(val)) for k, val in flat.items() if k not in vary))
        groups.setdefault(key, []).append(v)
    pairs = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda v: [repr(v.flat()[k]) for k in vary])
        pairs += [(a, b) for a, b in itertools.combinations(members, 2)]
    return pairs


def interpolate_pair(
    a: Variant,
    b: Variant,
    checkpoints: Path,
    dataset: Dataset,
    spec: CrossPairSpec,
    device: torch.device | str,
) -> list[dict]:
    """Rows for ``surfaces`` (kind ``cross``): variant_a, variant_b, alpha, split (train / test),
    loss, accuracy, at (1 - alpha) w_a + alpha w_b.

    ``train`` is a sample of the data set's whole training split with its clean labels, the
    same examples at every alpha and for both ends, so the line is one function of alpha.
    When ``vary`` names ``data.label_noise`` or ``data.subset`` this is therefore not either
    variant's own (noisy, subset) training loss: the runs table has those."""
    _, stack_a = load_checkpoint(checkpoints / f"{a.variant_id}.pt", device)
    _, stack_b = load_checkpoint(checkpoints / f"{b.variant_id}.pt", device)
    net = FunctionalNet(
        build_model(a.model, dataset.input_shape, dataset.num_classes, dataset.vocab)
    )
    alphas = torch.linspace(spec.alpha_min, spec.alpha_max, spec.n_alphas, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    rows = []
    for split, x_all, y_all in (
        ("train", dataset.x_train, dataset.y_train),
        ("test", dataset.x_test, dataset.y_test),
    ):
        idx = torch.randperm(len(y_all), generator=g)[: spec.n_samples].to(y_all.device)
        x, y = x_all[idx].unsqueeze(0).to(device), y_all[idx].unsqueeze(0).to(device)
        bn_x = None
        if has_batchnorm(net):
            bn_x = bn_batches(
                dataset.x_train[: spec.bn_batches * spec.bn_batch_size].unsqueeze(0).to(device),
                spec.bn_batches,
                spec.bn_batch_size,
            )
        loss, acc = evaluate_line(net, stack_a, stack_b, alphas, x, y, bn_x=bn_x)
        rows += [
            {
                "variant_a": a.variant_id,
                "variant_b": b.variant_id,
                "kind": "cross",
                "split": split,
                "alpha": float(al),
                "loss": float(lo),
                "accuracy": float(ac),
            }
            for al, lo, ac in zip(alphas.tolist(), loss[0].tolist(), acc[0].tolist())
        ]
    return rows
