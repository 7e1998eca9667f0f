import pandas as pd
import pyarrow.parquet as pq

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
    Store(tmp_path / "sweep").write_part("runs", [{"variant_id": "b", "status": "ok", "hessian_trace": 2.5}], commit="2")
    # pyarrow takes the first part's schema: the metric column would be dropped
    assert "hessian_trace" not in pd.read_parquet(store.table_dir("runs")).columns
    assert store.harmonize("runs") == 2
    df = pd.read_parquet(store.table_dir("runs")).set_index("variant_id")
    assert df.loc["b", "hessian_trace"] == 2.5 and pd.isna(df.loc["a", "hessian_trace"])
    assert store.harmonize("runs") == 0


def test_pack_write_is_committed_by_its_runs_part(tmp_path):
    store = Store(tmp_path / "sweep")
    store.write_pack({"runs": [{"variant_id": "a", "status": "ok"}], "curves": [{"variant_id": "a", "epoch": 0}]})
    # a driver killed after writing curves but before runs leaves an orphan part
    store.write_part("curves", [{"variant_id": "b", "epoch": 0}], commit="orphan")
    assert store.drop_uncommitted() == 1
    curves = pd.read_parquet(store.table_dir("curves"))
    assert curves.variant_id.tolist() == ["a"]
    names = {p.name for p in store.parts("runs")} | {p.name for p in store.parts("curves")}
    assert len(names) == 1  # one commit id names the pack's part in every table
    assert pq.read_table(store.parts("runs")[0]).num_rows == 1
