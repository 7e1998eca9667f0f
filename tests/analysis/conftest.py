"""Fixtures: generated results directories (see fake_results.py) and a built report."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from analysis.load import load_results
from analysis.report import build_report, main

from .fake_results import write_results

matplotlib.use("Agg")

# Fewer local metrics than the default keep the report fixture quick (one heatmap each).
REPORT_METRICS = ("hessian_trace", "hessian_top_eig", "eps_sharpness")


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full results directory with every table and the planted phase map."""
    return write_results(tmp_path_factory.mktemp("results") / "fake")


@pytest.fixture(scope="session")
def minimal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only runs and curves, no local metrics beyond losses and accuracies."""
    return write_results(
        tmp_path_factory.mktemp("minimal") / "fake", tables=("runs", "curves"), local_metrics=()
    )


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html of a report over every table (built once per session)."""
    root = write_results(tmp_path_factory.mktemp("full") / "fake", local_metrics=REPORT_METRICS)
    return build_report(load_results(root), root / "report")


@pytest.fixture(scope="session")
def minimal_report(minimal_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html of a report over runs and curves only, written by the CLI with rule options."""
    out = tmp_path_factory.mktemp("minimal_report")
    assert main([str(minimal_dir), "--out", str(out), "--mc-k", "2", "--local-rule", "loss"]) == 0
    return out / "index.html"
