from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.load import read_table
from sweeps.store import Store


def test_parts_are_atomic_and_readable_by_pandas(tmp_path):
    store = Store(tmp_path / "sweep")
    store.write_part("runs", [{"variant_id": "a", "status": "ok", "x": 1.0}])
    store.write_part("runs", [{"variant_id": "b", "status": "failed", "error": "boom"}])
    (store.table_dir("runs") / ".part-half.parquet.tmp").write_bytes(b"PAR1 half a file")
    df = pd.read_parquet(store.table_dir("runs"))
    assert sorted(df.variant_id) == ["a", "b"]
    assert store.finished_ids() == {"a"}
    assert store.recorded_ids() == {"a": "ok", "b": "failed"}


def test_harmonize_makes_every_column_visible_to_pandas(tmp_path):
    store = Store(tmp_path / "sweep")
    store.write_part("runs", [{"variant_id": "a", "status": "failed", "error": "boom"}], commit="1")
    Store(tmp_path / "sweep").write_part(
        "runs", [{"variant_id": "b", "status": "ok", "hessian_trace": 2.5}], commit="2"
    )
    # pyarrow takes the first part's schema: the second write gave the first part the new
    # column, so pandas sees it at once, and there is nothing left to harmonise
    df = pd.read_parquet(store.table_dir("runs")).set_index("variant_id")
    assert df.loc["b", "hessian_trace"] == 2.5 and pd.isna(df.loc["a", "hessian_trace"])
    assert store.harmonize("runs") == 0


def test_pack_write_is_committed_by_its_runs_part(tmp_path):
    store = Store(tmp_path / "sweep")
    store.write_pack(
        {"runs": [{"variant_id": "a", "status": "ok"}], "curves": [{"variant_id": "a", "epoch": 0}]}
    )
    # a driver killed after writing curves but before runs leaves an orphan part
    store.write_part("curves", [{"variant_id": "b", "epoch": 0}], commit="orphan")
    assert store.drop_uncommitted() == 1
    curves = pd.read_parquet(store.table_dir("curves"))
    assert curves.variant_id.tolist() == ["a"]
    names = {p.name for p in store.parts("runs")} | {p.name for p in store.parts("curves")}
    assert len(names) == 1  # one commit id names the pack's part in every table
    assert pq.read_table(store.parts("runs")[0]).num_rows == 1


def test_a_pass_write_is_committed_by_its_passes_part(tmp_path):
    store = Store(tmp_path / "sweep")
    store.write_pack({"runs": [{"variant_id": v, "status": "ok"} for v in "abc"]})
    commit = store.write_pass(
        {"pairs": [{"variant_a": "a", "variant_b": "c", "l2_distance": 1.0}]}, "group_pairs"
    )
    # a driver killed after the pairs part of a pass but before its passes part
    store.write_part("pairs", [{"variant_a": "b", "variant_b": "c"}], commit="orphan")
    assert store.drop_uncommitted() == 1
    pairs = pd.read_parquet(store.table_dir("pairs"))
    assert list(zip(pairs.variant_a, pairs.variant_b)) == [("a", "c")]
    assert store.pass_commits() == [commit]
    record = pd.read_parquet(store.table_dir("passes")).iloc[0]
    assert record.kind == "group_pairs" and record.commit == commit
    assert store.write_pass({"pairs": []}, "group_pairs") is None  # nothing to write
    # rerunning a variant drops the pass's rows that name it, like any other row of it
    store.supersede({"c"})
    assert not store.parts("pairs")
    # a damaged part of a pass goes to quarantine with its record, and says what happens next
    commit = store.write_pass({"pairs": [{"variant_a": "a", "variant_b": "b"}]}, "group_pairs")
    (store.table_dir("pairs") / f"part-{commit}.parquet").write_bytes(b"PAR1 damaged")
    [line] = store.quarantine_unreadable()
    assert line.endswith("a post-training pass's rows, measured again by the next run")
    assert commit not in store.pass_commits()
    with pytest.raises(ValueError, match="a pass writes no runs rows"):
        store.write_pass({"runs": [{"variant_id": "d"}]}, "group_pairs")


