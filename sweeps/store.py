"""The results store: one directory per sweep, one directory of Parquet parts per table.

Each part is written to a hidden temporary name and renamed into place, so a reader
(pandas, pyarrow, another process) never sees half a file; pyarrow skips names starting
with ``.`` or ``_``. A ``manifest.json`` records the composed config, the axes, the code
version and the package versions. Resume reads the finished ``variant_id`` values back.

Invariants, and how a crash at any point keeps them (see :meth:`Store.recover`):

- **A commit is its runs part.** One pack's rows in every table share one commit id
  (``part-<commit>.parquet``); ``runs`` is written last. Parts of a commit without a
  ``runs`` part are an interrupted write and are removed; their variants run again.
- **No variant twice.** Rows are only ever removed from or added to the store under a
  journal (``.journal-*.json``, written atomically before the first change): replacing a
  variant's rows (``--retry-failed``, ``--remeasure``) and compaction both roll forward
  (or, for a compaction whose result is incomplete, back) on the next start.
- **Unreadable parts are moved aside, never deleted**: a corrupt or truncated part takes its
  whole commit to ``quarantine/<table>/``; that commit's variants run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from landscape.catalogue import table_columns
from landscape.variant import ConfigError
from sweeps.signals import deferred

# Columns whose values are text; every other column that arrives all-null is stored as float64,
# so parts of one table always agree on types.
STRING_COLUMNS = {
    "error",
    "metric_errors",
    "variant_id",
    "group_id",
    "pack_id",
    "metrics_id",
    "variant_a",
    "variant_b",
    "device",
    "status",
    "kind",
}
DISTRIBUTION = "landscape-sweeps"  # the name pip knows this project by
ID_COLUMNS = ("variant_id", "variant_a", "variant_b")  # a row belongs to every variant it names
FINISHED = ("ok", "diverged")
PACKAGES = (
    "torch",
    "torchvision",
    "ray",
    "hydra-core",
    "omegaconf",
    "pandas",
    "pyarrow",
    "numpy",
    "seaborn",
)
QUARANTINE = "quarantine"
NOT_TABLES = {QUARANTINE, "report", "checkpoints"}
# Tables whose parts are their own commit record: runs, cross (written after training, one
# part per cross-variant pair, with no runs part of its own), and passes (one row per write of
# a post-training pass, e.g. pairs between group members trained in different packs: the
# commit record of that write's parts in other tables).
PASSES = "passes"
SELF_COMMITTED = {"runs", "cross", PASSES}
COMPACT_ROWS = 100_000  # runs rows per compacted part
UNREADABLE = (OSError, ValueError, pa.ArrowException)  # what pyarrow raises on a damaged file


def new_commit_id() -> str:
    """Sortable by time (microseconds), unique by a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:10]}"


def part_name(commit: str) -> str:
    return f"part-{commit}.parquet"


def commit_of(part: Path) -> str:
    return part.name[len("part-") : -len(".parquet")]


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
        columns.append(
            table.column(f.name).cast(f.type)
            if f.name in table.column_names
            else pa.nulls(len(table), type=f.type)
        )
    return pa.table(columns, schema=schema)


def _widen(known: pa.Schema, table: pa.Table) -> pa.Schema:
    """The table's schema after writing ``table``: its columns keep their types where the new
    values fit them (an all-null float64 column, an int64 into a float64 one), are promoted
    where they do not (int64 -> double), and new columns are added at the end."""
    fields = []
    for f in known:
        if f.name not in table.column_names:
            fields.append(f)
            continue
        column = table.column(f.name)
        if column.type.equals(f.type) or column.null_count == len(column):
            fields.append(f)
            continue
        try:
            column.cast(f.type, safe=True)
            fields.append(f)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            fields.append(_union_schema([pa.schema([f]), pa.schema([(f.name, column.type)])])[0])
    fields += [f for f in table.schema if f.name not in known.names]
    return pa.schema(fields)


def schema_record(schema: pa.Schema) -> dict[str, str]:
    """A table's schema as the manifest records it: column -> Arrow type name."""
    return {f.name: str(f.type) for f in schema}


def _union_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    union = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    return pa.schema([f.with_type(pa.float64()) if pa.types.is_null(f.type) else f for f in union])


