"""Local landscape metrics of a trained pack: the one call that measures them.

Each local metric is a module of ``landscape/metrics/`` that registers its settings dataclass
(with an ``enabled`` switch and documented defaults), its step and its columns
(``landscape.metrics.registry``, family ``local``). :func:`measure_local` runs every enabled
one on the pack's checkpoint for the members still alive and returns

- ``columns``: column name -> one value per member (None for a diverged member), for ``runs``;
- ``tables``: the metrics' own tables (``spectra``: member, eigenvalue, density;
  ``stiffness``: member, class_a, class_b, s_cos, s_sign; ``lr_range``: member, step, lr,
  loss); ``member`` is the index in the pack (the caller maps it to ``variant_id``).

Randomness: one seed per metric slot (the metric's ``order``) is drawn from the caller's
generator, all slots at once in slot order, so switching one metric on or off changes no
other metric's sample or probes, and a new slot changes none of the earlier ones (the CPU
generator draws a sequence: its first n values do not depend on how many follow). Each
metric draws its own sample (training data, test data for stiffness) with that seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from landscape.metrics.registry import Metric, metrics
from landscape.pack import TrainedPack, free_device_memory, hvp_bytes


@dataclass
class LocalResult:
    columns: dict[str, list[float | None]] = field(default_factory=dict)  # one value per member
    tables: dict[str, list[dict]] = field(default_factory=dict)  # rows carry ``member``
    # per member, the metrics that failed on it: "<metric>: <error>" (none: an empty list)
    errors: list[list[str]] = field(default_factory=list)


class Measurer:
    """The alive members of a pack (or of a part of it, when a metric runs out of memory), and
    how to write their values back per pack member: what a local metric's step is given.
    Parts share the pack's per-metric seeds and the one result."""

    def __init__(
        self,
        pack: TrainedPack,
        generator: torch.Generator | None,
        members: list[int] | None = None,
        parent: Measurer | None = None,
    ):
        self.pack = pack
        self.K = len(pack.variants)
        self.alive = pack.alive.nonzero().flatten().tolist() if members is None else members
        self.stack = pack.final.select(self.alive)
        self.device = next(iter(pack.final.params.values())).device
        if parent is None:
            slots = 1 + max(m.order for m in metrics("local"))
            seeds = torch.randint(0, 2**62, (slots,), generator=generator, device=generator.device)
            self.seeds = {m.name: seeds[m.order].item() for m in metrics("local")}
            self.result = LocalResult(errors=[[] for _ in range(self.K)])
        else:
            self.seeds, self.result = parent.seeds, parent.result

    def part(self, members: list[int]) -> Measurer:
        """The same measurer over some of its members."""
        return Measurer(self.pack, None, members, parent=self)

    def generators(self, metric: str) -> tuple[torch.Generator, torch.Generator]:
        """(sample generator on the CPU, probe generator on the pack's device) for a metric."""
        seed = self.seeds[metric]
        return torch.Generator().manual_seed(seed), torch.Generator(self.device).manual_seed(
            seed + 1
        )

    def train_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.pack.data.train_sample(n, generator)
        return self._alive(x), self._alive(y)

    def test_sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.pack.data.test_sample(n, generator)
        return self._alive(x), self._alive(y)

    def _alive(self, t: Tensor) -> Tensor:
        return t[torch.as_tensor(self.alive, device=t.device)]

    def column(self, name: str, values: Tensor | list) -> None:
        """One value per measured member; other members keep what they have (None at first)."""
        out = self.result.columns.setdefault(name, [None] * self.K)
        if isinstance(values, Tensor):
            cast = float if values.is_floating_point() else int
            values = [cast(v) for v in values.tolist()]
        for k, v in zip(self.alive, values):
            out[k] = v

    def table(self, name: str, rows: list[dict]) -> None:
        self.result.tables.setdefault(name, []).extend(rows)

    def fail(self, metric: Metric, spec: object, error: str) -> None:
        """The metric failed on these members: None in its columns, the error recorded."""
        for c in metric.column_names(spec):
            self.column(c, [None] * len(self.alive))
        for k in self.alive:
            self.result.errors[k].append(f"{metric.name}: {error}")

    def batch_size(self, requested: int) -> int:
        return requested or self.pack.variants[0].optim.batch_for(self.pack.data.n_train)

    def probe_chunk(self, chunk: int, n: int) -> int:
        """Probes per call of a Hessian-vector-product metric on ``n`` examples: ``chunk``, or
        on a CUDA device fewer when ``chunk`` products for every member would not fit in
        :data:`MEMORY_HEADROOM` of the free memory (``landscape.pack.hvp_bytes``; at least 1,
        and :func:`run_guarded` halves it again if the estimate was short)."""
        if self.device.type != "cuda":
            return chunk
        free = free_device_memory(self.device)
        data = self.pack.data
        v = self.pack.variants[0]
        vocab = getattr(self.pack.net.module, "vocab", 0)  # token models declare it
        per = hvp_bytes(v, tuple(data.x_train.shape[1:]), data.num_classes, n, vocab)
        return max(1, min(chunk, int(MEMORY_HEADROOM * free // (per * len(self.alive)))))


# Share of the free device memory a metric plans to use (the estimates are rough).
MEMORY_HEADROOM = 0.7

# Settings that bound how much a metric computes at once, never what it computes: halved when
# the metric runs out of device memory (down to 1), before its members are split.
CHUNK_FIELDS = ("chunk", "fisher_chunk")


def smaller_chunks(spec: object) -> object | None:
    """``spec`` with every chunk setting halved, or None when all are already 1."""
    changes = {
        f: max(1, getattr(spec, f) // 2)
        for f in CHUNK_FIELDS
        if hasattr(spec, f) and getattr(spec, f) > 1
    }
    return dataclasses.replace(spec, **changes) if changes else None


def run_guarded(m: Measurer, metric: Metric, spec: object, log: Callable[[str], None]) -> None:
    """One metric on the measurer's members, never raising: out of device memory it runs again
    with halved chunks, then on each half of its members, down to one member with chunks of
    one; any other error (or running out of memory even then) leaves None in the metric's
    columns and the error in ``errors``. Training is never repeated for it."""
    name = metric.name
    try:
        metric.measure(m, spec, *m.generators(name))
        return
    except torch.OutOfMemoryError as exc:
        error = f"OutOfMemoryError: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}"
    except Exception as exc:  # noqa: BLE001 - failure is data: the error goes into the row
        log(f"metric {name} failed on members {m.alive}: {type(exc).__name__}: {exc}")
        m.fail(metric, spec, f"{type(exc).__name__}: {exc}")
        return
    _free_device_memory(m.device)
    smaller = smaller_chunks(spec)
    if smaller is not None:
        log(f"metric {name} ran out of device memory; again with chunks {_chunks(smaller)}")
        run_guarded(m, metric, smaller, log)
    elif len(m.alive) > 1:
        half = len(m.alive) // 2
        log(f"metric {name} ran out of device memory; again on {half} members at a time")
        for members in (m.alive[:half], m.alive[half:]):
            run_guarded(m.part(members), metric, spec, log)
    else:
        m.fail(metric, spec, error)


def _chunks(spec: object) -> dict[str, int]:
    return {f: getattr(spec, f) for f in CHUNK_FIELDS if hasattr(spec, f)}


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_local(
    pack: TrainedPack,
    specs: Mapping[str, object],
    generator: torch.Generator,
    log: Callable[[str], None] = lambda msg: None,
) -> LocalResult:
    """Every enabled local metric of ``specs`` (settings by metric name; a local metric it
    lacks is not measured) on the pack's checkpoint (eval mode unless the metric trains), in
    registry order. Diverged members (``pack.alive`` False) are skipped and get None. A metric
    that fails leaves None in its columns and its error in ``errors`` (:func:`run_guarded`);
    the others still run."""
    m = Measurer(pack, generator)
    for metric in metrics("local"):
        spec = specs.get(metric.name)
        if spec is not None and spec.enabled:
            if not m.alive:
                _all_dead(m, metric, spec)
            else:
                run_guarded(m, metric, spec, log)
    return m.result


def local_columns(specs: Mapping[str, object]) -> list[str]:
    """Every ``runs`` column :func:`measure_local` fills for these specs (for schemas)."""
    return [
        c
        for metric in metrics("local")
        if metric.name in specs and specs[metric.name].enabled
        for c in metric.column_names(specs[metric.name])
    ]


def _all_dead(m: Measurer, metric: Metric, spec: object) -> None:
    """Every member diverged: the metric's columns are all None and its tables are empty."""
    for c in metric.column_names(spec):
        m.result.columns[c] = [None] * m.K
    for table in metric.tables:
        m.table(table, [])
