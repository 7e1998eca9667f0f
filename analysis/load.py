"""Read a sweep's results directory into pandas, and nothing else.

A results directory (``results/<sweep>/``) holds ``manifest.json`` and one directory per
table, each a set of Parquet part files (``part-*.parquet``). The sweep driver writes every
part under a temporary name starting with ``.`` and renames it into place, so dot- and
underscore-files are skipped here. Parts are read one by one and concatenated, so a newer
part that carries an extra (nullable) metric column does not hide it (a Parquet dataset
would take the first file's schema). A part that cannot be read (a disk that filled, a copy
cut short) is skipped with a one-line warning naming it: the other parts still load, and the
next run of the sweep moves the damaged part to ``quarantine/`` and trains its variants again.

Only ``runs`` is required; every other table is ``None`` when it was not written. The
``path`` table (the optimiser's path on its PCA plane) is ``Results.pca_path``, because
``Results.path`` is the directory.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.columns import Shown, shown_columns

TABLES = (
    "runs",
    "curves",
    "pairs",
    "surfaces",
    "spectra",
    "stiffness",
    "lr_range",
    # Measurements during training (see analysis.training and its neighbours).
    "trajectory",
    "path",
    "lca",
    "params",
    "reparam",
    "cross",  # interpolation between variants of different sweep points (metrics.cross)
)
# Tables held under another attribute of Results, whose ``path`` is the directory.
ATTRIBUTES = {"path": "pca_path"}

# Knobs that behave like a temperature (noise scale of SGD) or a load (capacity against
# data), in the order they are tried when the manifest names no analysis axes.
TEMPERATURE_KNOBS = ("optim.batch_size", "optim.lr", "optim.weight_decay", "optim.momentum")
LOAD_KNOBS = ("model.width", "data.label_noise", "data.subset", "model.depth")


class ResultsError(ValueError):
    """A results directory that cannot be analysed; the message names the path or value."""


@dataclass(frozen=True)
class Results:
    """The tables of one sweep. ``runs`` is always present; other tables may be ``None``."""

    path: Path
    manifest: dict[str, Any]
    runs: pd.DataFrame
    curves: pd.DataFrame | None = None
    pairs: pd.DataFrame | None = None
    surfaces: pd.DataFrame | None = None
    spectra: pd.DataFrame | None = None
    stiffness: pd.DataFrame | None = None
    lr_range: pd.DataFrame | None = None
    trajectory: pd.DataFrame | None = None
    pca_path: pd.DataFrame | None = None  # the ``path`` table (``path`` is the directory)
    lca: pd.DataFrame | None = None
    params: pd.DataFrame | None = None
    reparam: pd.DataFrame | None = None
    cross: pd.DataFrame | None = None
    axes: dict[str, list[Any]] = field(default_factory=dict)
    # tables the catalogue names that have no attribute above (a new metric's own table)
    others: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.manifest.get("sweep") or self.path.name)

    @property
    def ok_runs(self) -> pd.DataFrame:
        """Runs that finished (``status == "ok"``)."""
        if "status" not in self.runs:
            return self.runs
        return self.runs[self.runs["status"] == "ok"]

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables that are present, by name."""
        present = {t: getattr(self, ATTRIBUTES.get(t, t)) for t in TABLES}
        return {t: frame for t, frame in {**present, **self.others}.items() if frame is not None}

    def analysis_axes(
        self, temperature: str | None = None, load: str | None = None
    ) -> tuple[str, str]:
        """The (temperature, load) axes: arguments, else the manifest's ``analysis``, else a guess.

        A guess takes the first varying knob from :data:`TEMPERATURE_KNOBS` and
        :data:`LOAD_KNOBS`, then any other varying axis. Raises :class:`ResultsError` naming
        the key when an axis is not a column of ``runs`` or no two axes can be found.
        """
        chosen = dict(self.manifest.get("analysis") or {})
        varying = [a for a in self.axes if a != "seed"]
        temperature = temperature or chosen.get("temperature")
        load = load or chosen.get("load")
        temperature = temperature or _first_in(TEMPERATURE_KNOBS, varying, exclude=load)
        load = load or _first_in(LOAD_KNOBS, varying, exclude=temperature)
        rest = [a for a in varying if a not in (temperature, load)]
        temperature = temperature or (rest.pop(0) if rest else None)
        load = load or (rest.pop(0) if rest else None)
        for role, key in (("temperature", temperature), ("load", load)):
            if key is None:
                raise ResultsError(
                    f"cannot choose a {role} axis: the sweep varies {varying or 'no knob'}; "
                    f"pass --{role} KEY"
                )
            if key not in self.runs.columns:
                raise ResultsError(
                    f"{role} axis {key!r} is not a column of the runs table; "
                    f"knobs: {', '.join(self.knob_columns())}"
                )
        if temperature == load:
            raise ResultsError(f"temperature and load axes must differ, both are {temperature!r}")
        return temperature, load

    def knob_columns(self) -> list[str]:
        """The runs table's knob columns (``model.width``, ``optim.lr``, ...) and ``seed``:
        what an axis may be."""
        return [c for c in self.runs.columns if "." in c or c == "seed"]

    @property
    def catalogue(self) -> dict[str, Any]:
        """The manifest's catalogue (what the sweep's names mean: its data sets, the knobs'
        roles, each table's columns; see docs/results.md); empty for results written before it."""
        return _catalogue(self.manifest)

    @cached_property
    def columns(self) -> dict[str, Shown]:
        """How each column is drawn (label, unit, scale, place in the report), as the catalogue
        declares it (:func:`analysis.columns.shown_columns`); empty for older results."""
        return shown_columns(self.catalogue)

    def num_classes(self) -> int | None:
        """Number of classes of the training data, or None when the results cannot tell.

        The catalogue's record of the data set says it: a number, or the knob column that holds
        it (``data.n_classes`` for synthetic data). Results written before the catalogue carry
        no record: then the composed config's ``data.n_classes`` where the data set's config
        declares it (only a data set whose classes are a knob does; the flattened knobs carry
        the column for every data set, meaningful or not), else the labels of the
        class-stiffness matrices (every pair of classes 0 .. C-1 is written), else None.
        """
        config = self.manifest.get("config") or {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        name = self._first_value("data.name") or data.get("name")
        record = (self.catalogue.get("data") or {}).get(name)
        if isinstance(record, dict) and record.get("classes") is not None:
            classes = record["classes"]
            if not isinstance(classes, str):
                return int(classes)
            n = self._first_value(classes)  # a knob column: data.n_classes
            n = data.get(classes.partition(".")[2]) if n is None else n
            return int(n) if n is not None else None
        if data.get("n_classes") is not None:
            return int(self._first_value("data.n_classes") or data["n_classes"])
        return _classes_of_labels(self.stiffness)

    def _first_value(self, column: str) -> Any:
        if column in self.runs and self.runs[column].notna().any():
            return self.runs[column].dropna().iloc[0]
        return None


def _catalogue(manifest: dict[str, Any]) -> dict[str, Any]:
    catalogue = manifest.get("catalogue")
    return catalogue if isinstance(catalogue, dict) else {}


def _classes_of_labels(stiffness: pd.DataFrame | None) -> int | None:
    """C from class-stiffness rows, which cover every pair of classes 0 .. C-1."""
    if stiffness is None or not {"class_a", "class_b"} <= set(stiffness.columns):
        return None
    labels = pd.to_numeric(stiffness[["class_a", "class_b"]].stack(), errors="coerce").dropna()
    return int(labels.max()) + 1 if len(labels) else None


def _first_in(candidates: tuple[str, ...], varying: list[str], exclude: str | None) -> str | None:
    return next((c for c in candidates if c in varying and c != exclude), None)


def read_table(directory: Path) -> pd.DataFrame | None:
    """All ``*.parquet`` parts of one table directory, concatenated; ``None`` when there are none."""
    if not directory.is_dir():
        return None
    parts = sorted(
        p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")) and p.is_file()
    )
    frames = [f for f in map(_read_part, parts) if f is not None and len(f.columns)]
    if not frames:
        return None
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True, sort=False)


