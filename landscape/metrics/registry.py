"""The metric registry: every metric, and every setting of a measuring pass, declared once.

A metric is one module. At its end the module calls :func:`register` with a :class:`Metric`:
its config key (``metrics.<name>``), its settings dataclass, its family, its fixed place, the
columns and tables it writes and, for the families that have one, the step that measures it.
Everything that used to re-list metrics reads this registry instead:
``landscape.measure.MetricsSpec`` (one field per metric), the dispatch of
:func:`landscape.metrics.local.measure_local` and ``measure_pack``, the config's ``metrics/base``
node (``landscape.measure.base_settings``), the settings left out of ``metrics_id``
(``setting(launch=True)`` / ``setting(before=...)`` on the fields), the metric names the
trajectory recorder accepts, and :func:`metric_catalogue`, the description of what a run
measured for the report. ``tests/landscape/metrics/test_registry.py`` holds the rest equal to
it: the columns and tables each metric declares against those ``measure_pack`` writes, the
reparametrisation probe's metric names against declared columns.

Discovery: :func:`metrics` imports every module of ``landscape/metrics/`` (and
:data:`SETTINGS_MODULES`, the passes configured from outside it) the first time it is asked, so
a new metric module registers itself with no list to edit. Modules only *register* while they
are imported; asking the registry at import time (as ``landscape.measure`` does, to build
``MetricsSpec``) is for modules outside the discovered ones.

Families:

- ``local``: one value per member, run by ``measure_local`` through ``measure(m, spec,
  sample_g, probe_g)`` (``m`` is the ``landscape.metrics.local.Measurer``); ``order`` is its
  seed slot.
- ``global``: read by the passes that share pair data and BatchNorm recomputation
  (``landscape.metrics.pairs``); ``passes`` names which: ``pairs`` (between seeds of a
  replicate group) and/or ``member_surfaces`` (each member toward its initialisation).
- ``pack``: a table of the whole pack by ``measure(pack, spec, seed) -> rows`` (weights,
  reparametrisation probe); its table is ``tables[0]``.
- ``setting``: settings of another pass (BatchNorm recomputation along paths, cross-variant
  pairs after the sweep, measurements during training); nothing of its own is measured by
  ``measure_pack``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from landscape.variant import ConfigError

FAMILIES = ("local", "global", "pack", "setting")
PASSES = ("pairs", "member_surfaces")
# Modules outside landscape/metrics/ that register the settings of the pass they hold
# (tests/landscape/metrics/test_registry.py checks that no other module outside registers).
SETTINGS_MODULES = ("landscape.cross", "landscape.recorder")


@dataclass(frozen=True)
class Column:
    """One column a metric writes, and how a report shows it."""

    name: str
    label: str  # what it is, in a few words (a figure's title or colour-bar label)
    table: str = "runs"  # runs: one value per member; pairs: one value per pair of seeds
    unit: str | None = None  # e.g. nats, percentage points; None: a pure number
    log: bool = False  # positive and spanning orders of magnitude: drawn as log10
    report: int | None = None  # place of its heatmap among the report's first ones (lower first)
    summary: bool = False  # in the report's summary table
    phase_diagram: bool = False  # a panel of the report's phase diagram
    centre: float | None = None  # a colour map diverging around this value (None: sequential)


@dataclass(frozen=True)
class Metric:
    """A metric (or a pass's settings) as the rest of the code sees it."""

    name: str  # the config key metrics.<name> and the field of MetricsSpec
    spec: type  # its frozen settings dataclass, with an ``enabled`` field
    family: str  # one of FAMILIES (module docstring)
    # fixed place in MetricsSpec, the config and the catalogue; for a local metric also its seed
    # slot (seeds are drawn for slots 0, 1, ..., so a new slot changes no other metric's seed)
    order: int
    on_by_default: bool = False  # enabled in MetricsSpec()'s defaults (the fast preset's)
    columns: Callable[[Any], tuple[Column, ...]] = lambda spec: ()  # those these settings write
    tables: tuple[str, ...] = ()  # its own tables of rows (not runs, not pairs)
    measure: Callable[..., Any] | None = None  # local and pack families (module docstring)
    passes: tuple[str, ...] = ()  # global family: which of PASSES read it
    # its settings count in metrics_id even while nothing uses them (switched off, and not
    # measured during training): True only for the metrics registered before such settings were
    # left out, whose results hold ids that count them; a new metric keeps False, so adding
    # one changes no existing metrics_id
    hashed_when_off: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name}: family must be one of {FAMILIES}")
        if not dataclasses.is_dataclass(self.spec) or "enabled" not in {
            f.name for f in dataclasses.fields(self.spec)
        }:
            raise ValueError(f"metric {self.name}: spec must be a dataclass with an enabled field")
        if (self.measure is not None) != (self.family in ("local", "pack")):
            raise ValueError(f"metric {self.name}: the local and pack families (only) measure")
        if set(self.passes) - set(PASSES) or bool(self.passes) != (self.family == "global"):
            raise ValueError(f"metric {self.name}: a global metric (only) names its passes")
        if self.family == "pack" and len(self.tables) != 1:
            raise ValueError(f"metric {self.name}: a pack metric writes one table")

    def column_names(self, spec: Any) -> list[str]:
        """The names of the columns these settings write, in order."""
        return [c.name for c in self.columns(spec)]