# --- crash safety: every write step of a journaled operation may be the last -------------------


class Crash(Exception):
    pass


def _pack(ids, metric=None, extra=None):
    runs = [
        {"variant_id": v, "status": "ok", "metrics_id": "m1", "train_loss": 0.5, **(extra or {})}
        for v in ids
    ]
    if metric:
        for row in runs:
            row[metric] = 1.0
    curves = [
        {"variant_id": v, "epoch": e, "train_loss": 1.0 / (e + 1)} for v in ids for e in range(3)
    ]
    pairs = [
        {"group_id": "g", "variant_a": a, "variant_b": b, "distance": 2.0}
        for a in ids
        for b in ids
        if a < b
    ]
    return {"runs": runs, "curves": curves, "pairs": pairs}


def _filled_store(root):
    store = Store(root)
    store.write_pack(_pack(["a", "b"]))
    store.write_pack(_pack(["c", "d"], metric="hessian_trace"))
    store.write_pack(_pack(["e"], extra={"error": None}))
    store.write_pack(
        {"runs": [{"variant_id": "f", "status": "failed", "metrics_id": "m1", "error": "boom"}]}
    )
    for table in store.tables():
        store.harmonize(table)
    return store


def _contents(root):
    """Every table as a sorted frame (rows and columns in a fixed order)."""
    out = {}
    for table in ("runs", "curves", "pairs"):
        df = read_table(Path(root) / table)
        if df is None:
            out[table] = None
            continue
        df = df[sorted(df.columns)]
        out[table] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _crash_after(monkeypatch, n):
    """Make the n-th file write or removal (0-based) raise Crash, like a SIGKILL there."""
    calls = {"n": 0}
    real_write, real_remove = Store._atomic_write, Store._remove

    def step(real):
        def wrapped(*args):
            if calls["n"] == n:
                raise Crash
            calls["n"] += 1
            return real(*args)

        return staticmethod(wrapped)

    monkeypatch.setattr(Store, "_atomic_write", step(real_write))
    monkeypatch.setattr(Store, "_remove", step(real_remove))


def _without(contents, ids):
    out = {}
    for table, df in contents.items():
        mask = pd.Series(False, index=df.index)
        for col in ("variant_id", "variant_a", "variant_b"):
            if col in df:
                mask |= df[col].isin(ids)
        kept = df[~mask].reset_index(drop=True)
        out[table] = kept if len(kept) else None  # a table whose every part went is no table
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for table in a:
        if a[table] is None or b[table] is None:
            assert a[table] is None and b[table] is None, table
        else:
            pd.testing.assert_frame_equal(a[table], b[table])


def test_compaction_keeps_every_row_and_a_crash_at_any_step_loses_or_doubles_none(
    tmp_path, monkeypatch
):
    reference = _contents(_filled_store(tmp_path / "reference").root)
    steps = 0
    while True:
        root = tmp_path / f"crash-{steps}"
        _filled_store(root)
        with monkeypatch.context() as m:
            _crash_after(m, steps)
            try:
                Store(root).compact()
                finished = True
            except Crash:
                finished = False
        Store(root).recover()  # the next driver (or compact) starts with this
        _assert_same(_contents(root), reference)
        if finished:
            break
        steps += 1
    assert steps >= 6  # journal, 3 tables written, 4 commits removed: every step was a crash point
    store = Store(root)
    assert len(store.commits()) == 1 and {t: len(store.parts(t)) for t in store.tables()} == {
        "runs": 1,
        "curves": 1,
        "pairs": 1,
    }
    assert not store.pending_journals()
    assert store.compact() == (1, 1)  # nothing left to merge


def test_compaction_respects_max_rows(tmp_path):
    store = _filled_store(tmp_path / "s")
    reference = _contents(store.root)
    assert store.compact(max_rows=2) == (4, 3)  # [a b] [c d] [e f]: the first two are full already
    _assert_same(_contents(store.root), reference)


