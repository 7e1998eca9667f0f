"""``landscape-report <dir> [--out DIR]``: a self-contained HTML report for one results directory.

The page opens with the phase diagram and a summary table (the phase rule's resolved
thresholds and per-phase means), then every figure the data supports: the classifier's
signal panels, heatmaps of every measured metric, correlations with generalisation,
training curves and the LR range test, loss surfaces and paths, stiffness matrices and
spectra, and what was measured during training (metrics and sharpness against step,
stiffness over training and by distance, the PCA path, loss change allocation, weights,
the reparametrisation probe). A figure whose table or metric is absent is left out, never
drawn empty.

Every figure is also saved as a PNG in the output directory (default ``<dir>/report``),
next to ``cells.csv`` (one row per cell, with its phase and the reason),
``correlations.csv`` / ``correlations.html``, when the probe ran, ``reparam.csv``, and when
the sweep tests a literature claim (:mod:`analysis.claims`), ``claims.csv``.
``index.html`` embeds the PNGs as base64, so the page alone can be copied or mailed.

Bad input (a missing directory, no runs table, an unknown axis, an invalid threshold)
prints one line naming the value and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.cells import aggregate_cells  # noqa: E402
from analysis.claims import evaluate_all  # noqa: E402
from analysis.columns import Shown, in_report_order  # noqa: E402
from analysis.correlations import (  # noqa: E402
    correlation_table,
    plot_correlations,
    small_sample_warnings,
)
from analysis.curves import (  # noqa: E402
    curve_axis,
    plot_lr_range,
    plot_training_curves,
    variant_labels,
    variant_order,
)
from analysis.grokking_figures import (  # noqa: E402
    has_grokking,
    pair_phase_table,
    plot_accuracy_by_cell,
    plot_aligned,
    plot_pair_map,
    plot_pairs_by_phase,
    plot_phase_map,
)
from analysis.heatmap import metric_heatmap, save_figure  # noqa: E402
from analysis.lca import plot_lca  # noqa: E402
from analysis.load import Results, ResultsError, load_results  # noqa: E402
from analysis.oneline import OneLineParser  # noqa: E402
from analysis.pca_path import plot_pca_path  # noqa: E402
from analysis.phase_diagram import plot_phase_diagram, plot_phase_panels, slices  # noqa: E402
from analysis.phases import (
    PHASE_MEANING,
    PHASE_ORDER,
    PhaseThresholds,
    classify_phases,
    threshold_options,
)  # noqa: E402
from analysis.reparam import TOLERANCE, reparam_summary  # noqa: E402
from analysis.stiffness import (  # noqa: E402
    final_stiffness,
    plot_stiffness_distance,
    plot_stiffness_stages,
)
from analysis.surfaces import (  # noqa: E402
    plot_cross,
    plot_paths,
    plot_spectra,
    plot_stiffness,
    plot_surface_1d,
    plot_surface_2d,
)
from analysis.training import plot_trajectory, trajectory_metrics  # noqa: E402
from analysis.weights import plot_weight_histograms, plot_weight_norms  # noqa: E402

MAX_SLICES = 6  # phase diagrams drawn for at most this many settings of extra axes


@dataclass
class Section:
    """A titled list of items in page order: HTML fragments (str) and figures (caption, PNG path)."""

    title: str
    items: list[str | tuple[str, Path]] = field(default_factory=list)

    def add(self, caption: str, fig: plt.Figure | None, path: Path) -> None:
        """Save ``fig`` as ``path`` and list it; a ``None`` figure (no data) is skipped."""
        if fig is not None:
            self.items.append((caption, save_figure(fig, path)))

    def add_html(self, fragment: str) -> None:
        self.items.append(fragment)

    @property
    def figures(self) -> list[tuple[str, Path]]:
        return [item for item in self.items if isinstance(item, tuple)]


@dataclass(frozen=True)
class ReportOptions:
    """What to draw: axes, phase thresholds, the curve overlay knob, log surfaces."""

    temperature: str | None = None
    load: str | None = None
    thresholds: PhaseThresholds = field(default_factory=PhaseThresholds)
    curves_by: str | None = None
    log_surfaces: bool = False
    max_variants: int = 4
    jobs: int | None = None  # processes drawing the figures (None: one per CPU); same report


def _finite(frame: pd.DataFrame, col: str) -> bool:
    return col in frame and bool(np.isfinite(pd.to_numeric(frame[col], errors="coerce")).any())


TAU_ZERO = 1e-9  # a tau lies in [-1, 1], from at most millions of pairs: smaller is rounding


def _table_html(frame: pd.DataFrame, zero_below: float = 0.0) -> str:
    """``frame`` as HTML, 4 significant digits; values smaller than ``zero_below`` in magnitude
    (a Kendall tau of 1.388e-17 is a sum of +-1 terms that cancelled) are printed as 0."""
    return frame.to_html(
        index=False, border=0, na_rep="", float_format=lambda v: _number(v, zero_below)
    )


def _number(value: float, zero_below: float = 0.0) -> str:
    return "0" if abs(value) < zero_below else f"{value:.4g}"


def summary_section(results: Results, cells: pd.DataFrame, keys: list[str], out: Path) -> Section:
    """Phase diagram(s), the sweep in numbers, the resolved rule, per-phase means."""
    t, load = keys[:2]
    section = Section("Phase diagram")
    for i, (title, part) in enumerate(list(slices(cells, keys))[:MAX_SLICES]):
        if _finite(part, "test_acc"):
            ax = plot_phase_diagram(
                part,
                t,
                load,
                title=f"test accuracy and phases {title}".strip(),
                columns=results.columns,
            )
            section.add(f"phase diagram {title}".strip(), ax.figure, out / f"phase_diagram_{i}.png")
    status = (
        results.runs["status"].value_counts() if "status" in results.runs else pd.Series(dtype=int)
    )
    facts = pd.DataFrame(
        [
            ("results", results.path.name),
            ("runs", f"{len(results.runs)} ({', '.join(f'{k} {v}' for k, v in status.items())})"),
            ("cells", f"{len(cells)} over {', '.join(keys)}"),
            ("tables", ", ".join(results.tables())),
            *cells.attrs["phase_thresholds"].describe(),
        ],
        columns=["", "value"],
    )
    section.add_html(_table_html(facts))
    cols = [c.name for c in in_report_order(results.columns, cells) if c.summary]
    by_phase = (
        cells.groupby("phase")[cols].mean() if cols else pd.DataFrame(index=cells["phase"].unique())
    )
    by_phase.insert(0, "cells", cells.groupby("phase").size())
    order = [p for p in PHASE_ORDER if p in by_phase.index]
    by_phase = by_phase.reindex(order).rename_axis("phase").reset_index()  # empty: keeps "phase"
    by_phase.insert(1, "meaning", by_phase["phase"].map(PHASE_MEANING))
    section.add_html("<h3>Per phase (mean over cells)</h3>" + _table_html(by_phase))
    detail = cells[
        [
            *keys,
            "n_ok",
            *[c for c in ("test_acc", "train_loss") if c in cells],
            "phase",
            "phase_reason",
        ]
    ]
    section.add_html(
        "<details><summary>Every cell and why it got its phase (also cells.csv)</summary>"
        + _table_html(detail)
        + "</details>"
    )
    return section


def panels_section(results: Results, cells: pd.DataFrame, keys: list[str], out: Path) -> Section:
    section = Section("Signals of the phase rule")
    for i, (title, part) in enumerate(list(slices(cells, keys))[:MAX_SLICES]):
        fig = plot_phase_panels(part, keys[0], keys[1], title=title, columns=results.columns)
        section.add(f"phase signals {title}".strip(), fig, out / f"phase_panels_{i}.png")
    return section


def heatmap_columns(results: Results, cells: pd.DataFrame) -> list[Shown]:
    """The measured columns that get a heatmap, in the catalogue's report order. Results whose
    catalogue declares no columns (written before it did): every aggregated measurement (a
    column with its ``_std`` and ``_n``), in table order, drawn plainly."""
    if results.columns:
        return [c for c in in_report_order(results.columns, cells) if _finite(cells, c.name)]
    measured = [c for c in cells if _finite(cells, c)]
    return [Shown(c) for c in measured if {f"{c}_std", f"{c}_n"} <= set(cells.columns)]


def heatmaps_section(
    results: Results,
    cells: pd.DataFrame,
    keys: list[str],
    out: Path,
    columns: Sequence[Shown] | None = None,
) -> Section:
    """One heatmap per column of ``columns`` (default: :func:`heatmap_columns`)."""
    extra = f" and {', '.join(keys[2:])}" if keys[2:] else ""
    section = Section(f"Metrics over {keys[0]} x {keys[1]} (mean over seeds{extra})")
    for column in heatmap_columns(results, cells) if columns is None else columns:
        ax = metric_heatmap(cells, column.name, keys[0], keys[1], shown=column)
        section.add(column.name, ax.figure, out / f"heatmap_{column.name}.png")
    return section


def correlations_section(
    results: Results, cells: pd.DataFrame, keys: list[str], out: Path
) -> Section:
    section = Section("Correlation with generalisation (Kendall tau; Jiang et al. 2019)")
    table = correlation_table(cells, keys, columns=results.columns)
    if table.empty:
        return section
    table.to_csv(out / "correlations.csv", index=False)
    (out / "correlations.html").write_text(_table_html(table, TAU_ZERO))
    warnings = "".join(
        f"<p class='warning'>Warning: {html.escape(w)}</p>"
        for w in small_sample_warnings(table, cells, keys)
    )
    section.add_html(
        "<p>tau: over all cells; tau[knob]: mean tau within groups where only that knob "
        "varies; Psi: mean over knobs. Also correlations.csv.</p>"
        + warnings
        + _table_html(table, TAU_ZERO)
    )
    section.add("Kendall tau per measure", plot_correlations(table), out / "correlations.png")
    return section


def curves_section(results: Results, keys: list[str], out: Path, by: str | None) -> Section:
    section = Section("Training curves")
    if results.curves is not None:
        by = by or curve_axis(results, keys[0])
        fig = plot_training_curves(results, by=by)
        section.add(f"loss and accuracy per epoch across {by}", fig, out / "curves.png")
    labels = variant_labels(results.runs, keys)
    section.add("LR range test", plot_lr_range(results, labels=labels), out / "lr_range.png")
    return section


def surfaces_section(results: Results, keys: list[str], out: Path, opts: ReportOptions) -> Section:
    section = Section("Loss surfaces and paths")
    labels, s, n = variant_labels(results.runs, keys), results.surfaces, opts.max_variants
    order = variant_order(results.runs, keys)  # figures spread their models over the grid
    fig = plot_surface_1d(s, labels, log=opts.log_surfaces, max_variants=n, order=order)
    section.add("1-D slices", fig, out / "surface_1d.png")
    section.add(
        "2-D contours",
        plot_surface_2d(s, labels, log=opts.log_surfaces, max_variants=n, order=order),
        out / "surface_2d.png",
    )
    fig = plot_surface_2d(
        s, labels, log=opts.log_surfaces, three_d=True, max_variants=min(n, 3), order=order
    )
    section.add("3-D surfaces", fig, out / "surface_3d.png")
    for kind in ("mli", "interpolation", "bezier"):
        fig = plot_paths(s, kind, labels, max_variants=n, order=order)
        section.add(f"{kind} path", fig, out / f"path_{kind}.png")
    section.add("between sweep points", plot_cross(results.cross, results.runs), out / "cross.png")
    return section


def matrices_section(results: Results, keys: list[str], out: Path, opts: ReportOptions) -> Section:
    section = Section("Stiffness and Hessian spectra")
    labels, order = variant_labels(results.runs, keys), variant_order(results.runs, keys)
    stiffness = final_stiffness(results.stiffness)  # not the matrices over training
    fig = plot_stiffness(stiffness, labels, max_variants=opts.max_variants, order=order)
    section.add("class stiffness at the end of training", fig, out / "stiffness.png")
    fig = plot_spectra(results.spectra, labels, order=order)
    section.add("eigenvalue density", fig, out / "spectra.png")
    return section


def reparam_html(summary: pd.DataFrame) -> str:
    """The reparametrisation table, invariant measures highlighted."""
    rows = []
    for r in summary.to_dict("records"):
        mark = " class='invariant'" if r["invariant"] else ""
        cells = [
            html.escape(str(r["metric"])),
            f"{r['alpha']:.3g}",
            html.escape(str(r["layers"])),
            str(r["variants"]),
            *(f"{r[c]:.4g}" for c in ("ratio_mean", "ratio_min", "ratio_max")),
            "yes" if r["invariant"] else "no",
        ]
        rows.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("metric", "alpha", "layers", "variants", "ratio mean", "min", "max", "invariant")
    return (
        "<p>Each measure after / before a function-preserving rescaling of two layers by alpha "
        "and 1/alpha (Dinh et al. 2017). Highlighted: invariant (every ratio within "
        f"{TOLERANCE:g} of 1).</p><table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def training_section(results: Results, keys: list[str], out: Path, opts: ReportOptions) -> Section:
    """Metrics against step, stiffness over training, the PCA path, LCA, weights, reparam."""
    section = Section("During training")
    by = opts.curves_by or curve_axis(results, keys[0])
    for metric in trajectory_metrics(results.trajectory):
        fig = plot_trajectory(results, metric, by=by)
        section.add(f"{metric} against step across {by}", fig, out / f"trajectory_{metric}.png")
    fig = plot_stiffness_stages(results)
    section.add("class stiffness over training", fig, out / "stiffness_stages.png")
    fig = plot_stiffness_distance(results, by=by)
    section.add(
        f"stiffness against input distance across {by}", fig, out / "stiffness_distance.png"
    )
    labels = variant_labels(results.runs, keys)
    fig = plot_pca_path(results, labels, max_variants=min(opts.max_variants, 3))
    section.add("optimiser path on its PCA plane", fig, out / "pca_path.png")
    section.add("loss change allocation per layer", plot_lca(results), out / "lca.png")
    weights_by = opts.curves_by or keys[0]  # Li et al. compare batch sizes and weight decays
    fig = plot_weight_histograms(results, by=weights_by)
    section.add(f"weight histograms across {weights_by}", fig, out / "weight_histograms.png")
    fig = plot_weight_norms(results, by=weights_by, hue=keys[1])
    section.add(f"weight norms across {weights_by}", fig, out / "weight_norms.png")
    summary = reparam_summary(results.reparam)
    if summary is not None:
        summary.to_csv(out / "reparam.csv", index=False)
        section.add_html("<h3>Reparametrisation probe</h3>" + reparam_html(summary))
    return section


def grokking_section(results: Results, keys: list[str], out: Path) -> Section:
    """Drawn only when some run groks (:func:`analysis.grokking_figures.has_grokking`)."""
    section = Section("Grokking phases")
    if not has_grokking(results):
        return section
    section.add(
        f"grokking phase over {keys[0]} x {keys[1]} (analysis.grokking)",
        plot_phase_map(results, keys),
        out / "grokking_phases.png",
    )
    section.add(
        "train and test accuracy against log step, per cell",
        plot_accuracy_by_cell(results, keys),
        out / "grokking_accuracy.png",
    )
    section.add(
        "sharpness and weight norm along training, aligned on the step of generalisation",
        plot_aligned(results),
        out / "grokking_aligned.png",
    )
    section.add(
        f"between seeds at the end of training, over {keys[0]} x {keys[1]} (mean over pairs)",
        plot_pair_map(results, keys),
        out / "grokking_pairs_map.png",
    )
    section.add(
        "between seeds by grokking phase (a pair whose runs differ: mixed)",
        plot_pairs_by_phase(results, keys),
        out / "grokking_pairs_phase.png",
    )
    table = pair_phase_table(results, keys[:2])
    if table is not None:
        table.to_csv(out / "grokking_pairs.csv", index=False)
        section.add_html(
            "<p>Between seeds by phase: mean of each pair metric; mc only over curves whose "
            "training loss had stopped falling (<code>bezier_improvement</code> at most the "
            "phase rule's <code>mc_converge_tol</code>).</p>" + _table_html(table)
        )
    return section


def claims_section(results: Results, out: Path) -> Section:
    """The literature's qualitative results this sweep tests (``analysis.claims``)."""
    section = Section("Does it reproduce the literature?")
    table = evaluate_all([results])
    if not len(table):
        return section
    table.to_csv(out / "claims.csv", index=False)
    shown = table[
        ["statement", "reference", "knob", "measure", "low", "high", "trend", "z", "verdict"]
        + ["note"]  # what a claim about minima left out (unfitted cells) and why
    ]
    section.add_html(
        "<p>Within each setting of the other knobs: Kendall's tau of the seed means against "
        "the knob, and the effect between the knob's ends in pooled seed standard errors "
        "(the rule: <code>analysis/claims.py</code>).</p>" + _table_html(shown)
    )
    return section