UNREADABLE = (OSError, ValueError, pa.ArrowException)  # what pyarrow raises on a damaged file


def _read_part(part: Path) -> pd.DataFrame | None:
    """One part file, or ``None`` (with a one-line warning) when it cannot be read."""
    try:
        return pq.read_table(part).to_pandas()
    except UNREADABLE as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        root = part.parent.parent
        warnings.warn(
            f"skipped unreadable part {part} ({reason}); run the sweep's command again to move "
            f"it to quarantine/ and retrain its variants (`landscape-sweep status {root}` "
            "shows the damage)",
            stacklevel=3,
        )
        return None


def infer_axes(runs: pd.DataFrame) -> dict[str, list[Any]]:
    """Axes of a sweep without a manifest: knob columns (``a.b``) and ``seed`` that vary."""
    axes = {}
    for col in runs.columns:
        if "." not in col and col != "seed":
            continue
        values = runs[col].dropna().map(_hashable)  # list knobs (optim.betas) come as arrays
        if values.nunique() > 1:
            axes[col] = sorted(values.unique().tolist(), key=_sort_key)
    return axes


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(_hashable(v) for v in value)
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value))


def load_results(path: str | Path) -> Results:
    """Load ``manifest.json`` and every table under ``path``.

    Raises :class:`ResultsError` (a ``ValueError``) naming the path when the directory does
    not exist, the manifest is not valid JSON, or there is no ``runs`` table.
    """
    root = Path(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ResultsError(f"results directory {str(path)!r} {what}")
    manifest: dict[str, Any] = {}
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ResultsError(f"{str(manifest_path)!r} is not valid JSON: {err}") from err
    tables = {ATTRIBUTES.get(name, name): read_table(root / name) for name in TABLES}
    runs = tables["runs"]
    if runs is None or runs.empty:
        raise ResultsError(f"{str(path)!r} has no runs table (expected {str(root / 'runs')!r})")
    if any(root.glob(".journal-*.json")):
        warnings.warn(
            f"{root} has an unfinished store operation (.journal-*.json): some rows may be "
            "counted twice until `landscape-sweep compact` or the sweep runs there again",
            stacklevel=2,
        )
    tables = {name: _deduplicated(name, t) for name, t in tables.items()}
    runs = tables["runs"] = _hashable_knobs(tables["runs"])
    axes = dict(manifest.get("axes") or {}) or infer_axes(runs)
    # a config-group axis (model=mlp,cnn) is the runs' <group>.name column
    axes = {
        (f"{k}.name" if k not in runs.columns and f"{k}.name" in runs.columns else k): v
        for k, v in axes.items()
    }
    # The manifest's axes are the sweep's intent; keep only those the runs actually carry,
    # then add any knob that varies within what they would call one cell (a --force'd
    # change): nothing is averaged across a knob by accident.
    axes = {k: v for k, v in axes.items() if k in runs.columns}
    axes.update(_hidden_axes(runs, axes, _launch_knobs(manifest, runs)))
    named = _catalogue(manifest).get("tables") or {}
    others = {
        name: _deduplicated(name, read_table(root / name))
        for name in named
        if isinstance(name, str) and name not in TABLES and name.isidentifier()
    }
    others = {name: t for name, t in others.items() if t is not None}
    return Results(path=root, manifest=manifest, axes=axes, others=others, **tables)


def _launch_knobs(manifest: dict[str, Any], runs: pd.DataFrame) -> set[str]:
    """Knob columns that say how a run was launched, not what it computed: the catalogue's
    ``knobs.launch``. Results written before the catalogue: the knobs that vary among the runs
    of one replicate group (one ``group_id``, so every knob of its identity but the seed the
    same); none when the runs carry no ``group_id``."""
    launch = (_catalogue(manifest).get("knobs") or {}).get("launch")
    if isinstance(launch, list):
        return set(launch)
    knobs = [c for c in runs.columns if "." in c]
    if "group_id" not in runs.columns or not knobs:
        return set()
    counts = runs.groupby("group_id", dropna=False)[knobs].nunique(dropna=False)
    return {c for c in knobs if (counts[c] > 1).any()}


def _hidden_axes(
    runs: pd.DataFrame, axes: dict[str, list[Any]], launch: set[str]
) -> dict[str, list[Any]]:
    """Knob columns that vary among runs sharing every non-seed axis value (launch knobs aside)."""
    keys = [k for k in axes if k != "seed"]
    found: dict[str, list[Any]] = {}
    for col, values in infer_axes(runs).items():
        if col in axes or col == "seed" or col in launch:
            continue
        groups = runs.groupby(keys, dropna=False)[col] if keys else [(None, runs[col])]
        if any(g.nunique(dropna=False) > 1 for _, g in groups):
            found[col] = values
            keys.append(col)
    return found


def _hashable_knobs(runs: pd.DataFrame) -> pd.DataFrame:
    """List knobs (optim.betas, optim.step_at) come from Parquet as arrays: made tuples, so
    that they group, compare and count like any other value."""
    return _hashable_columns(runs, [c for c in runs.columns if "." in c])


def _hashable_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with the object columns among ``columns`` mapped through :func:`_hashable`."""
    objects = [c for c in columns if pd.api.types.is_object_dtype(frame[c])]
    return frame.assign(**{c: frame[c].map(_hashable) for c in objects}) if objects else frame


# Rows that are the same record if they agree on these (the newest wins); other tables drop
# exact duplicates (left by an interrupted compaction, whose copies are identical).
RECORD_KEYS = {"runs": ("variant_id",), "pairs": ("group_id", "variant_a", "variant_b")}


def _deduplicated(name: str, table: pd.DataFrame | None) -> pd.DataFrame | None:
    if table is None or table.empty:
        return table
    keys = [k for k in RECORD_KEYS.get(name, ()) if k in table.columns]
    if keys:
        if "finished_at" in table.columns:
            table = table.sort_values("finished_at", kind="stable", na_position="first")
        return table.drop_duplicates(keys, keep="last").sort_index()
    try:
        return table[~_hashable_columns(table, list(table.columns)).duplicated()]
    except TypeError:  # an unhashable cell of another kind: leave the table as it is
        return table
