"""The HTML report: figures for every table present, none for absent ones, images load."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from .fake_results import PLANTED

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _pngs(page: Path) -> set[str]:
    return {p.name for p in page.parent.glob("*.png")}


def test_report_opens_with_the_phase_diagram_and_summary(full_report):
    html = full_report.read_text()
    first_h2 = re.search(r"<h2[^>]*>(.*?)</h2>", html).group(1)
    assert first_h2 == "Phase diagram"
    first_img = re.search(r"data-file='([^']+)'", html).group(1)
    assert first_img == "phase_diagram_0.png"
    assert "Per phase (mean over cells)" in html and "IV-B" in html


def test_every_table_present_gets_its_figures(full_report):
    expected = {
        "phase_diagram_0.png",
        "phase_panels_0.png",
        "correlations.png",
        "curves.png",
        "lr_range.png",
        "surface_1d.png",
        "surface_2d.png",
        "surface_3d.png",
        "path_mli.png",
        "path_interpolation.png",
        "path_bezier.png",
        "stiffness.png",
        "spectra.png",
        "heatmap_hessian_trace.png",
        "heatmap_mc.png",
        "heatmap_cka_linear_softmax.png",
    }
    assert expected <= _pngs(full_report)
    # Every PNG is embedded, so the page stands alone.
    html = full_report.read_text()
    assert html.count("src='data:image/png;base64,") == len(_pngs(full_report))
    assert "src='heatmap" not in html


def test_absent_tables_and_metrics_get_no_figures(minimal_report):
    pngs = _pngs(minimal_report)
    assert {"phase_diagram_0.png", "phase_panels_0.png", "curves.png"} <= pngs
    absent = {
        "lr_range",
        "surface_1d",
        "surface_2d",
        "path_mli",
        "stiffness",
        "spectra",
        "heatmap_hessian_trace",
        "heatmap_mc",
        "heatmap_cka_linear_softmax",
    }
    assert not {p.removesuffix(".png") for p in pngs} & absent


def test_cells_csv_carries_the_planted_phases(full_report):
    cells = pd.read_csv(full_report.parent / "cells.csv")
    got = {
        (w, b): p
        for w, b, p in zip(cells["model.width"], cells["optim.batch_size"], cells["phase"])
    }
    assert got == PLANTED
    assert (full_report.parent / "correlations.csv").is_file()
    assert (full_report.parent / "correlations.html").is_file()


def test_the_literature_claims_the_sweep_tests_are_reported(full_report, minimal_report):
    claims = pd.read_csv(full_report.parent / "claims.csv")
    # the planted sweep varies batch size and carries a Hessian trace: Keskar's claim applies
    assert "small_batch_flatter_trace" in set(claims["claim"])
    assert set(claims["verdict"]) <= {"reproduced", "contradicted", "inconclusive"}
    assert "Does it reproduce the literature?" in full_report.read_text()
    # width 4's cells are all unfitted: the trace claim leaves them out and says so
    note = claims.set_index("claim").at["small_batch_flatter_trace", "note"]
    assert note.startswith("5 of 16 cells not fitted")
    assert html.escape(note, quote=False) in full_report.read_text()
    # runs without local metrics test no claim about them: no section, no file
    assert "Does it reproduce the literature?" not in minimal_report.read_text()
    assert not (minimal_report.parent / "claims.csv").exists()


_CHECK = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = "IMAGES " + imgs.length + " BROKEN " + bad.length + " [" + bad.join("|") + "]";
  document.body.appendChild(out);
});
</script>
</body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_every_image_loads_in_headless_chromium(full_report, tmp_path):
    page = tmp_path / "check.html"
    page.write_text(full_report.read_text().replace("</body>", _CHECK))
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r"IMAGES (\d+) BROKEN (\d+) \[(.*?)\]", dom)
    assert found, f"the check script did not run; chromium printed {dom[:300]!r}"
    total, broken, which = int(found.group(1)), int(found.group(2)), found.group(3)
    assert total == len(_pngs(full_report)) and broken == 0, which


def test_the_report_page_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails part-way (a full disk) leaves the previous page whole, and no
    temporary file."""
    from analysis import report

    page = tmp_path / "index.html"
    page.write_text("<html>the previous report</html>")

    def full_disk(self, text):
        Path.write_bytes(self, text[:10].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        report._write_atomically(page, "<html>" + "x" * 1000 + "</html>")
    monkeypatch.undo()
    assert page.read_text() == "<html>the previous report</html>"
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_the_report_is_the_same_drawn_by_one_process_or_several(tmp_path):
    """Every file of the report (PNGs, CSVs, index.html) is byte-identical whether its
    figures are drawn here or by forked workers: the same code draws the same data on Agg,
    whose PNGs carry no date, so only a drawing that depended on the order or the process
    (shared random state, a figure left open) would differ."""
    from analysis.load import load_results
    from analysis.report import ReportOptions, _workers, build_report

    from .conftest import REPORT_METRICS
    from .fake_results import write_results

    if _workers(2, 2) < 2:
        pytest.skip("processes cannot be forked here: the report is drawn by one")
    results = load_results(write_results(tmp_path / "fake", local_metrics=REPORT_METRICS))
    files = {}
    for jobs in (1, 2):
        out = build_report(results, tmp_path / f"jobs{jobs}", ReportOptions(jobs=jobs)).parent
        files[jobs] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert files[1].keys() == files[2].keys() and len(files[1]) > 10
    assert [n for n in files[1] if files[1][n] != files[2][n]] == []