def status_section(results: Results, keys: list[str]) -> Section:
    section = Section("Runs that did not finish")
    runs = results.runs
    if "status" not in runs or (runs["status"] == "ok").all():
        return section
    cols = [c for c in (*keys, "seed", "status", "diverged_step", "error") if c in runs]
    bad = runs.loc[runs["status"] != "ok", cols].head(100)
    section.add_html(_table_html(bad))
    return section


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """One self-contained page: every figure embedded as a base64 PNG."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        body.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    toc = "".join(
        f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections)
    )
    body.append(f"<ul class='toc'>{toc}</ul>")
    for i, section in enumerate(sections):
        body.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        for item in section.items:
            if isinstance(item, str):
                body.append(item)
                continue
            caption, path = item
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(
                "<figure>"
                f"<img src='data:image/png;base64,{data}' alt='{html.escape(caption)}' "
                f"data-file='{html.escape(path.name)}'>"
                f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption>"
                "</figure>"
            )
    return _PAGE.format(title=html.escape(title), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }}
h1 {{ margin-bottom: 0.2em; }} .sub {{ color: #666; margin-top: 0; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; text-align: center; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #f3f3f3; }}
details {{ margin: 0.5em 0; }}
tr.invariant td {{ background: #e3f4e1; font-weight: 600; }}
p.warning {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.3em 0.6em; }}
</style></head>
<body>
{body}
</body></html>
"""


