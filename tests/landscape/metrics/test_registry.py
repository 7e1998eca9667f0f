"""The metric registry is the one list of metrics: what each declares (columns, tables, seed
slot, settings roles) is what the code writes, and what MetricsSpec, the config's base node,
metrics_id and the catalogue are built from."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant, load_dataset
from landscape.measure import MetricsSpec, base_settings, measure_pack
from landscape.metrics import registry
from landscape.metrics.registry import Metric, metric, metric_catalogue, metric_names, metrics
from landscape.metrics.reparam import PROBES
from landscape.run import METRICS_ADDED_KEYS, METRICS_LAUNCH_KEYS, metrics_id
from landscape.train import train_pack
from landscape.variant import build_spec

ROOT = Path(__file__).resolve().parents[3]

# Small settings for the metrics whose defaults take long on a CPU; the column-changing
# settings at their non-defaults.
SMALL = {
    "hessian_trace": {"n_probes": 6, "n_samples": 24, "chunk": 3, "min_probes": 3},
    "hessian_eigen": {"k": 3, "n_samples": 24, "max_iter": 10},
    "spectrum": {"n_samples": 24, "n_iter": 5, "n_grid": 10},
    "sharpness": {"n_samples": 24, "steps": 2, "n_draws": 2, "chunk": 2},
    "gradient_stats": {"n_samples": 32, "max_iter": 5, "flatness_batches": 2},
    "stiffness": {"n_samples": 18, "distance_bins": 2},
    "lr_range": {"steps": 5},
    "cka": {"n_inputs": 16, "unbiased_batch_size": 8, "rbf": True},
    "barrier": {"n_alphas": 3, "n_samples": 32},
    "bezier": {"epochs": 1, "batch_size": 16, "n_samples": 32},
    "mli": {"n_alphas": 3, "n_samples": 32},
    "surface": {
        "n_samples": 16,
        "points_1d": 3,
        "points_2d": 0,
        "roughness_directions": 1,
        "roughness_points": 3,
    },
    "weights": {"bins": 3},
    "reparam": {"n_samples": 16, "n_probes": 2},
}
# Every metric measure_pack measures switched on (a new one too, at its defaults).
EVERYTHING = {
    m.name: {"enabled": True, **SMALL.get(m.name, {})} for m in metrics() if m.family != "setting"
}
# The same with the column-changing settings the other way round.
FEWER = {
    **EVERYTHING,
    "hessian_eigen": {**EVERYTHING["hessian_eigen"], "k": 1},
    "gradient_stats": {**EVERYTHING["gradient_stats"], "flatness": False},
    "cka": {**EVERYTHING["cka"], "rbf": False, "unbiased": False, "representations": ["softmax"]},
    "surface": {**EVERYTHING["surface"], "roughness_directions": 0},
}
# Columns every runs row or pairs row has, whatever is measured.
RUNS_ALWAYS = {"metric_errors"}
PAIRS_ALWAYS = {"member_a", "member_b", "group_id"}


@pytest.fixture(scope="module")
def pack():
    data = DataSpec("synthetic", n_train=48, n_test=24, n_features=5, n_classes=3)
    variants = [
        Variant(
            model=ModelSpec("mlp", width=6, depth=1),
            data=data,
            optim=OptimSpec(lr=0.1, batch_size=16),
            train=TrainSpec(epochs=1),
            seed=s,
        )
        for s in (0, 1)
    ]
    return train_pack(variants, load_dataset(data)).pack


def _declared(spec, table: str) -> set[str]:
    return {
        c.name
        for m in metrics()
        if getattr(spec, m.name).enabled
        for c in m.columns(getattr(spec, m.name))
        if c.table == table
    }


@pytest.mark.parametrize("settings", [EVERYTHING, FEWER], ids=["everything", "fewer"])
def test_the_declared_columns_and_tables_are_the_written_ones(pack, settings):
    spec = build_spec(MetricsSpec, settings, "metrics")
    measured = measure_pack(pack, spec)
    assert measured.columns["metric_errors"] == [None, None]
    assert set(measured.columns) == _declared(spec, "runs") | RUNS_ALWAYS
    assert set(measured.tables["pairs"][0]) == _declared(spec, "pairs") | PAIRS_ALWAYS
    tables = {t for m in metrics() if getattr(spec, m.name).enabled for t in m.tables}
    assert set(measured.tables) == (tables | {"pairs"}) - {"cross", "trajectory"}


def test_local_columns_are_written_in_registry_order(pack):
    spec = build_spec(MetricsSpec, EVERYTHING, "metrics")
    measured = measure_pack(pack, spec)
    local = [c for m in metrics("local") for c in m.column_names(getattr(spec, m.name))]
    assert list(measured.columns)[: len(local)] == local


def test_metrics_spec_has_one_field_per_registered_metric():
    shared = ["preset", "seed", "max_pairs", "eval_chunk", "eval_batch_size"]
    fields = dataclasses.fields(MetricsSpec)
    assert [f.name for f in fields] == shared + list(metric_names())
    for f in fields[len(shared) :]:
        m = metric(f.name)
        assert f.type is m.spec
        assert getattr(MetricsSpec(), f.name) == m.spec(enabled=m.on_by_default)


def test_the_seed_slots_of_the_first_local_metrics_never_move():
    """A local metric's seed is drawn for its slot: moving one changes its numbers."""
    slots = {m.name: m.order for m in metrics("local")}
    first = ("hessian_trace", "hessian_eigen", "spectrum", "sharpness")
    rest = ("gradient_stats", "stiffness", "lr_range")
    assert {n: slots[n] for n in first + rest} == {n: i for i, n in enumerate(first + rest)}


