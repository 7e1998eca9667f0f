"""Packs: variants that train as one stacked model, and the data and state a trained pack carries.

Variants may share a pack when they agree on everything that fixes tensor shapes and step
counts: architecture and width, data set and subset size, batch size, epochs, optimiser
kind and schedule shape, precision. Seed, learning rate, weight decay, momentum and label
noise may differ per member. Packs hold whole replicate groups (all seeds of a point), so
global metrics between seeds need no checkpoint round trip.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.data import subset_size
from landscape.datasets import train_set_size
from landscape.functional import FunctionalNet, Stack, leaf_output_sizes
from landscape.variant import Variant, short_hash

# Knobs that may differ between members of one pack (everything else must match).
PER_MEMBER = {
    "seed",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "data.label_noise",
}


def pack_key(variant: Variant) -> str:
    """Hash of the knobs that must match inside a pack."""
    flat = {k: v for k, v in variant.flat().items() if k not in PER_MEMBER}
    return short_hash(flat)


def make_packs(variants: Sequence[Variant], max_members: int) -> list[list[Variant]]:
    """Group variants into packs of at most ``max_members``, never splitting a replicate group
    unless the group alone exceeds the cap. Order is deterministic (by pack key, then group)."""
    if max_members < 1:
        raise ValueError(f"pack.max_members must be >= 1, got {max_members}")
    by_key: dict[str, dict[str, list[Variant]]] = defaultdict(lambda: defaultdict(list))
    for v in variants:
        by_key[pack_key(v)][v.group_id].append(v)
    packs: list[list[Variant]] = []
    for key in sorted(by_key):
        current: list[Variant] = []
        for gid in sorted(by_key[key]):
            group = sorted(by_key[key][gid], key=lambda v: v.seed)
            if current and len(current) + len(group) > max_members:
                packs.append(current)
                current = []
            while len(group) > max_members:  # a group larger than the cap is split
                packs.append(group[:max_members])
                group = group[max_members:]
            current.extend(group)
        if current:
            packs.append(current)
    return packs


def pack_id(variants: Sequence[Variant]) -> str:
    return short_hash(sorted(v.variant_id for v in variants), n=10) + "p"


@dataclass
class PackData:
    """Device-resident data of a pack. Inputs are shared; each member has its own training
    subset (indices into ``x_train``) and labels (label noise is per member)."""

    x_train: Tensor  # (N, *input_shape) the full training set
    train_idx: Tensor  # (K, n) per-member indices into x_train
    y_train: Tensor  # (K, n) per-member labels, noise applied
    x_test: Tensor  # (M, *input_shape)
    y_test: Tensor  # (M,)
    num_classes: int
    seeds: tuple[
        int, ...
    ] = ()  # the members' variant seeds: sample draws depend on them, not on position

    @property
    def members(self) -> int:
        return self.train_idx.shape[0]

    @property
    def n_train(self) -> int:
        return self.train_idx.shape[1]

    def select(self, index: Sequence[int]) -> PackData:
        """The data of the chosen members (for sub-packs of pairs or of survivors)."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.train_idx.device)
        seeds = tuple(self.seeds[i] for i in index) if self.seeds else ()
        return dataclasses.replace(
            self, train_idx=self.train_idx[idx], y_train=self.y_train[idx], seeds=seeds
        )

    def train_batch(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Positions (K, B) into each member's training set -> x (K, B, *input), y (K, B)."""
        idx = self.train_idx.gather(1, positions)
        return self.x_train[idx], self.y_train.gather(1, positions)

    def member_generators(self, generator: torch.Generator) -> list[torch.Generator]:
        """One CPU generator per member, seeded by one draw from ``generator`` and the member's
        own seed, so a member draws the same sample whatever pack it is in and wherever."""
        base = int(torch.randint(2**62, (1,), generator=generator))
        seeds = self.seeds or tuple(range(self.members))
        return [torch.Generator().manual_seed((base + 1_000_003 * s) % 2**63) for s in seeds]

    def train_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A seeded draw of min(n, n_train) distinct training examples per member (each member
        draws from its own subset, with its own labels): x (K, n, ...), y (K, n)."""
        n = min(n, self.n_train)
        gens = self.member_generators(generator)
        pos = torch.stack([torch.randperm(self.n_train, generator=g)[:n] for g in gens])
        return self.train_batch(pos.to(self.train_idx.device))

    def test_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A seeded draw of min(n, M) test examples, shared by all members: x (K, n, ...), y (K, n)."""
        n = min(n, len(self.y_test))
        pos = torch.randperm(len(self.y_test), generator=generator)[:n].to(self.y_test.device)
        x, y = self.x_test[pos], self.y_test[pos]
        return x.expand(self.members, *x.shape), y.expand(self.members, *y.shape)


@dataclass
class TrainedPack:
    """What training hands to the metrics: the net, the chosen checkpoint, the initial
    parameters (for MLI and distance to init), the data, and who is still alive."""

    variants: list[Variant]
    net: FunctionalNet
    init: Stack
    final: Stack  # the checkpoint metrics are measured on (final or lowest training loss)
    data: PackData
    alive: Tensor  # (K,) bool: False for diverged members (their metrics are skipped)

    def replace(self, **changes) -> TrainedPack:
        return dataclasses.replace(self, **changes)


OPTIMIZER_STATE_COPIES = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 2, "adagrad": 1}