FINGERPRINT = ".fingerprint"  # beside index.html: what the report was drawn from


def fingerprint(results_dir: Path, out: Path, options: str) -> str:
    """What a report depends on: every file of the results directory by name, size and
    modification time (a new, rewritten, quarantined or removed part changes it), the
    drawing code (the ``analysis`` package's sources) and the options it was drawn with.
    The report's own directory is left out, so drawing it does not change it."""
    digest = hashlib.sha256()
    out = out.resolve()
    for path in sorted(results_dir.rglob("*")):
        resolved = path.resolve()
        if resolved == out or out in resolved.parents or path.name == ".lock" or not path.is_file():
            continue
        stat = path.stat()
        digest.update(
            f"{path.relative_to(results_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(options.encode())
    return digest.hexdigest()


def _unchanged(out: Path, print_: str) -> bool:
    """Whether ``out`` holds a report drawn from exactly ``print_``."""
    stored = out / FINGERPRINT
    return (out / "index.html").is_file() and stored.is_file() and stored.read_text() == print_


def build_report(results: Results, out: Path, opts: ReportOptions | None = None) -> Path:
    """Write every figure the data supports, the CSVs and ``index.html`` under ``out``."""
    opts = opts or ReportOptions()
    temperature, load = results.analysis_axes(opts.temperature, opts.load)
    cells = aggregate_cells(results, temperature, load)
    keys = cells.attrs["keys"]
    cells = classify_phases(cells, opts.thresholds, results.num_classes())
    out.mkdir(parents=True, exist_ok=True)
    cells.to_csv(out / "cells.csv", index=False)
    results.columns  # noqa: B018  (computed once, before the workers fork)
    heatmaps = heatmap_columns(results, cells)
    chunks = [heatmaps[i : i + HEATMAPS_PER_JOB] for i in range(0, len(heatmaps), HEATMAPS_PER_JOB)]
    # (page position, job); the list's order is the order the workers take them in: the
    # costliest first, the heatmaps (many small jobs) filling in after
    jobs: list[tuple[int, Callable[[], Section]]] = [
        (1, lambda: panels_section(results, cells, keys, out)),
        (5, lambda: surfaces_section(results, keys, out, opts)),
        (7, lambda: training_section(results, keys, out, opts)),
        (3, lambda: correlations_section(results, cells, keys, out)),
        (4, lambda: curves_section(results, keys, out, opts.curves_by)),
        (6, lambda: matrices_section(results, keys, out, opts)),
        (8, lambda: grokking_section(results, keys, out)),
        (0, lambda: summary_section(results, cells, keys, out)),
        *[(2, lambda c=c: heatmaps_section(results, cells, keys, out, c)) for c in chunks or [[]]],
        (9, lambda: claims_section(results, out)),
        (10, lambda: status_section(results, keys)),
    ]
    sections = _in_page_order(jobs, _draw(jobs, opts.jobs))
    sections = [s for s in sections if s.items]
    subtitle = f"temperature {temperature}, load {load}; {len(results.runs)} runs"
    page = out / "index.html"
    _write_atomically(page, render_html(f"Sweep {results.name}", sections, subtitle))
    plt.close("all")
    return page


HEATMAPS_PER_JOB = 3  # the heatmaps are drawn in jobs of this many, spread over the workers

_JOBS: list[Callable[[], Section]] = []  # what the forked workers run, by index


def _run_job(index: int) -> Section:
    return _JOBS[index]()


def _workers(jobs: int | None, n: int) -> int:
    """How many processes draw ``n`` jobs: ``jobs``, else one per CPU this process may use;
    1 (drawn here) where processes cannot be forked (they inherit the loaded tables and the
    imported modules: a spawned one would import and load them again)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n, jobs or cpus or 1))


def _draw(
    jobs: Sequence[tuple[int, Callable[[], Section]]], n_workers: int | None
) -> list[Section]:
    """Each job's section, in the order of ``jobs``; drawn by a pool of forked processes, which
    write their figures' PNGs and send back the sections (captions and paths). Every figure
    is drawn from the same data by the same code on the Agg backend in whichever process, so
    the report is the same with one worker or many (tests/analysis/test_report.py)."""
    n = _workers(n_workers, len(jobs))
    if n == 1:
        return [job() for _, job in jobs]
    _JOBS[:] = [job for _, job in jobs]
    try:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            pending = [pool.apply_async(_run_job, (i,)) for i in range(len(jobs))]
            return [p.get() for p in pending]
    finally:
        _JOBS.clear()


def _in_page_order(
    jobs: Sequence[tuple[int, Callable[[], Section]]], drawn: Sequence[Section]
) -> list[Section]:
    """The sections in page order, the parts of one (the heatmaps' jobs) joined in job order."""
    merged: dict[int, Section] = {}
    for (position, _), section in sorted(zip(jobs, drawn), key=lambda pair: pair[0][0]):
        if position in merged:
            merged[position].items.extend(section.items)
        else:
            merged[position] = section
    return list(merged.values())


def _write_atomically(path: Path, text: str) -> None:
    """Write to a hidden temporary name, then rename: a full disk or a kill leaves the old page
    (or none), never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="landscape-report",
        description="Phase diagram, correlations and landscape figures for one results directory.",
    )
    p.add_argument("results", help="results directory of one sweep (results/<sweep>)")
    p.add_argument("--out", help="output directory (default: <results>/report)")
    p.add_argument(
        "--force",
        action="store_true",
        help="draw the report even when the results and options are as when it was last drawn",
    )
    p.add_argument(
        "--temperature", help="temperature axis, a runs column (default: the manifest's)"
    )
    p.add_argument("--load", help="load axis, a runs column (default: the manifest's)")
    p.add_argument(
        "--curves-by",
        help="knob to overlay training curves and measurements during training across "
        "(default: optim.lr if swept, else temperature; weights: temperature)",
    )
    p.add_argument(
        "--log-surfaces", action="store_true", help="draw 1-D/2-D/3-D surfaces in log10 loss"
    )
    p.add_argument(
        "--max-variants",
        type=int,
        default=4,
        help="models per surface/stiffness figure (default: 4)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="processes drawing the figures (default: one per CPU); the report is the same",
    )
    rule = p.add_argument_group("phase rule (see analysis.phases)")
    for name, kind, default, text, choices in threshold_options():
        shown = (
            "" if default is None else f" (default: {default})"
        )  # None: the text says what happens
        metavar = None if choices else ("N" if kind is int else "X")
        rule.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"thr_{name}",
            type=kind,
            default=default,
            choices=choices,
            metavar=metavar,
            help=text + shown,
        )
    return p


def options(args: argparse.Namespace) -> ReportOptions:
    """ReportOptions from parsed arguments; raises ValueError naming a bad threshold."""
    values = {k[4:]: v for k, v in vars(args).items() if k.startswith("thr_")}
    if args.max_variants < 1:
        raise ValueError(f"--max-variants must be >= 1, got {args.max_variants}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    return ReportOptions(
        args.temperature,
        args.load,
        PhaseThresholds(**values),
        args.curves_by,
        args.log_surfaces,
        args.max_variants,
        args.jobs,
    )


def _check_out(out: Path) -> None:
    """The report directory must be one we can create and write (tried for real, then left
    as it was found)."""
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {str(out)!r} exists and is not a directory")
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as err:
        raise ResultsError(f"--out must be a writable directory, got {str(out)!r} ({err})") from err
    finally:
        for p in made:  # the ones this check created, innermost first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _load_warning(path: str) -> Results:
    """``load_results``, its warnings (a skipped damaged part, an unfinished store operation)
    printed one line each, also when the load then fails (every runs part damaged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load_results(path)
        finally:
            for w in caught:
                print(f"landscape-report: warning: {w.message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 on bad input, with nothing written)."""
    args = parser().parse_args(argv)
    print_ = None
    if Path(args.results).is_dir():  # nothing to redraw when nothing changed since the last drawing
        out = Path(args.out) if args.out else Path(args.results) / "report"
        how = ("force", "jobs")  # how it is drawn, not what: the same report either way
        drawn_with = repr(sorted((k, v) for k, v in vars(args).items() if k not in how))
        print_ = fingerprint(Path(args.results), out, drawn_with)
        if not args.force and _unchanged(out, print_):
            print(
                f"report unchanged: {out / 'index.html'} (the results are as when it was drawn; "
                "--force draws it again)"
            )
            return 0
    try:
        opts = options(args)
        results = _load_warning(args.results)
        results.analysis_axes(opts.temperature, opts.load)
        if opts.curves_by is not None and opts.curves_by not in results.runs:
            raise ResultsError(
                f"--curves-by {opts.curves_by!r} is not a column of the runs table; "
                f"knobs: {', '.join(results.knob_columns())}"
            )
        out = Path(args.out) if args.out else results.path / "report"
        _check_out(out)
    except ValueError as err:  # ResultsError is a ValueError
        print(f"landscape-report: error: {err}", file=sys.stderr)
        return 2
    (out / FINGERPRINT).unlink(missing_ok=True)  # a drawing cut short is drawn again
    page = build_report(results, out, opts)
    if print_ is not None:
        _write_atomically(out / FINGERPRINT, print_)
    print(f"report written to {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