def test_a_name_or_an_order_registered_twice_is_refused():
    taken = metric("hessian_trace")
    with pytest.raises(ValueError, match="clashes with hessian_trace"):
        registry.register(dataclasses.replace(taken, order=10_000))
    with pytest.raises(ValueError, match="clashes with hessian_trace"):
        registry.register(dataclasses.replace(taken, name="another_trace"))
    assert metric("hessian_trace") is taken


def test_a_metric_declares_what_its_family_needs():
    trace = metric("hessian_trace")
    with pytest.raises(ValueError, match="family must be one of"):
        Metric(name="x", spec=trace.spec, family="other", order=-1)
    with pytest.raises(ValueError, match="the local and pack families"):
        Metric(name="x", spec=trace.spec, family="local", order=-1)
    with pytest.raises(ValueError, match="names its passes"):
        Metric(name="x", spec=trace.spec, family="global", order=-1)


def test_only_the_discovered_modules_register():
    """Discovery imports landscape/metrics/ and SETTINGS_MODULES: a register() call in any
    other module would never run."""
    registering = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "landscape").rglob("*.py")
        if re.search(r"^register\(", p.read_text(), re.MULTILINE)
    }
    outside = {m for m in registering if not m.startswith("landscape.metrics.")}
    assert outside == set(registry.SETTINGS_MODULES)


def test_the_base_node_is_every_default_switched_off():
    base = base_settings()
    assert base["preset"] == "base"
    assert [k for k in base if k in metric_names()] == list(metric_names())
    assert all(base[name]["enabled"] is False for name in metric_names())
    off = {m.name: dataclasses.replace(m.spec(), enabled=False) for m in metrics()}
    assert build_spec(MetricsSpec, base, "metrics") == MetricsSpec(preset="base", **off)


def test_metrics_id_leaves_out_the_declared_settings():
    assert METRICS_LAUNCH_KEYS == ("hessian_trace.hvp", "hessian_eigen.hvp", "spectrum.hvp")
    assert METRICS_ADDED_KEYS == {"bezier.max_pairs": 0, "stiffness.class_groups": 0}
    # the ids results directories already hold (unchanged by the registry)
    assert metrics_id(MetricsSpec()) == "528b3f56"


def test_the_catalogue_describes_every_metric_and_what_is_enabled():
    spec = MetricsSpec()
    catalogue = metric_catalogue(spec)
    assert json.loads(json.dumps(catalogue)) == catalogue
    assert list(catalogue) == list(metric_names())
    assert [m for m, e in catalogue.items() if e["enabled"]] == ["hessian_trace", "batch_norm"]
    trace = catalogue["hessian_trace"]
    assert trace["family"] == "local" and trace["tables"] == [] and trace["passes"] == []
    assert trace["columns"][0] == {
        "name": "hessian_trace",
        "label": "Hessian trace",
        "table": "runs",
        "unit": "nats / weight^2",
        "log": True,
        "report": 0,
        "summary": True,
        "phase_diagram": True,
        "centre": None,
    }
    everything = build_spec(MetricsSpec, EVERYTHING, "metrics")
    eigen = metric_catalogue(everything)["hessian_eigen"]["columns"]
    assert [c["name"] for c in eigen] == ["hessian_top_eig", "hessian_eig_2", "hessian_eig_3"]
    assert metric_catalogue(everything)["bezier"]["columns"][0]["unit"] == "percentage points"


def test_report_places_are_unique():
    """Training's columns and the analysis's own gen_gap take the negative places, metrics
    0, 1, ...: no two columns share a place."""
    from analysis.columns import GEN_GAP

    everything = build_spec(MetricsSpec, EVERYTHING, "metrics")
    places = [
        c["report"]
        for entry in metric_catalogue(everything).values()
        for c in entry["columns"]
        if c["report"] is not None
    ]
    training = [c.report for c in registry.TRAINING_COLUMNS] + [GEN_GAP.report]
    assert sorted(training) == list(range(-len(training), 0))
    assert sorted(places) == list(range(len(places)))


def test_the_names_other_settings_accept_are_registered():
    runs = {c.name for m in metrics("local") for c in m.columns(getattr(MetricsSpec(), m.name))}
    assert set(PROBES) <= runs  # the reparametrisation probe takes local metrics' columns
    with pytest.raises(ValueError, match="must be a subset of hessian_trace, hessian_eigen"):
        MetricsSpec().trajectory.__class__(metrics=("vibes",))


def test_a_metric_added_later_changes_no_id_until_it_is_used(monkeypatch):
    """A metric registered without hashed_when_off is left out of metrics_id while it is off
    and not measured during training, so adding one keeps every results directory current."""
    import landscape.run as run

    trace = metric("hessian_trace")
    monkeypatch.setattr(
        run, "registered", lambda: [dataclasses.replace(trace, hashed_when_off=False)]
    )
    off = MetricsSpec(hessian_trace=trace.spec(enabled=False))
    other = MetricsSpec(hessian_trace=trace.spec(enabled=False, n_probes=7))
    assert metrics_id(off) == metrics_id(other)
    assert metrics_id(MetricsSpec()) != metrics_id(dataclasses.replace(off))
    during = dataclasses.replace(
        off,
        trajectory=dataclasses.replace(off.trajectory, enabled=True, metrics=("hessian_trace",)),
    )
    changed = dataclasses.replace(during, hessian_trace=other.hessian_trace)
    assert metrics_id(during) != metrics_id(changed)
