"""The tour notebook runs top to bottom on a generated results directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parents[2] / "analysis" / "tour.ipynb"


def test_tour_notebook_executes(results_dir, monkeypatch):
    """As ``LANDSCAPE_RESULTS=results/demo jupyter notebook analysis/tour.ipynb`` runs it: the
    kernel in the notebook's folder, the results path relative to the repository root."""
    monkeypatch.setenv("LANDSCAPE_RESULTS", os.path.relpath(results_dir, NOTEBOOK.parents[1]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # where Jupyter starts it
    )
    client.execute()  # raises CellExecutionError with the failing cell on any error
    text = "".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "IV-B" in text  # the phase table was shown
    assert (
        sum(
            1
            for c in notebook.cells
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        )
        >= 3
    )