# What training writes for every member (``landscape.train.evaluate_pack``), with the metrics'
# columns in the catalogue: first among the report's heatmaps (negative places).
TRAINING_COLUMNS = (
    Column("test_acc", "test accuracy", unit="fraction", report=-5, summary=True),
    Column("train_acc", "training accuracy", unit="fraction", report=-4),
    Column(
        "train_loss",
        "training loss",
        unit="nats",
        log=True,
        report=-2,
        summary=True,
        phase_diagram=True,
    ),
    Column("test_loss", "test loss", unit="nats", report=-1),
)

_REGISTRY: dict[str, Metric] = {}
_discovered = False


def register(metric: Metric) -> Metric:
    """Add a metric; a second metric of the same name or order is refused."""
    for other in _REGISTRY.values():
        if metric.name == other.name or metric.order == other.order:
            raise ValueError(
                f"metric {metric.name} (order {metric.order}) clashes with {other.name} "
                f"(order {other.order}): names and orders are unique"
            )
    _REGISTRY[metric.name] = metric
    return metric


def _discover() -> None:
    """Import every module of this package and :data:`SETTINGS_MODULES` (each registers its
    metrics as it is imported). A module found half imported (one that asked the registry
    while being imported) would be missing: that is an error, not a smaller registry."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(__package__)
    names = [f"{__package__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    for name in [*names, *SETTINGS_MODULES]:
        module = importlib.import_module(name)
        if getattr(module.__spec__, "_initializing", False):
            raise RuntimeError(
                f"the metric registry was asked while {name} was being imported; "
                "modules that register metrics must not ask the registry at import time"
            )
    _discovered = True


def metrics(family: str | None = None) -> tuple[Metric, ...]:
    """Every registered metric (of one family), in order."""
    _discover()
    found = sorted(_REGISTRY.values(), key=lambda m: m.order)
    return tuple(m for m in found if family is None or m.family == family)


def metric(name: str) -> Metric:
    """The metric registered as ``name``."""
    _discover()
    return _REGISTRY[name]


def metric_names(family: str | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in metrics(family))


def metric_catalogue(spec: Any) -> dict[str, dict]:
    """Every metric and the columns ``spec`` (a ``MetricsSpec``) gives it, as plain JSON-able
    data, in order: ``{"family", "enabled", "passes", "tables", "columns": [{"name", "label",
    "table", "unit", "log", "report", "summary", "phase_diagram", "centre"}, ...]}``. Metrics
    that are off are listed too: measurements during training (``metrics.trajectory``) write
    their columns whether or not the metric runs on the final model."""
    out = {}
    for m in metrics():
        settings = getattr(spec, m.name)
        out[m.name] = {
            "family": m.family,
            "enabled": bool(settings.enabled),
            "passes": list(m.passes),
            "tables": list(m.tables),
            "columns": [dataclasses.asdict(c) for c in m.columns(settings)],
        }
    return out


def training_catalogue() -> list[dict[str, Any]]:
    """:data:`TRAINING_COLUMNS` as plain JSON-able data."""
    return [dataclasses.asdict(c) for c in TRAINING_COLUMNS]


def check_ranges(
    spec: object, name: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()
) -> None:
    """Each named field of ``metrics.<name>`` finite and > 0 (``positive``) or >= 0."""
    for key in positive:
        value = getattr(spec, key)
        if not 0 < value < math.inf:
            raise ConfigError(f"metrics.{name}.{key} must be finite and > 0, got {value!r}")
    for key in non_negative:
        value = getattr(spec, key)
        if not 0 <= value < math.inf:
            raise ConfigError(f"metrics.{name}.{key} must be finite and >= 0, got {value!r}")


def require_positive(key: str, value: int | float) -> None:
    """``key`` (a full config key) must be > 0."""
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")
