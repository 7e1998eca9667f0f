import time

import pytest
from omegaconf import OmegaConf

from analysis.claims import CLAIM_NAMES
from landscape.data import TORCHVISION_SOURCES
from landscape.variant import ConfigError
from sweeps.config import CONF_DIR, config_groups, plan_sweep


@pytest.fixture
def out(tmp_path):
    return f"out_dir={tmp_path / 'results'}"


@pytest.fixture
def data_root(tmp_path):
    """data.root=... holding (empty) files where torchvision looks for every data set: what
    planning checks for; their contents are read only when a pack loads them."""
    root = tmp_path / "data"
    for source in TORCHVISION_SOURCES.values():
        folder = root / source.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in source.files:
            (folder / name).touch()
    return f"data.root={root}"


@pytest.mark.parametrize("sweep", config_groups()["sweep"])
def test_every_sweep_preset_composes_and_expands(sweep, out, data_root):
    # data.root only for presets on torchvision's data (a generated set's config has no root)
    preset = OmegaConf.load(CONF_DIR / "sweep" / f"{sweep}.yaml")
    data = next(
        (d["override /data"] for d in preset.get("defaults", []) if "override /data" in d), None
    )
    root = [data_root] if data in TORCHVISION_SOURCES else []
    plan = plan_sweep([f"sweep={sweep}", out, *root])
    assert plan.variants and plan.name
    assert plan.analysis.get("temperature") and plan.analysis.get("load")
    for key in ("temperature", "load"):
        assert plan.analysis[key] in plan.variants[0].flat() or plan.analysis[key] in plan.axes


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g, opts in config_groups().items() if g != "sweep" for o in opts],
)
def test_every_group_option_composes(group, option, out, data_root):
    extra = ["data=digits"] if group == "model" else []  # image models need image data
    if group == "data" and option == "synthetic":
        extra = ["model=mlp"]
    plan = plan_sweep(
        [f"{group}={option}", "model.width=4", "seed=0", "optim.batch_size=16", out, *extra]
        + ([data_root] if option in TORCHVISION_SOURCES else [])
    )
    assert len(plan.variants) == 1


def test_demo_preset_is_a_width_by_batch_size_grid_with_seeds(out):
    plan = plan_sweep([out])
    assert plan.name == "demo"
    assert len(plan.variants) >= 24
    assert len(plan.axes["seed"]) >= 2 and len(plan.axes["model.width"]) >= 3
    assert len({v.group_id for v in plan.variants}) == len(plan.variants) // len(plan.axes["seed"])


def test_sweep_preset_values_override_the_base_config(out, data_root):
    plan = plan_sweep([out])
    assert {v.train.epochs for v in plan.variants} == {
        30
    }  # conf/sweep/demo.yaml, not config.yaml's 10
    assert plan.metrics.preset == "demo"
    yang = plan_sweep(["sweep=taxonomy_cifar10", out, data_root])
    v = yang.variants[0]
    assert (v.model.name, v.data.name, v.optim.lr, v.optim.weight_decay, v.train.epochs) == (
        "resnet18",
        "cifar10",
        0.1,
        5e-4,
        100,
    )
    assert (
        v.optim.schedule == "step"
        and v.optim.step_at == (0.75,)
        and v.train.checkpoint == "best_train_loss"
    )
    assert yang.metrics.preset == "taxonomy" and yang.metrics.bezier.epochs == 50
    # Yang et al.'s measurement protocol (docs/protocol.md): the Hessian on one batch of 200
    # training samples; curve error and BatchNorm statistics over each member's whole set
    # (half of each comes from each member: 2 x 50,000, and 781 batches of 128 = 99,968)
    assert yang.metrics.hessian_trace.n_samples == yang.metrics.hessian_eigen.n_samples == 200
    assert yang.metrics.bezier.n_samples == 2 * 50_000
    bn = yang.metrics.batch_norm
    assert 2 * 50_000 - bn.batch_size < bn.n_batches * bn.batch_size <= 2 * 50_000
    assert (yang.metrics.cka.inputs, yang.metrics.cka.n_inputs) == ("mixup", 768)
    assert len(yang.variants) == 14 * 13 * 5


def test_command_line_axes_use_hydra_grammar(out):
    plan = plan_sweep(
        [
            "model=mlp,cnn",
            "model.width=range(4,13,4)",
            "optim.lr=choice(0.1,0.01)",
            "seed=0",
            out,
            "optim.batch_size=32",
        ]
    )
    assert len(plan.variants) == 2 * 3 * 2
    assert {v.model.name for v in plan.variants} == {"mlp", "cnn"}
    assert {v.model.width for v in plan.variants} == {4, 8, 12}
    assert {v.optim.lr for v in plan.variants} == {0.1, 0.01}