def _rows_naming(table: pa.Table, ids: pa.Array) -> pa.Array:
    """Boolean mask: rows that name any of ``ids`` in an id column."""
    mask = pa.array([False] * len(table))
    for col in ID_COLUMNS:
        if col in table.column_names:
            mask = pc.or_(mask, pc.fill_null(pc.is_in(table.column(col), value_set=ids), False))
    return mask


@dataclass
class Recovery:
    """What :meth:`Store.recover` found and did, for the log and ``status``."""

    journals: list[str] = field(default_factory=list)  # operations finished or rolled back
    removed: int = 0  # temporary files and parts of interrupted pack writes
    quarantined: list[str] = field(default_factory=list)  # one line per commit moved aside

    def lines(self) -> list[str]:
        out = [f"finished an interrupted {j}" for j in self.journals]
        if self.removed:
            out.append(
                f"removed {self.removed} files of an interrupted write (their variants run again)"
            )
        out += [f"quarantined {q}" for q in self.quarantined]
        return out


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._schemas: dict[
            str, pa.Schema
        ] = {}  # per table: the schema parts written so far agree on

    # --- layout -------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def tables(self) -> list[str]:
        """Table directories present (runs first)."""
        if not self.root.is_dir():
            return []
        names = [
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and d.name not in NOT_TABLES and not d.name.startswith((".", "_"))
        ]
        return sorted(names, key=lambda t: (t != "runs", t))

    def parts(self, table: str) -> list[Path]:
        directory = self.table_dir(table)
        if not directory.is_dir():
            return []
        return sorted(directory.glob("part-*.parquet"))

    def commits(self) -> list[str]:
        """Committed pack writes, oldest first: the names of the runs parts."""
        return [commit_of(p) for p in self.parts("runs")]

    def pass_commits(self) -> list[str]:
        """Committed writes of post-training passes, oldest first: the names of passes parts."""
        return [commit_of(p) for p in self.parts(PASSES)]

    # --- writing ------------------------------------------------------------------------
    def write_pack(self, tables: dict[str, list[dict]], commit: str | None = None) -> str:
        """Write one pack's rows: every other table first, ``runs`` last, all parts named by one
        commit id. A ``runs`` part is the commit record: parts of other tables whose commit has
        no ``runs`` part (a driver killed in between) are removed by :meth:`drop_uncommitted`."""
        commit = commit or new_commit_id()
        with deferred():  # a signal stops the driver once the pack's parts are all written
            for table in sorted(tables, key=lambda t: t == "runs"):
                self.write_part(table, tables[table], commit)
        return commit

    def write_pass(self, tables: dict[str, list[dict]], kind: str) -> str | None:
        """Write rows made after training, outside any pack (``runs`` rows are not allowed):
        every table's part first, then one ``passes`` row naming the commit, its record. Parts
        whose commit has neither a runs nor a passes part are removed by :meth:`drop_uncommitted`.
        Returns the commit id (None when there is nothing to write)."""
        if "runs" in tables:
            raise ValueError("a pass writes no runs rows; use write_pack")
        counts = {table: len(rows) for table, rows in tables.items() if rows}
        if not counts:
            return None
        commit = new_commit_id()
        record = {"commit": commit, "kind": kind, "rows": json.dumps(counts, sort_keys=True)}
        with deferred():
            for table in sorted(counts):
                self.write_part(table, tables[table], commit)
            self.write_part(PASSES, [{**record, "written_at": datetime.now(timezone.utc)}], commit)
        return commit

    def write_part(self, table: str, rows: list[dict], commit: str | None = None) -> Path | None:
        """Write rows as one new Parquet part, atomically. Returns the part's path."""
        if not rows:
            return None
        directory = self.table_dir(table)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / part_name(commit or new_commit_id())
        arrow = _arrow_table(rows)
        known = self.table_schema(table)
        target = arrow.schema if known is None else _widen(known, arrow)
        if known is not None and not target.equals(known):
            self._rewrite_parts(table, target)  # the older parts take the new schema first
        self._set_schema(table, target)
        self._atomic_write(_conform(arrow, target), path)
        return path

    def table_schema(self, table: str) -> pa.Schema | None:
        """The schema every part of ``table`` has (None before its first part): read from the
        parts once per Store, and brought to one schema there if older parts disagree."""
        if table not in self._schemas:
            self.harmonize(table)
        return self._schemas.get(table)

    def _rewrite_parts(self, table: str, schema: pa.Schema) -> None:
        """Rewrite (atomically) every part whose schema is not ``schema``; rows unchanged."""
        for part in self.parts(table):
            try:
                current = pq.read_schema(part).remove_metadata()
            except UNREADABLE:
                continue  # the next recovery quarantines it
            if not current.equals(schema):
                self._atomic_write(_conform(pq.read_table(part), schema), part)

    def _set_schema(self, table: str, schema: pa.Schema) -> None:
        """Remember the table's schema, and record it in the manifest when it changed."""
        changed = table in self._schemas and not self._schemas[table].equals(schema)
        self._schemas[table] = schema
        if changed and self.manifest_path.exists():
            manifest = self.read_manifest() or {}
            self.write_manifest(manifest)  # write_manifest records every known schema

    @staticmethod
    def _atomic_write(table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except BaseException:  # a full disk, an interrupt: leave no half file behind
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    def harmonize(self, table: str) -> int:
        """Rewrite parts whose schema differs from the union of all parts' schemas, so that
        ``pandas.read_parquet(<table dir>)`` sees every column (pyarrow takes the schema of
        the first part it finds). Each rewrite is atomic and keeps the rows. Returns the count."""
        schemas = {}
        for part in self.parts(table):
            try:
                schemas[part] = pq.read_schema(part).remove_metadata()
            except UNREADABLE:
                continue
        if not schemas:
            return 0
        union = _union_schema(schemas.values())
        rewritten = 0
        for part, schema in schemas.items():
            if not schema.equals(union):
                self._atomic_write(_conform(pq.read_table(part), union), part)
                rewritten += 1
        self._set_schema(table, union)
        return rewritten

    # --- reading ------------------------------------------------------------------------
    def read_column_values(
        self, table: str, columns: list[str], skip_commits: set[str] | None = None
    ) -> tuple[list[dict], list[Path]]:
        """Rows (the ``columns`` a part has) of every readable part (but those of ``skip_commits``),
        and the parts that could not be read."""
        rows: list[dict] = []
        bad: list[Path] = []
        for part in self.parts(table):
            if skip_commits and commit_of(part) in skip_commits:
                continue
            try:
                present = [c for c in columns if c in pq.read_schema(part).names]
                rows.extend(pq.read_table(part, columns=present).to_pylist())
            except UNREADABLE:
                bad.append(part)
        return rows, bad

    def recorded(self) -> dict[str, dict]:
        """variant_id -> its runs row's status, metrics_id and error (the newest row if ever two)."""
        rows, _ = self.read_column_values(
            "runs", ["variant_id", "status", "metrics_id", "error", "finished_at"]
        )
        return {r["variant_id"]: r for r in rows}

    def finished_ids(self) -> set[str]:
        return {vid for vid, r in self.recorded().items() if r["status"] in FINISHED}

    def recorded_ids(self) -> dict[str, str]:
        """variant_id -> status of the latest row for it."""
        return {vid: r["status"] for vid, r in self.recorded().items()}

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> Recovery:
        """Bring the directory back to its invariants after any crash; run before every write
        session (under the lock). Idempotent; on a clean directory it only reads."""
        report = Recovery()
        if not self.root.is_dir():
            return report
        report.quarantined = self.quarantine_unreadable()
        report.journals = self._finish_journals()
        report.removed = self.drop_uncommitted()
        return report

    def drop_uncommitted(self) -> int:
        """Remove parts (and temporary files) left by a write that never reached its ``runs`` or
        ``passes`` part."""
        if not self.root.is_dir():
            return 0
        committed = set(self.commits()) | set(self.pass_commits())
        removed = 0
        for table in self.tables():
            directory = self.table_dir(table)
            for tmp in directory.glob(".part-*.tmp"):
                self._remove(tmp)
                removed += 1
            if table in SELF_COMMITTED:
                continue
            for part in self.parts(table):
                if commit_of(part) not in committed:
                    self._remove(part)
                    removed += 1
        return removed

    def quarantine_unreadable(self) -> list[str]:
        """Move every commit with an unreadable part (any table) to ``quarantine/``."""
        bad = self.unreadable_commits()
        return [self._quarantine(commit, reason) for commit, reason in sorted(bad.items())]

    def unreadable_commits(self) -> dict[str, str]:
        """Commits with an unreadable part in any table -> the first such part and its error.
        Runs parts are read whole; other tables' footers and id columns (cheap, and what a
        reader needs)."""
        bad: dict[str, str] = {}
        for table in self.tables():
            for part in self.parts(table):
                try:
                    with pq.ParquetFile(part) as f:
                        cols = (
                            None
                            if table == "runs"
                            else [c for c in ID_COLUMNS if c in f.schema_arrow.names]
                        )
                        f.read(columns=cols)
                except UNREADABLE as exc:
                    bad.setdefault(
                        commit_of(part),
                        f"{table}/{part.name}: {type(exc).__name__}: {str(exc)[:200]}",
                    )
        return bad

    def _quarantine(self, commit: str, reason: str) -> str:
        runs = self.table_dir("runs") / part_name(commit)
        if not runs.exists() and (self.table_dir(PASSES) / part_name(commit)).exists():
            outcome = "a post-training pass's rows, measured again by the next run"
        else:
            try:
                outcome = f"{pq.read_metadata(runs).num_rows} variants run again"
            except UNREADABLE:
                outcome = "its variants (runs part unreadable or missing) run again"
        for table in self.tables():
            part = self.table_dir(table) / part_name(commit)
            if part.exists():
                target = self.root / QUARANTINE / table / part.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
        return f"commit {commit} ({reason}); {outcome}"

    def quarantined(self) -> list[Path]:
        return sorted((self.root / QUARANTINE).glob("*/*.parquet"))

    # --- journaled operations -----------------------------------------------------------
    def _journal_path(self, name: str) -> Path:
        return self.root / f".journal-{name}.json"

    def _write_journal(self, name: str, entry: dict) -> Path:
        path = self._journal_path(name)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(entry, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def pending_journals(self) -> list[Path]:
        return sorted(self.root.glob(".journal-*.json")) if self.root.is_dir() else []

    def _finish_journals(self) -> list[str]:
        done = []
        # a journal still .tmp never became one: nothing was changed under it
        for tmp in self.root.glob(".journal-*.json.tmp"):
            self._remove(tmp)
        for path in self.pending_journals():
            entry = json.loads(path.read_text())
            if entry["op"] == "supersede":
                self._drop_rows(set(entry["variant_ids"]))
                done.append(f"replacement of {len(entry['variant_ids'])} variants' rows")
            elif entry["op"] == "compact":
                forward = (self.table_dir("runs") / part_name(entry["commit"])).exists()
                doomed = entry["replaces"] if forward else [entry["commit"]]
                self._remove_commits(doomed)
                done.append(f"compaction ({'completed' if forward else 'rolled back'})")
            else:
                raise ValueError(f"{path}: unknown journal operation {entry['op']!r}")
            self._remove(path)
        return done

    def rows_of(self, table: str, variant_ids: Iterable[str]) -> list[dict]:
        """Every row of ``table`` that names one of these variants."""
        value_set = pa.array(sorted(set(variant_ids)), type=pa.string())
        rows: list[dict] = []
        for part in self.parts(table):
            arrow = pq.read_table(part)
            rows += arrow.filter(_rows_naming(arrow, value_set)).to_pylist()
        return rows

    def supersede(self, variant_ids: Iterable[str]) -> int:
        """Remove every row of these variants from every table (they are about to run again),
        under a journal: a crash part-way is finished on the next :meth:`recover`. Returns the
        number of runs rows removed."""
        ids = set(variant_ids)
        if not ids:
            return 0
        journal = self._write_journal("supersede", {"op": "supersede", "variant_ids": sorted(ids)})
        removed = self._drop_rows(ids)
        self._remove(journal)
        return removed

    def _drop_rows(self, ids: set[str]) -> int:
        """Rewrite (atomically) or delete every part holding rows of ``ids``; other tables first,
        runs last. Returns the runs rows removed."""
        value_set = pa.array(sorted(ids), type=pa.string())
        removed_runs = 0
        for table in sorted(self.tables(), key=lambda t: t == "runs"):
            for part in self.parts(table):
                cols = [c for c in ID_COLUMNS if c in pq.read_schema(part).names]
                if not pc.any(_rows_naming(pq.read_table(part, columns=cols), value_set)).as_py():
                    continue
                arrow = pq.read_table(part)
                keep = arrow.filter(pc.invert(_rows_naming(arrow, value_set)))
                if table == "runs":
                    removed_runs += len(arrow) - len(keep)
                if len(keep):
                    self._atomic_write(keep, part)
                else:
                    self._remove(part)
        return removed_runs

    def _remove_commits(self, commits: Iterable[str]) -> None:
        """Delete these commits' parts in every table (other tables first, runs last)."""
        for table in sorted(self.tables(), key=lambda t: t == "runs"):
            for commit in commits:
                self._remove(self.table_dir(table) / part_name(commit))

    def compact(self, max_rows: int = COMPACT_ROWS) -> tuple[int, int]:
        """Merge committed pack writes into commits of up to ``max_rows`` runs rows each, with the
        same rows in every table. Per merged commit: journal (naming the new commit and those it
        replaces), write the new parts (runs last), delete the old ones, delete the journal. A
        crash before the new runs part exists rolls back; after, rolls forward. Returns the
        number of commits before and after."""
        commits = self.commits()
        batches: list[list[str]] = [[]]
        rows = 0
        for commit in commits:
            n = pq.read_metadata(self.table_dir("runs") / part_name(commit)).num_rows
            if batches[-1] and rows + n > max_rows:
                batches.append([])
                rows = 0
            batches[-1].append(commit)
            rows += n
        for batch in batches:
            if len(batch) > 1:
                self._compact_batch(batch)
        for table in self.tables():
            self.harmonize(table)
        return len(commits), len(self.commits())

    def _compact_batch(self, batch: list[str]) -> str:
        commit = new_commit_id()
        journal = self._write_journal(
            f"compact-{commit}", {"op": "compact", "commit": commit, "replaces": batch}
        )
        for table in sorted(self.tables(), key=lambda t: t == "runs"):
            parts = [p for c in batch if (p := self.table_dir(table) / part_name(c)).exists()]
            if not parts:
                continue
            pieces = [pq.read_table(p) for p in parts]
            union = _union_schema(t.schema for t in pieces)
            merged = pa.concat_tables([_conform(t, union) for t in pieces])
            self._atomic_write(merged, self.table_dir(table) / part_name(commit))
        self._remove_commits(batch)
        self._remove(journal)
        return commit

    # --- manifest -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict | None:
        """The manifest, None when there is none; ConfigError (one line) when it is damaged."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{self.manifest_path} is damaged (truncated or not JSON: {exc}); the Parquet "
                "tables beside it are intact: move it aside and run the sweep's command again, "
                "which writes a new one (without checking that command's base config against "
                "the old one)"
            ) from None
        if not isinstance(manifest, dict):
            raise ConfigError(
                f"{self.manifest_path} is damaged (a JSON object expected, got "
                f"{type(manifest).__name__}); move it aside and run the sweep's command again"
            )
        return manifest

    def write_manifest(self, manifest: dict, unless_only: tuple[str, ...] = ()) -> bool:
        """Write atomically, with ``schemas``: each table's column types as its parts have them
        (kept from the manifest for tables this Store has not written), and the catalogue's
        ``tables`` (each table's columns) from them. The file is left as it is when it differs
        from ``manifest`` in the keys ``unless_only`` alone (a command that trains nothing
        leaves the directory as it found it, so the report sees no change). Returns whether it
        was written."""
        schemas = dict(manifest.get("schemas") or {})
        schemas.update({t: schema_record(schema) for t, schema in self._schemas.items()})
        manifest = {**manifest, "schemas": schemas}
        if isinstance(manifest.get("catalogue"), dict):
            manifest["catalogue"] = {**manifest["catalogue"], "tables": table_columns(schemas)}
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        if unless_only and self.manifest_path.exists():
            try:
                current = json.loads(self.manifest_path.read_text())
            except (ValueError, UnicodeDecodeError):
                current = None  # damaged: written again
            if isinstance(current, dict):
                new = json.loads(text)
                for key in unless_only:
                    current.pop(key, None)
                    new.pop(key, None)
                if new == current:
                    return False
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".manifest.json.tmp"
        try:
            tmp.write_text(text)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.manifest_path)
        return True


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


INSTALLED = "installed from a wheel or sdist: no git commit recorded"


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` for uncommitted changes) when it runs from a
    git checkout that tracks it; else the package version, said to be an installed package
    (a wheel in a virtual environment inside some other checkout is not that checkout's code)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", Path(__file__).name)  # this file is tracked here
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain")
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        try:
            version = metadata.version(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return f"{version} ({INSTALLED})"