def test_replacing_rows_is_all_or_nothing_across_a_crash(tmp_path, monkeypatch):
    reference = _contents(_filled_store(tmp_path / "reference").root)
    replaced = _without(reference, {"b", "d", "f"})
    steps = 0
    while True:
        root = tmp_path / f"crash-{steps}"
        _filled_store(root)
        with monkeypatch.context() as m:
            _crash_after(m, steps)
            try:
                Store(root).supersede({"b", "d", "f"})
                finished = True
            except Crash:
                finished = False
        Store(root).recover()
        _assert_same(_contents(root), replaced)  # the journal was written first: it rolls forward
        if finished:
            break
        steps += 1
    assert steps >= 5
    assert Store(root).recorded_ids() == {"a": "ok", "c": "ok", "e": "ok"}


def test_unreadable_parts_take_their_commit_to_quarantine(tmp_path):
    store = _filled_store(tmp_path / "s")
    first, second = store.commits()[:2]
    (store.table_dir("runs") / f"part-{first}.parquet").write_bytes(b"PAR1 not really")
    pairs = store.table_dir("pairs") / f"part-{second}.parquet"
    pairs.write_bytes(pairs.read_bytes()[:-20])  # truncated: the footer is gone
    report = Store(store.root).recover()
    assert len(report.quarantined) == 2
    assert (
        "runs part unreadable" in report.quarantined[0]
        and "2 variants run again" in report.quarantined[1]
    )
    assert Store(store.root).recorded_ids() == {"e": "ok", "f": "failed"}
    # runs, curves and pairs of both commits, moved, not deleted
    assert len(store.quarantined()) == 6
    assert Store(store.root).recover().lines() == []  # and now the directory is clean


def _part_schemas(store, table):
    return {str(pq.read_schema(p).remove_metadata()) for p in store.parts(table)}


def test_every_part_has_the_tables_schema_at_every_moment(tmp_path):
    """A knob that is null in one pack and an integer in the next (``data.sample_seed``), an
    integer column that turns fractional, a column that appears later: after each write every
    part has one schema, which the manifest records, so any reader reads the table mid-sweep."""
    import pyarrow.dataset as ds

    store = Store(tmp_path / "sweep")
    store.write_manifest({"sweep": "demo"})
    packs = [
        [{"variant_id": "a", "data.sample_seed": None, "x": 1, "status": "ok"}],
        [{"variant_id": "b", "data.sample_seed": 0, "x": 2, "status": "ok"}],
        [{"variant_id": "c", "data.sample_seed": 1, "x": 2.5, "status": "ok", "y": 3.0}],
    ]
    for rows in packs:
        store.write_pack({"runs": rows})
        assert len(_part_schemas(store, "runs")) == 1
        ds.dataset(store.table_dir("runs"), format="parquet").to_table()  # no schema clash
    table = pq.read_table(store.table_dir("runs"))
    assert table.schema.field("data.sample_seed").type == pa.float64()  # null first: kept
    assert table.schema.field("x").type == pa.float64()  # int64 promoted when 2.5 came
    assert table.column("x").to_pylist() == [1.0, 2.0, 2.5]
    assert table.column("y").to_pylist() == [None, None, 3.0]
    recorded = Store(store.root).read_manifest()["schemas"]["runs"]
    assert recorded["x"] == "double" and recorded["y"] == "double"
    assert recorded["variant_id"] == "string"


def test_a_new_store_on_disagreeing_parts_brings_them_to_one_schema_before_writing(tmp_path):
    """Parts written before this rule (an int64 part beside a double one) are harmonised when
    the next write session first writes the table."""
    root = tmp_path / "sweep"
    (root / "runs").mkdir(parents=True)
    pq.write_table(pa.table({"variant_id": ["a"], "k": [1]}), root / "runs" / "part-1.parquet")
    pq.write_table(pa.table({"variant_id": ["b"], "k": [0.5]}), root / "runs" / "part-2.parquet")
    store = Store(root)
    store.write_pack({"runs": [{"variant_id": "c", "k": 3}]})
    assert _part_schemas(store, "runs") == {"variant_id: string\nk: double"}