def test_scalar_override_replaces_preset_axis(out):
    plan = plan_sweep(["model.width=8", out])
    assert {v.model.width for v in plan.variants} == {8}
    assert "model.width" not in plan.axes


def test_glob_over_a_group(out):
    plan = plan_sweep(["model=glob(*)", "seed=0", "model.width=4", "optim.batch_size=32", out])
    assert {v.model.name for v in plan.variants} == set(config_groups()["model"])


def test_ten_thousand_variants_expand_in_seconds(out):
    t0 = time.perf_counter()
    plan = plan_sweep(
        [
            "model.width=range(1,101)",
            "optim.lr=range(1,11)",
            "seed=range(10)",
            "optim.batch_size=16",
            out,
        ]
    )
    assert len(plan.variants) == 10_000
    assert time.perf_counter() - t0 < 30  # generous: a few seconds on a laptop


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=gpt", "model=gpt is not a known option; allowed: "),
        ("model.widht=3", "model.widht is not a known key (got 3); allowed under model: "),
        ("optim.lr=0", "optim.lr must be finite and > 0, got 0.0"),
        ("optim.lr=-0.5", "optim.lr must be finite and > 0, got -0.5"),
        (
            "optim.batch_size=-1",
            "optim.batch_size must be an integer > 0, or 0 for the whole training set (full batch), got -1",
        ),
        ("optim.batch_size=4096", "optim.batch_size must be <= the training set size (1347"),
        ("model.width=0", "model.width must be an integer > 0, got 0"),
        ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
        ("train.pack_streams=0", "train.pack_streams must be an integer >= 1, got 0"),
        ("model.width=4,0", "model.width must be an integer > 0, got 0"),
        ("metrics=fast,fast", "metrics cannot be a sweep axis"),
        ("device=tpu", "device must be auto, cpu or cuda[:N], got 'tpu'"),
        ("optim.lr=inf", "optim.lr must be finite and > 0, got inf"),
        ("optim.gamma=-1", "optim.gamma must be finite and > 0, got -1.0"),
        ("ray.address=not_a_host", "ray.address must be null, local, auto, host:port"),
        ("sweep.name=../escaped", "sweep.name must be a directory name"),
        ("model=cnn model.name=mlp", "model.name cannot be set on its own (got 'mlp')"),
        ("model.width=range(8,4)", "sweep axis model.width has no values (from 'model.width=range"),
        ("metrics.seed=-1", "metrics.seed must be an integer >= 0, got -1"),
        (
            "metrics.sharpness.enabled=true metrics.sharpness.worst_p=abc",
            "metrics.sharpness.worst_p must be one of inf, 2, got 'abc'",
        ),
        (
            "metrics.lr_range.enabled=true metrics.lr_range.lr_min=10 metrics.lr_range.lr_max=1",
            "metrics.lr_range.lr_min must be < metrics.lr_range.lr_max, got 10.0 and 1.0",
        ),
        (
            "metrics.trajectory.enabled=true metrics.trajectory.epochs=[100] train.epochs=2",
            "metrics.trajectory.epochs must be <= train.epochs (2 for the shortest variant)",
        ),
        ("metrics.cross.vary=[bogus.key]", "metrics.cross.vary must name knobs of a variant"),
        ("data=cifar10 data.root=nowhere", "data.name=cifar10: no usable CIFAR10 files in"),
        ("device=cudax", "device must be auto, cpu or cuda[:N], got 'cudax'"),
        # no machine has 64 GPUs: refused with or without CUDA
        ("device=cuda:64", "device=cuda:64: this machine has "),
        ("optim=adam optim.momentum=0.5", "optim.momentum=0.5 has no effect with optim=adam"),
        ("optim=sgd optim.betas=[0.5,0.9]", "optim.betas is not a known key"),
        ("optim=adagrad optim.alpha=0.5", "optim.alpha is not a known key"),
        ("ray.address=localhost:99999", "ray.address must name a port between 1 and 65535"),
        ("ray.connect_timeout_s=-1", "ray.connect_timeout_s must be a number > 0, got -1"),
        ("sweep.max_variants=0", "sweep.max_variants must be an integer >= 1, got 0"),
        (
            "model.width=range(1,2000) seed=range(100)",
            "the sweep has 999,500 variants (1999 model.width x 5 optim.batch_size x 100 seed), "
            "more than sweep.max_variants=100,000: sweep fewer values, or raise the limit "
            "(sweep.max_variants=999500)",
        ),
    ],
)
def test_bad_input_is_one_line_naming_key_value_and_rule(override, message, out):
    with pytest.raises(ConfigError) as err:
        plan_sweep([*override.split(), out])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="out_dir must be a writable directory"):
        plan_sweep([f"out_dir={blocker / 'results'}"])


