"""How each result column is drawn, read from the results' own catalogue.

Where a column is computed, it is declared once with its label, unit, scale and place in the
report (the metric registry of ``landscape``, and the columns training writes); the sweep
writes those declarations into ``manifest.json`` (``catalogue.training`` and
``catalogue.metrics``), and the report reads them from there instead of keeping lists of
names. The one column the analysis computes itself, ``gen_gap``, is declared here.

Results written before the catalogue carried columns have none: their columns are drawn
plainly (linear, no unit), every numeric measurement gets a heatmap in table order, and the
report leaves out the phase-signal panels and the summary's measurement columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shown:
    """One column and how a report draws it (the catalogue's entry for it)."""

    name: str
    label: str = ""  # what it is, in a few words ("" for a column nothing declares)
    table: str = "runs"  # runs: one value per member; pairs: one per pair of seeds
    unit: str | None = None  # nats, fraction, percentage points; None: a pure number
    log: bool = False  # positive and spanning decades: drawn as log10
    report: int | None = None  # place among the report's heatmaps (None: not drawn there)
    summary: bool = False  # a column of the report's per-phase summary
    phase_diagram: bool = False  # a panel of the phase-signal figure
    centre: float | None = None  # a colour map diverging around this value

    def colour_label(self, log: bool = False) -> str:
        """A colour-bar label: ``mc (percentage points)``, ``log10 train_loss (nats)``."""
        name = f"log10 {self.name}" if log else self.name
        return f"{name} ({self.unit})" if self.unit else name

    def title(self, log: bool = False) -> str:
        """A panel title: the label (the name where there is none), ``(log10)`` when drawn so."""
        text = self.label or self.name
        return f"{text} (log10)" if log else text


# Computed per run by analysis.cells.with_gen_gap; between training accuracy and training loss.
GEN_GAP = Shown(
    "gen_gap", "generalisation gap (training - test accuracy)", unit="fraction", report=-3
)
_FIELDS = tuple(f.name for f in dataclasses.fields(Shown))


def shown_columns(catalogue: Mapping[str, Any]) -> dict[str, Shown]:
    """Every column the catalogue declares (training's, then each metric's), by name; empty
    for results written before the catalogue carried columns."""
    metrics = catalogue.get("metrics") or {}
    entries: list[Mapping[str, Any]] = [
        *(catalogue.get("training") or []),
        *(c for m in metrics.values() if isinstance(m, Mapping) for c in m.get("columns") or []),
    ]
    out = {
        e["name"]: Shown(**{k: e[k] for k in _FIELDS if k in e})
        for e in entries
        if isinstance(e, Mapping) and isinstance(e.get("name"), str)
    }
    if {"train_acc", "test_acc"} <= set(out):
        out[GEN_GAP.name] = GEN_GAP
    return out


def shown(columns: Mapping[str, Shown] | None, name: str) -> Shown:
    """``name``'s entry, or a plain one (linear, no unit) where nothing declares it."""
    return (columns or {}).get(name) or Shown(name)


def in_report_order(columns: Mapping[str, Shown], present: Iterable[str]) -> list[Shown]:
    """The declared columns among ``present`` that have a place in the report, in that order."""
    here = set(present)
    placed = [c for c in columns.values() if c.report is not None and c.name in here]
    return sorted(placed, key=lambda c: c.report)
