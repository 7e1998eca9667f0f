"""The catalogue: what a results directory's names mean, written into its ``manifest.json``.

Readers of results (``analysis``) take the names they need from here instead of keeping their
own lists: the data sets a sweep used (shapes, classes, sizes, files), the roles of its knobs,
each table's columns, and the columns training and the metrics write with how a report draws
them. Every section derives from the one place that declares it
(:data:`landscape.datasets.DATA_SETS`, the ``setting(...)`` roles of the variant's fields, the
store's schemas, the metric registry), so nothing is listed twice. Plain JSON throughout::

    {
      "version": 2,
      "data": {name: {"source", "loader", "format", "input_shape", "classes", "train_size",
                      "test_size", ["torchvision_class", "folder", "files"]}},
      "knobs": {"identity": [...], "launch": [...], "added": {knob: old value},
                "axes": [...], "analysis": {"temperature": knob, "load": knob}},
      "tables": {table: [column, ...]},
      "training": [{"name", "label", "table", "unit", "log", "report", ...}, ...],
      "metrics": {metric: {"family", "enabled", "columns": [...], ...}}  # only when given
    }

A size, class count or dimension is a number, or the knob column (``data.n_classes``) whose
value it is. ``knobs.identity`` are the columns that make a ``variant_id`` (an ``added`` knob
only away from its old value); ``launch`` ones say how a result was computed, never what it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from landscape.datasets import DATA_SETS
from landscape.metrics.registry import training_catalogue
from landscape.variant import ADDED_KNOBS, LAUNCH_KNOBS, Variant

# 2: the training columns, and every metric (with "enabled") rather than the enabled ones only
CATALOGUE_VERSION = 2
ANALYSIS_ROLES = ("temperature", "load")  # knob roles of ``sweep.analysis`` (claims are not knobs)


def data_catalogue(names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The records of ``names`` (every data set when None), as JSON; unknown names fail."""
    chosen = DATA_SETS if names is None else sorted(set(names))
    return {name: DATA_SETS[name].record() for name in chosen}


def knob_roles(
    axes: Iterable[str] = (), analysis: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Knob columns by role: identity, launch-only, added (with the value that reproduces the
    results before them), and the sweep's own ``axes`` and ``analysis`` axes."""
    launch = list(LAUNCH_KNOBS)
    return {
        "identity": [k for k in Variant().flat() if k not in launch],
        "launch": launch,
        "added": dict(ADDED_KNOBS),
        "axes": sorted(axes),
        "analysis": {r: str(v) for r, v in (analysis or {}).items() if r in ANALYSIS_ROLES},
    }


def table_columns(schemas: Mapping[str, Mapping[str, str]] | None) -> dict[str, list[str]]:
    """Each table's columns, from the store's schemas (column -> Arrow type), in their order."""
    return {table: list(columns) for table, columns in sorted((schemas or {}).items())}


def catalogue(
    data_names: Iterable[str] | None = None,
    *,
    axes: Iterable[str] = (),
    analysis: Mapping[str, Any] | None = None,
    schemas: Mapping[str, Mapping[str, str]] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The catalogue of a sweep over ``data_names`` (every data set when None).

    ``training`` holds the columns training writes for every member. ``metrics`` is the metric
    settings' own catalogue (``metric_catalogue(spec)``: columns, tables, labels, units, how a
    report draws them), stored as given under ``"metrics"``; without it the key is absent (a
    reader then knows nothing of the metrics beyond the tables' columns)."""
    out: dict[str, Any] = {
        "version": CATALOGUE_VERSION,
        "data": data_catalogue(data_names),
        "knobs": knob_roles(axes, analysis),
        "tables": table_columns(schemas),
        "training": training_catalogue(),
    }
    if metrics is not None:
        out["metrics"] = dict(metrics)
    return out