def test_conf_dir_is_the_repo_conf():
    assert (CONF_DIR / "config.yaml").exists()


def test_metrics_base_preset_is_the_dataclass_defaults_switched_off(out):
    """metrics=base, the node built from the metric registry and stored in Hydra's ConfigStore,
    composes like a preset file and is every metric's defaults switched off."""
    import dataclasses

    from landscape.measure import MetricsSpec

    default = MetricsSpec()
    off = {
        f.name: dataclasses.replace(getattr(default, f.name), enabled=False)
        for f in dataclasses.fields(default)
        if hasattr(getattr(default, f.name), "enabled")
    }
    assert plan_sweep(["metrics=base", out]).metrics == dataclasses.replace(
        default, preset="base", **off
    )


def test_cross_pairs_need_checkpoints(out):
    with pytest.raises(ConfigError, match="needs checkpoints=true"):
        plan_sweep(["metrics.cross.enabled=true", out])
    assert plan_sweep(["metrics.cross.enabled=true", "checkpoints=true", out]).checkpoints


def test_the_later_override_of_a_key_wins(out):
    assert {
        v.model.width for v in plan_sweep(["model.width=8,16", "model.width=8", out]).variants
    } == {8}
    assert {
        v.model.width for v in plan_sweep(["model.width=8", "model.width=8,16", out]).variants
    } == {8, 16}


def test_empty_out_dir_is_refused():
    with pytest.raises(ConfigError, match="out_dir must be a directory path, got ''"):
        plan_sweep(["out_dir="])


def test_missing_data_files_are_not_checked_when_joining_a_cluster(out):
    # A cluster's nodes may see a data.root the driver does not: the workers check there.
    plan = plan_sweep(["data=mnist", "data.root=nowhere", "ray.address=auto", out])
    assert plan.variants[0].data.name == "mnist"


def test_sweep_analysis_claims_are_a_list_of_names(out):
    plan = plan_sweep([out, "sweep=literature_lr"])
    assert plan.analysis["claims"] == ["lr_stiffens_classes"]
    with pytest.raises(ConfigError, match="sweep.analysis.claims must be a non-empty list"):
        plan_sweep([out, "sweep=literature_lr", "sweep.analysis.claims=[]"])


def test_every_sweep_preset_names_only_known_claims():
    """landscape-claims refuses a sweep that names an unknown claim (tests/analysis/
    test_claims.py); no preset that ships names one."""
    named = {
        p.stem: OmegaConf.load(p).sweep.get("analysis", {}).get("claims")
        for p in sorted((CONF_DIR / "sweep").glob("*.yaml"))
    }
    assert sum(bool(claims) for claims in named.values()) >= 5, named
    for preset, claims in named.items():
        assert set(claims or ()) <= set(CLAIM_NAMES), preset


def test_an_unavailable_device_is_refused_at_planning(out, monkeypatch):
    """A local run on a machine without CUDA: ``device=cuda`` would make every variant a
    failed row; it is refused before anything runs. (On a machine with a GPU it plans.)"""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda: this machine has no usable CUDA device"):
        plan_sweep(["device=cuda", out])
    plan_sweep(["device=cpu", out])
    plan_sweep(["device=cuda", "ray.address=127.0.0.1:6379", out])  # the cluster's GPUs decide


def test_knobs_an_optimiser_reads_are_accepted_and_its_defaults_pass(out):
    assert plan_sweep(["optim=rmsprop", "optim.momentum=0.5", "optim.alpha=0.9", out]).variants
    assert plan_sweep(["optim=adam", "optim.betas=[0.8,0.99]", out]).variants
    # the demo preset sets momentum 0.9, its default: adam leaves it alone
    assert plan_sweep(["optim=adam", out]).variants


def test_a_grid_within_sweep_max_variants_plans(out):
    assert len(plan_sweep(["sweep.max_variants=40", out]).variants) == 40