def _meta_counts(
    spec: object, input_shape: tuple[int, ...], num_classes: int, batch: int, vocab: int = 0
) -> tuple[int, int]:
    """(parameters, elements of every leaf module's output for one batch) of a model, counted
    on the meta device (no memory, no arithmetic)."""
    from landscape.models import build_model  # local: models import variant, not pack

    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    return n_params, sum(leaf_output_sizes(model, input_shape, batch))


def member_bytes(
    variant: Variant, input_shape: tuple[int, ...], num_classes: int, vocab: int = 0
) -> int:
    """An estimate of the device memory one pack member needs while training.

    Parameters in float32 five times over (weights, gradients, initial copy, checkpoint copy and
    a working copy) plus the optimiser's state, and every module output of one batch three times
    (kept for the backward pass, its gradient, and slack for temporaries), counted on the meta device."""
    batch = variant.optim.batch_size or subset_size(variant.data, train_set_size(variant.data))
    n_params, activations = _meta_counts(variant.model, input_shape, num_classes, batch, vocab)
    act_bytes = 2 if variant.train.precision == "bf16" else 4
    state = OPTIMIZER_STATE_COPIES.get(variant.optim.name, 2)
    return 4 * n_params * (5 + state) + 3 * act_bytes * activations


def hvp_bytes(
    variant: Variant, input_shape: tuple[int, ...], num_classes: int, n: int, vocab: int = 0
) -> int:
    """An estimate of the device memory of one Hessian-vector product of one member on ``n``
    examples (float32): every module output of the forward pass kept, its gradient, and the
    tangents of both carried by forward-over-reverse (four copies), plus the parameters four
    times (probe, gradient, product, slack)."""
    n_params, activations = _meta_counts(variant.model, input_shape, num_classes, n, vocab)
    return 4 * (4 * activations + 4 * n_params)


def free_device_memory(device: torch.device) -> int:
    """Bytes this process may still allocate on a CUDA device: the device's free memory, or
    less when the process is capped (``torch.cuda.set_per_process_memory_fraction``, e.g. to
    plan for a smaller card on a larger one), counting what PyTorch's allocator holds."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    # the allocator's cached blocks are this process's to reuse
    free += torch.cuda.memory_reserved(device) - allocated
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is not None:
        free = min(free, max(int(get_fraction(device) * total) - allocated, 0))
    return free


def split_to_fit(variants: Sequence[Variant], max_members: int) -> list[list[Variant]]:
    """Split a pack into packs of at most ``max_members``, keeping replicate groups whole where possible."""
    if len(variants) <= max_members:
        return [list(variants)]
    return make_packs(variants, max(1, max_members))
