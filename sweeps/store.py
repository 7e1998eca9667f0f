"""The results store: one directory per sweep, one directory of Parquet parts per table.

Each part is written to a hidden temporary name and renamed into place, so a reader
(pandas, pyarrow, another process) never sees half a file; pyarrow skips names starting
with ``.`` or ``_``. A ``manifest.json`` records the composed config, the axes, the code
version and the package versions. Resume reads the finished ``variant_id`` values back.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Columns whose values are text; every other column that arrives all-null is stored as float64,
# so parts of one table always agree on types.
STRING_COLUMNS = {"error", "variant_id", "group_id", "pack_id", "metrics_id", "variant_a", "variant_b",
                  "device", "status", "kind"}
FINISHED = ("ok", "diverged")
PACKAGES = ("torch", "torchvision", "ray", "hydra-core", "omegaconf", "pandas", "pyarrow", "numpy", "seaborn")


def _arrow_table(rows: list[dict]) -> pa.Table:
    """Rows -> table; columns missing from some rows are null there; all-null columns typed."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = {}
    for key in names:
        values = [row.get(key) for row in rows]
        arr = pa.array(values)
        if pa.types.is_null(arr.type):
            arr = pa.array(values, type=pa.string() if key in STRING_COLUMNS else pa.float64())
        arrays[key] = arr
    return pa.table(arrays)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add schema columns the table lacks (as nulls) and cast to the schema's types and order."""
    columns = []
    for f in schema:
        columns.append(table.column(f.name).cast(f.type) if f.name in table.column_names
                       else pa.nulls(len(table), type=f.type))
    return pa.table(columns, schema=schema)


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._schemas: dict[str, pa.Schema] = {}  # per table: the schema parts written so far agree on

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def write_pack(self, tables: dict[str, list[dict]]) -> str:
        """Write one pack's rows: every other table first, ``runs`` last, all parts named by one
        commit id. A ``runs`` part is the commit record: parts of other tables whose commit has
        no ``runs`` part (a driver killed in between) are removed by :meth:`drop_uncommitted`."""
        commit = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}"
        for table in sorted(tables, key=lambda t: t == "runs"):
            self.write_part(table, tables[table], commit)
        return commit

    def drop_uncommitted(self) -> int:
        """Remove parts (and temporary files) left by a write that never reached its ``runs`` part."""
        committed = {p.name for p in self.parts("runs")}
        removed = 0
        if not self.root.is_dir():
            return 0
        for directory in self.root.iterdir():
            if not directory.is_dir():
                continue
            for tmp in directory.glob(".part-*.tmp"):
                tmp.unlink()
                removed += 1
            if directory.name == "runs":
                continue
            for part in directory.glob("part-*.parquet"):
                if part.name not in committed:
                    part.unlink()
                    removed += 1
        return removed

    def write_part(self, table: str, rows: list[dict], commit: str | None = None) -> Path | None:
        """Write rows as one new Parquet part, atomically. Returns the part's path."""
        if not rows:
            return None
        directory = self.table_dir(table)
        directory.mkdir(parents=True, exist_ok=True)
        commit = commit or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}"
        name = f"part-{commit}.parquet"
        table = _arrow_table(rows)
        table_name = directory.name
        known = self._schemas.get(table_name)
        if known is not None:
            merged = pa.unify_schemas([known, table.schema], promote_options="permissive")
            table = _conform(table, merged)
        self._schemas[table_name] = table.schema
        self._atomic_write(table, directory / name)
        return directory / name

    @staticmethod
    def _atomic_write(table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def harmonize(self, table: str) -> int:
        """Rewrite parts whose schema differs from the union of all parts' schemas, so that
        ``pandas.read_parquet(<table dir>)`` sees every column (pyarrow takes the schema of
        the first part it finds). Each rewrite is atomic and keeps the rows. Returns the count."""
        parts = self.parts(table)
        schemas = {}
        for part in parts:
            try:
                schemas[part] = pq.read_schema(part)
            except (OSError, pa.ArrowException):
                continue
        if not schemas:
            return 0
        union = pa.unify_schemas(list(schemas.values()), promote_options="permissive")
        union = pa.schema([f.with_type(pa.float64()) if pa.types.is_null(f.type) else f for f in union])
        rewritten = 0
        for part, schema in schemas.items():
            if not schema.equals(union):
                self._atomic_write(_conform(pq.read_table(part), union), part)
                rewritten += 1
        self._schemas[table] = union
        return rewritten

    def parts(self, table: str) -> list[Path]:
        directory = self.table_dir(table)
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.glob("part-*.parquet"))

    def read_column_values(self, table: str, columns: list[str]) -> tuple[list[dict], list[Path]]:
        """Rows (only ``columns``) of every readable part, and the parts that could not be read."""
        rows: list[dict] = []
        bad: list[Path] = []
        for part in self.parts(table):
            try:
                rows.extend(pq.read_table(part, columns=columns).to_pylist())
            except (OSError, pa.ArrowException):
                bad.append(part)
        return rows, bad

    def finished_ids(self) -> set[str]:
        rows, _ = self.read_column_values("runs", ["variant_id", "status"])
        return {r["variant_id"] for r in rows if r["status"] in FINISHED}

    def recorded_ids(self) -> dict[str, str]:
        """variant_id -> status of the latest row for it."""
        rows, _ = self.read_column_values("runs", ["variant_id", "status"])
        return {r["variant_id"]: r["status"] for r in rows}

    # --- manifest -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.manifest_path)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` for uncommitted changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return metadata.version("landscape")
