"""Loading a results directory: tables, absent tables, temporary parts, axes."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from analysis.load import ResultsError, load_results, read_table

from .fake_results import write_results


def test_loads_every_table_and_skips_temporary_parts(results_dir):
    results = load_results(results_dir)
    # 16 cells x 3 seeds, written as two parts next to a dot-named corrupt temporary part.
    assert len(results.runs) == 48
    assert set(results.tables()) == {
        "runs",
        "curves",
        "pairs",
        "surfaces",
        "spectra",
        "stiffness",
        "lr_range",
    }
    assert results.manifest["sweep"] == "fake"
    assert results.axes["model.width"] == [4, 8, 16, 32]


def test_absent_tables_are_none(minimal_dir):
    results = load_results(minimal_dir)
    assert results.pairs is None and results.surfaces is None and results.lr_range is None
    assert results.curves is not None


def test_parts_with_different_columns_are_concatenated(tmp_path):
    # A newer part carries a metric the older one lacks: the column must survive.
    pd.DataFrame({"variant_id": ["a"], "x": [1.0]}).to_parquet(tmp_path / "part-0.parquet")
    pd.DataFrame({"variant_id": ["b"], "x": [2.0], "new": [3.0]}).to_parquet(
        tmp_path / "part-1.parquet"
    )
    table = read_table(tmp_path)
    assert list(table["variant_id"]) == ["a", "b"]
    assert table["new"].isna().tolist() == [True, False]


def test_analysis_axes_from_manifest_and_overrides(results_dir):
    results = load_results(results_dir)
    assert results.analysis_axes() == ("optim.batch_size", "model.width")
    assert results.analysis_axes(temperature="seed") == ("seed", "model.width")
    with pytest.raises(ResultsError, match="'nope'"):
        results.analysis_axes(load="nope")


def test_axes_are_guessed_without_manifest(tmp_path):
    root = write_results(tmp_path / "r", tables=("runs",))
    (root / "manifest.json").unlink()
    results = load_results(root)
    assert set(results.axes) == {"model.width", "optim.batch_size", "seed"}
    assert results.analysis_axes() == ("optim.batch_size", "model.width")


def test_missing_directory_and_missing_runs_name_the_path(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no runs table"):
        load_results(tmp_path / "empty")


def test_bad_manifest_is_named(tmp_path):
    root = write_results(tmp_path / "r", tables=("runs",))
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(ResultsError, match="manifest.json"):
        load_results(root)


def test_num_classes_from_the_catalogue_record_of_the_data_set(results_dir):
    results = load_results(results_dir)
    assert results.catalogue["data"]["digits"]["classes"] == 10
    assert results.num_classes() == 10
    # the fake's class-stiffness matrices have 4 classes: the catalogue wins over labels
    assert results.stiffness["class_a"].max() == 3


def _rewrite_runs(root, runs: pd.DataFrame) -> None:
    for part in (root / "runs").glob("part-*.parquet"):
        part.unlink()
    runs.to_parquet(root / "runs" / "part-00000.parquet")


def _set_manifest(root, **changes) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_num_classes_of_synthetic_data_from_the_knob_its_record_names(tmp_path):
    root = write_results(tmp_path / "r", tables=("runs",), local_metrics=())
    runs = load_results(root).runs
    # every data set carries the (meaningless) synthetic default: the record decides
    _rewrite_runs(root, runs.assign(**{"data.n_classes": 4}))
    assert load_results(root).num_classes() == 10
    _rewrite_runs(root, runs.assign(**{"data.name": "synthetic", "data.n_classes": 4}))
    synthetic = {"classes": "data.n_classes", "input_shape": ["data.n_features"]}
    _set_manifest(root, catalogue={"data": {"synthetic": synthetic}})
    assert load_results(root).num_classes() == 4


def test_num_classes_of_results_written_before_the_catalogue(tmp_path):
    # no catalogue: the config's data.n_classes where the data set's config declares it (a
    # synthetic sweep's), else the class-stiffness labels, else unknown
    root = write_results(tmp_path / "r", tables=("runs", "stiffness"), catalogue=False)
    assert "catalogue" not in load_results(root).manifest
    assert load_results(root).num_classes() == 4  # the fake's matrices: classes 0 .. 3
    (root / "stiffness").rename(root / "no-stiffness")
    assert load_results(root).num_classes() is None
    runs = load_results(root).runs.assign(**{"data.name": "synthetic", "data.n_classes": 3})
    _rewrite_runs(root, runs)
    _set_manifest(root, config={"data": {"name": "synthetic", "n_classes": 3}})
    assert load_results(root).num_classes() == 3


def test_axes_are_inferred_with_list_valued_knobs(tmp_path):
    # No axes in the manifest (every knob fixed on the command line): inferred from the runs,
    # where list knobs such as optim.betas come back from Parquet as arrays.
    (tmp_path / "runs").mkdir()
    runs = pd.DataFrame(
        {
            "variant_id": ["a", "b", "c"],
            "seed": [0, 0, 0],
            "optim.betas": [[0.9, 0.999], [0.9, 0.999], [0.9, 0.999]],
            "optim.step_at": [[0.75], [0.5, 0.75], [0.75]],
            "model.width": [8, 8, 8],
            "status": ["ok"] * 3,
        }
    )
    runs.to_parquet(tmp_path / "runs" / "part-0.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"sweep": "fixed", "axes": {}}))
    assert load_results(tmp_path).axes == {"optim.step_at": [(0.5, 0.75), (0.75,)]}
    runs.assign(**{"optim.step_at": [[0.75]] * 3}).to_parquet(tmp_path / "runs" / "part-0.parquet")
    assert load_results(tmp_path).axes == {}


def _write(root, runs: pd.DataFrame, axes: dict, **tables) -> None:
    for name, frame in {"runs": runs, **tables}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / name / "part-0.parquet")
    (root / "manifest.json").write_text(json.dumps({"sweep": "s", "axes": axes}))


def _runs(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"variant_id": [f"v{i}" for i in range(n)], "status": ["ok"] * n}
    return pd.DataFrame({**base, **columns})


def test_a_group_axis_is_its_name_column_and_a_hidden_knob_becomes_an_axis(tmp_path):
    runs = _runs(
        **{
            "model.name": ["mlp", "mlp", "cnn", "cnn"],
            "seed": [0, 1, 0, 1],
            "train.epochs": [5, 10, 5, 5],  # varies inside a cell of the manifest's axes
            "train.pack_step": ["vmap", "loop", "vmap", "vmap"],  # a launch knob: never an axis
        }
    )
    _write(tmp_path, runs, {"model": ["mlp", "cnn"], "seed": [0, 1]})
    _set_manifest(tmp_path, catalogue={"knobs": {"launch": ["train.pack_step"]}})
    axes = load_results(tmp_path).axes
    assert list(axes) == ["model.name", "seed", "train.epochs"]


def test_before_the_catalogue_a_knob_varying_within_a_replicate_group_is_no_axis(tmp_path):
    # no catalogue: launch knobs are those that vary among the runs of one group_id (the seeds
    # of one point, here run with different pack steps); an identity knob never does
    runs = _runs(
        **{
            "group_id": ["g0", "g0", "g1", "g2"],
            "model.name": ["mlp", "mlp", "cnn", "cnn"],
            "seed": [0, 1, 0, 1],
            "train.epochs": [5, 5, 5, 10],  # varies inside a cell of the manifest's axes
            "train.pack_step": ["vmap", "loop", "vmap", "vmap"],
        }
    )
    _write(tmp_path, runs, {"model": ["mlp", "cnn"], "seed": [0, 1]})
    assert list(load_results(tmp_path).axes) == ["model.name", "seed", "train.epochs"]
    _write(tmp_path, runs.drop(columns="group_id"), {"model": ["mlp", "cnn"], "seed": [0, 1]})
    assert "train.pack_step" in load_results(tmp_path).axes  # nothing tells it apart


def test_list_knob_axes_group_like_any_other(tmp_path):
    from analysis.cells import aggregate_cells, cell_keys

    runs = _runs(
        **{
            "optim.betas": [[0.9, 0.999], [0.5, 0.999]] * 2,
            "optim.lr": [0.1, 0.1, 0.2, 0.2],
            "seed": [0, 0, 0, 0],
            "train_loss": [1.0, 2.0, 3.0, 4.0],
        }
    )
    _write(tmp_path, runs, {"optim.betas": [[0.9, 0.999], [0.5, 0.999]], "optim.lr": [0.1, 0.2]})
    results = load_results(tmp_path)
    assert cell_keys(results, "optim.lr", "optim.betas") == ["optim.lr", "optim.betas"]
    cells = aggregate_cells(results, "optim.lr", "optim.betas")
    assert len(cells) == 4 and set(cells["optim.betas"]) == {(0.9, 0.999), (0.5, 0.999)}


def test_duplicated_rows_count_once(tmp_path):
    runs = _runs(**{"optim.lr": [0.1, 0.2], "seed": [0, 0], "train_loss": [1.0, 2.0]})
    runs["finished_at"] = ["2026-01-01T00:00:00", "2026-01-01T00:00:00"]
    newer = runs.iloc[[0]].assign(train_loss=5.0, finished_at="2026-01-02T00:00:00")
    curves = pd.DataFrame({"variant_id": ["v0", "v1"], "epoch": [1, 1], "train_loss": [1.0, 2.0]})
    _write(tmp_path, pd.concat([runs, newer, runs.iloc[[1]]]), {"optim.lr": [0.1, 0.2]},
           curves=pd.concat([curves, curves]))  # fmt: skip
    (tmp_path / ".journal-abc.json").write_text("{}")  # an interrupted compaction
    with pytest.warns(UserWarning, match="unfinished store operation"):
        results = load_results(tmp_path)
    assert sorted(results.runs["variant_id"]) == ["v0", "v1"]
    assert results.runs.set_index("variant_id")["train_loss"].to_dict() == {"v0": 5.0, "v1": 2.0}
    assert len(results.curves) == 2


def test_a_table_the_catalogue_names_and_results_has_no_attribute_for_is_loaded(tmp_path):
    """A new metric's own table reaches the analysis with no change to the loader."""
    root = write_results(tmp_path / "r", tables=("runs",), local_metrics=())
    (root / "echoes").mkdir()
    frame = pd.DataFrame({"variant_id": ["a", "b"], "echo": [1.0, 2.0]})
    frame.to_parquet(root / "echoes" / "part-0.parquet")
    assert "echoes" not in load_results(root).tables()  # not named: not read
    _set_manifest(root, catalogue={"tables": {"runs": [], "echoes": ["variant_id", "echo"]}})
    results = load_results(root)
    assert results.others["echoes"]["echo"].tolist() == [1.0, 2.0]
    assert "echoes" in results.tables()


def _truncate_a_runs_part(root) -> tuple[str, int]:
    """Cut the first runs part to half its bytes (a copy cut short); its name and row count."""
    part = sorted((root / "runs").glob("part-*.parquet"))[0]
    rows = len(pd.read_parquet(part))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    return part.name, rows


def test_a_truncated_part_is_skipped_with_a_warning_naming_it_and_the_repair(tmp_path):
    root = write_results(tmp_path / "r", tables=("runs", "curves"), local_metrics=())
    total = len(load_results(root).runs)
    name, rows = _truncate_a_runs_part(root)
    with pytest.raises(pa.ArrowInvalid):  # what a plain pandas read does with it
        pd.read_parquet(root / "runs")
    with pytest.warns(UserWarning) as caught:
        results = load_results(root)
    assert 0 < rows < total
    assert len(results.runs) == total - rows
    [message] = [str(w.message) for w in caught]
    assert name in message and "\n" not in message
    assert (
        "run the sweep's command again" in message and f"landscape-sweep status {root}" in message
    )
