"""The landscape-report command: output on good input, one-line errors on bad input."""

from __future__ import annotations

import pytest

from analysis import report
from analysis.report import main

from .fake_results import write_results


def test_report_writes_index_and_pngs(minimal_report):
    pngs = sorted(p.name for p in minimal_report.parent.glob("*.png"))
    assert pngs, "no figures written"
    page = minimal_report.read_text()
    assert page.count("data:image/png;base64,") == len(pngs)


def test_default_out_is_inside_results_and_printed(tmp_path, monkeypatch, capsys):
    root = write_results(tmp_path / "r", tables=("runs",), local_metrics=())
    written = {}

    def fake_build(results, out, opts):  # the layout is under test here, not the figures
        written.update(out=out, opts=opts)
        out.mkdir()
        (out / "index.html").write_text("")
        return out / "index.html"

    monkeypatch.setattr(report, "build_report", fake_build)
    assert report.main([str(root), "--cka-threshold", "0.5"]) == 0
    assert written["out"] == root / "report"
    assert written["opts"].thresholds.cka_threshold == 0.5
    assert str(root / "report" / "index.html") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("no_runs", "no runs table"),
        ("bad_axis", "'model.nope'"),
        ("bad_threshold", "mc_k must be finite and > 0, got -1.0"),
        ("out_is_file", "is not a directory"),
        ("bad_jobs", "--jobs must be >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(case, message, tmp_path, capsys):
    root = tmp_path / case
    args = [str(root)]
    if case == "no_runs":
        root.mkdir()
        (root / "curves").mkdir()
    if case == "bad_axis":
        write_results(root, tables=("runs",), local_metrics=())
        args += ["--load", "model.nope"]
    if case == "bad_threshold":
        write_results(root, tables=("runs",), local_metrics=())
        args += ["--mc-k", "-1"]
    if case == "bad_jobs":
        write_results(root, tables=("runs",), local_metrics=())
        args += ["--jobs", "0"]
    if case == "out_is_file":
        write_results(root, tables=("runs",), local_metrics=())
        (tmp_path / "file").write_text("x")
        args += ["--out", str(tmp_path / "file")]
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("landscape-report: error:")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_truncated_part_is_skipped_with_a_warning_and_the_report_written(tmp_path, capsys):
    from .test_load import _truncate_a_runs_part

    root = write_results(tmp_path / "r", tables=("runs", "curves"), local_metrics=())
    name, _ = _truncate_a_runs_part(root)
    assert main([str(root), "--out", str(tmp_path / "page")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landscape-report: warning: skipped unreadable part")
    assert name in err[0]
    assert (tmp_path / "page" / "index.html").is_file()


def test_an_unchanged_results_dir_is_not_redrawn_and_a_changed_one_is(
    tmp_path, monkeypatch, capsys
):
    root = write_results(tmp_path / "r", tables=("runs", "curves"), local_metrics=())
    drawn = []

    def fake_build(results, out, opts):  # the skip is under test here, not the figures
        drawn.append(len(results.runs))
        out.mkdir(exist_ok=True)
        (out / "index.html").write_text("")
        return out / "index.html"

    monkeypatch.setattr(report, "build_report", fake_build)
    assert main([str(root)]) == 0 and len(drawn) == 1
    assert main([str(root)]) == 0 and len(drawn) == 1  # nothing changed: not drawn again
    assert "report unchanged" in capsys.readouterr().out
    assert main([str(root), "--force"]) == 0 and len(drawn) == 2
    assert main([str(root), "--cka-threshold", "0.5"]) == 0 and len(drawn) == 3  # other options
    # A part added by a sweep (a new file in a table directory): drawn again.
    part = sorted((root / "runs").glob("part-*.parquet"))[0]
    (root / "runs" / "part-77777.parquet").write_bytes(part.read_bytes())
    assert main([str(root), "--cka-threshold", "0.5"]) == 0 and len(drawn) == 4
    assert main([str(root), "--cka-threshold", "0.5"]) == 0 and len(drawn) == 4
    # A part removed (as a quarantine moves one aside): drawn again.
    (root / "runs" / "part-77777.parquet").unlink()
    assert main([str(root), "--cka-threshold", "0.5"]) == 0 and len(drawn) == 5


def test_a_tau_that_is_zero_up_to_rounding_prints_as_0_and_small_metrics_keep_their_digits():
    import pandas as pd

    table = pd.DataFrame({"tau": [1.388e-17, -0.25, 1.0]})
    assert "<td>0</td>" in report._table_html(table, report.TAU_ZERO)
    assert "1.388e-17" not in report._table_html(table, report.TAU_ZERO)
    assert "<td>-0.25</td>" in report._table_html(table, report.TAU_ZERO)
    assert "1.388e-17" in report._table_html(table)  # other tables: a small value is a value
