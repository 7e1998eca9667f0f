"""From Hydra config and command-line overrides to a plan: the variants to run and the run settings.

Axes use Hydra's own override grammar (``a=1,2,3``, ``range(...)``, ``choice(...)``,
``glob(...)``, group sweeps such as ``model=mlp,cnn``), from the sweep preset's
``sweep.axes`` or the command line. Expansion happens here, in the driver, not as one Hydra
job per variant: the config is composed once per distinct combination of config groups and
the scalar axes are applied to plain dicts, so 10,000 variants expand in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from landscape.data import check_files, subset_size
from landscape.datasets import train_set_size
from landscape.measure import MetricsSpec, base_settings
from landscape.optim import READS, ignored_knobs
from landscape.variant import ConfigError, Variant, build_spec, canonical_json
from sweeps.trackers import TrackerSettings


def _conf_dir() -> Path:
    """The config tree: ``conf/`` at the top of a checkout (and of an editable install), else
    the copy a built wheel carries inside the package (``sweeps/conf``)."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "conf"


CONF_DIR = _conf_dir()
VARIANT_SECTIONS = ("model", "data", "optim", "train")

# Config options built from the code rather than kept in files: ``metrics/base``, every metric's
# settings at their defaults, all switched off (landscape.measure.base_settings, from the metric
# registry). Every metrics preset starts from it (``defaults: [base, _self_]``), so any key can
# be overridden with any preset, e.g. metrics=fast metrics.cross.enabled=true
# metrics.bezier.epochs=50. Stored when this module is imported, before any composition.
STORED_OPTIONS = {"metrics": {"base": base_settings()}}
for _group, _options in STORED_OPTIONS.items():
    for _name, _node in _options.items():
        ConfigStore.instance().store(group=_group, name=_name, node=_node, provider="landscape")


_ADDRESS = re.compile(r"local|auto|(ray://)?[\w.\-]+:\d{1,5}|(ray://)?\[[0-9a-fA-F:.]+\]:\d{1,5}")


def _port(address: str | None) -> int | None:
    """The port of a host:port address (None for null, local, auto)."""
    if address is None or address in ("local", "auto"):
        return None
    return int(str(address).rpartition(":")[2])


@dataclass(frozen=True)
class RaySettings:
    # null: join the cluster in RAY_ADDRESS if set, else start a local instance; "local": always start
    # one; "auto" or host:port: join a running cluster
    address: str | None = None
    num_cpus: int | None = None  # CPUs of the local instance (null: all)
    num_workers: int | None = None  # worker actors (null: as many as the resources allow)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional allowed
    max_in_flight: int = 2  # packs queued per worker (backpressure)
    max_pack_attempts: int = 3  # a pack whose worker dies this many times is recorded as failed
    ship_code: bool = False  # send landscape/ and sweeps/ to the cluster (runtime_env py_modules)
    # start NVIDIA MPS for the embedded instance, so that workers sharing a GPU
    # (gpus_per_worker < 1) run their kernels concurrently (sweeps/mps.py)
    mps: bool = False
    # seconds each step of joining a cluster may take (reach the port, Ray's answer) before the
    # driver gives up with the reason
    connect_timeout_s: float = 20.0
    # where an embedded sweep's packs run: "auto" in this process, one after another, when the
    # sweep is small enough that starting Ray would cost more than its workers save (a CPU
    # device, an estimate of the work: sweeps/runner.py), else on Ray; true always in this
    # process; false always on Ray
    inline: Any = "auto"

    def __post_init__(self) -> None:
        if self.address is not None and not _ADDRESS.fullmatch(str(self.address)):
            raise ConfigError(
                f"ray.address must be null, local, auto, host:port or ray://host:port, "
                f"got {self.address!r}"
            )
        port = _port(self.address)
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(
                f"ray.address must name a port between 1 and 65535, got {self.address!r}"
            )
        timeout = self.connect_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"ray.connect_timeout_s must be a number > 0, got {timeout!r}")
        if self.num_cpus is not None and not (
            isinstance(self.num_cpus, int) and self.num_cpus >= 1
        ):
            raise ConfigError(
                f"ray.num_cpus must be an integer >= 1 or null, got {self.num_cpus!r}"
            )
        for key in ("cpus_per_worker", "gpus_per_worker"):
            if getattr(self, key) < 0:
                raise ConfigError(f"ray.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.max_in_flight < 1:
            raise ConfigError(f"ray.max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if self.max_pack_attempts < 1:
            raise ConfigError(f"ray.max_pack_attempts must be >= 1, got {self.max_pack_attempts!r}")
        if self.mps and self.address not in (None, "local"):
            raise ConfigError(
                f"ray.mps=true starts the MPS daemon for an embedded Ray instance only, got "
                f"ray.address={self.address!r}; on a cluster start it on each node before `ray start`"
            )
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"ray.num_workers must be >= 1 or null, got {self.num_workers!r}")
        if not (self.inline == "auto" or isinstance(self.inline, bool)):
            raise ConfigError(f"ray.inline must be auto, true or false, got {self.inline!r}")
        if self.inline is True and (self.mps or self.address not in (None, "local")):
            what = "ray.mps=true" if self.mps else f"ray.address={self.address}"
            raise ConfigError(
                f"ray.inline=true runs the packs in this process, without Ray, got {what}: "
                "leave ray.inline at auto or false to use Ray"
            )

    def resolved_address(self) -> str:
        """Where the sweep runs: ``ray.address``, else RAY_ADDRESS, else ``local`` (start one)."""
        return self.address or os.environ.get("RAY_ADDRESS") or "local"


@dataclass(frozen=True)
class PackSettings:
    max_members: int = 16

    def __post_init__(self) -> None:
        if self.max_members < 1:
            raise ConfigError(f"pack.max_members must be an integer >= 1, got {self.max_members!r}")


@dataclass
class SweepPlan:
    name: str
    out_dir: Path
    device: str
    ray: RaySettings
    pack: PackSettings
    metrics: MetricsSpec
    axes: dict[str, list]
    analysis: dict[str, str | list[str]]  # temperature, load: knobs; claims: claim names
    config: dict  # the composed base config (for the manifest)
    variants: list[Variant] = field(default_factory=list)
    checkpoints: bool = False  # save each variant's checkpoint under <results>/checkpoints/
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    notes: list[str] = field(default_factory=list)  # one line each, printed before the sweep

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.results_dir / "checkpoints" if self.checkpoints else None

    @property
    def results_dir(self) -> Path:
        return self.out_dir / self.name


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Every config group and its options: the files under ``conf_dir`` and
    :data:`STORED_OPTIONS`."""
    return {
        d.name: sorted({p.stem for p in d.glob("*.yaml")} | set(STORED_OPTIONS.get(d.name, ())))
        for d in sorted(conf_dir.iterdir())
        if d.is_dir() and not d.name.startswith((".", "_"))
    }


def _axis_values(override: Override, groups: dict[str, list[str]]) -> list:
    key = override.key_or_group
    value = override.value()
    if isinstance(value, Glob):
        if key not in groups:
            raise ConfigError(
                f"{key}=glob(...) is only allowed on a config group; groups: {', '.join(groups)}"
            )
        return value.filter(groups[key])
    try:
        return list(override.sweep_iterator())
    except HydraException as exc:
        raise ConfigError(
            f"{override.input_line}: {exc}; an axis needs a list, range(...) or choice(...)"
        ) from exc


def parse_overrides(
    args: list[str], groups: dict[str, list[str]]
) -> tuple[list[str], dict[str, list]]:
    """Split command-line overrides into scalar ones (handed to Hydra) and sweep axes. For one
    key, the later override wins (``model.width=8,16 model.width=8`` fixes the width)."""
    parser = OverridesParser.create()
    scalars: dict[str, str] = {}
    axes: dict[str, list] = {}
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except HydraException as exc:
            raise ConfigError(f"cannot parse override {arg!r}: {str(exc).splitlines()[0]}") from exc
        key = override.key_or_group
        if override.is_sweep_override():
            scalars.pop(key, None)
            axes[key] = _axis_values(override, groups)
            options = [axes[key]] if key in groups else []
        else:
            axes.pop(key, None)
            scalars[key] = arg
            options = [[override.value()]] if key in groups else []
        for opts in options:
            for opt in opts:
                if str(opt) not in groups[key]:
                    raise ConfigError(
                        f"{key}={opt} is not a known option; allowed: {', '.join(groups[key])}"
                    )
    return list(scalars.values()), axes


def _compose(overrides: list[str], conf_dir: Path) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line_hydra_error(exc, overrides)) from exc


def _one_line_hydra_error(exc: Exception, overrides: list[str]) -> str:
    text = " ".join(str(exc).split())
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in text or f"'{key.split('.')[-1]}'" in text:
            return f"{key} is not a known key (in override {ov!r}); {text}"
    return text


# Sections whose keys are the user's own (a sweep preset's axes and analysis roles).
FREE_SECTIONS = ("sweep.axes.", "sweep.analysis.")


def _check_scalar_keys(scalars: list[str], groups: dict[str, list[str]], conf_dir: Path) -> None:
    """Name an unknown key in a scalar override before Hydra does (its message spans lines).
    ``+key=value`` is checked too: the config tree is closed, so a key it lacks is a typo."""
    parser = OverridesParser.create()
    parsed = [parser.parse_override(s) for s in scalars]
    group_overrides = [o.input_line for o in parsed if o.key_or_group in groups]
    keyed = [
        o
        for o in parsed
        if o.key_or_group not in groups
        and not o.is_delete()
        and not o.key_or_group.startswith(("hydra", *FREE_SECTIONS))
    ]
    if not keyed:
        return
    plain = OmegaConf.to_container(_compose(group_overrides, conf_dir), resolve=False)
    for o in keyed:
        _set_path(copy.deepcopy(plain), o.key_or_group, o.value())


def _set_path(d: dict, dotted: str, value: Any) -> None:
    node = d
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            parent = ".".join(parts[:i]) or "the config root"
            allowed = (
                ", ".join(sorted(node)) if isinstance(node, dict) else "nothing (not a section)"
            )
            raise ConfigError(
                f"{dotted} is not a known key (got {value!r}); allowed under {parent}: {allowed}"
            )
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def _preset_axes(cfg: DictConfig, groups: dict[str, list[str]]) -> dict[str, list]:
    raw = OmegaConf.to_container(cfg.sweep.get("axes") or {}, resolve=True)
    parser = OverridesParser.create()
    axes = {}
    for key, spec in raw.items():
        if isinstance(spec, list):
            axes[key] = spec
        else:  # a string in Hydra's sweep grammar, e.g. "range(2,6)" or "4,8,16"
            axes[key] = (
                _axis_values(parser.parse_override(f"{key}={spec}"), groups)
                if "," in str(spec) or "(" in str(spec)
                else [spec]
            )
    return axes


class _VariantBuilder:
    """``Variant.from_dict`` with memory: a grid of 10,000 variants has a few hundred distinct
    sets of sections and a few seeds, and building (type-checking) a section is the slow part
    of expansion. Each distinct input is still validated by ``Variant.from_dict`` itself."""

    def __init__(self) -> None:
        self._bases: dict[str, Variant] = {}
        self._seeds: dict[str, int] = {}

    def __call__(self, d: dict) -> Variant:
        sections = {k: v for k, v in d.items() if k != "seed"}
        key = canonical_json(sections)
        if key not in self._bases:
            self._bases[key] = Variant.from_dict(sections)
        seed = json.dumps(d.get("seed", 0))  # "1", "true" and "1.0" stay apart
        if seed not in self._seeds:
            self._seeds[seed] = Variant.from_dict({"seed": d.get("seed", 0)}).seed
        return dataclasses.replace(self._bases[key], seed=self._seeds[seed])


def validate_variant(v: Variant) -> None:
    """Checks that need the data set's size or the optimiser; raised before anything runs."""
    ignored = ignored_knobs(v.optim)
    if ignored:
        knob, value = next(iter(ignored.items()))
        raise ConfigError(
            f"optim.{knob}={value} has no effect with optim={v.optim.name}, which reads "
            f"{', '.join(READS[v.optim.name])} of the optimiser's own settings: leave it out "
            "(from the command line or the sweep preset), or sweep it only with an optimiser "
            "that reads it"
        )
    n = subset_size(v.data, train_set_size(v.data))
    if v.optim.batch_size > n:
        raise ConfigError(
            f"optim.batch_size must be <= the training set size ({n} for data.name={v.data.name}, "
            f"data.subset={v.data.subset}), got {v.optim.batch_size}"
        )


def _check_writable(out_dir: Path) -> None:
    """The nearest existing ancestor must be a directory we can create files in (tried for real,
    with a temporary file that is gone again at once: root ignores permission bits)."""
    probe = out_dir.absolute()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(
            f"out_dir must be a writable directory, got {str(out_dir)!r} ({exc})"
        ) from exc


def plan_sweep(args: list[str], conf_dir: Path = CONF_DIR) -> SweepPlan:
    """Compose, expand and validate. Raises ConfigError (one line) on any bad input."""
    groups = config_groups(conf_dir)
    scalars, cli_axes = parse_overrides(args, groups)
    if "metrics" in cli_axes:
        raise ConfigError(
            "metrics cannot be a sweep axis; run the sweep again with another metrics preset"
        )
    _check_scalar_keys(scalars, groups, conf_dir)
    base = _compose(scalars, conf_dir)
    axes = _preset_axes(base, groups)
    for ov in scalars:  # a fixed value on the command line replaces the preset's axis
        axes.pop(ov.split("=", 1)[0], None)
    axes.update(cli_axes)
    for key, values in axes.items():
        if not values:
            given = next((a for a in args if a.split("=", 1)[0] == key), f"sweep.axes.{key}")
            raise ConfigError(
                f"sweep axis {key} has no values (from {given!r}); an axis needs a non-empty "
                "list, range(...) with start < stop, or a glob(...) that matches an option"
            )
    _check_group_names(scalars, axes, groups)
    _check_size(axes, base.sweep.get("max_variants", MAX_VARIANTS))

    group_axes = {k: v for k, v in axes.items() if k in groups}
    scalar_axes = {k: v for k, v in axes.items() if k not in groups}
    variants: dict[str, Variant] = {}
    build = _VariantBuilder()
    for combo in itertools.product(*group_axes.values()):
        group_overrides = [f"{k}={v}" for k, v in zip(group_axes, combo)]
        cfg = base if not combo else _compose(scalars + group_overrides, conf_dir)
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain = {k: plain[k] for k in (*VARIANT_SECTIONS, "seed")}
        for values in itertools.product(*scalar_axes.values()):
            d = copy.deepcopy(plain)
            for key, value in zip(scalar_axes, values):
                _set_path(d, key, value)
            try:
                v = build(d)
            except ConfigError as exc:
                raise ConfigError(_as_typed(str(exc), args)) from exc
            variants.setdefault(v.variant_id, v)
    for v in variants.values():
        validate_variant(v)
    notes = _duplicate_notes(axes, len(variants))

    run = OmegaConf.to_container(base, resolve=True)
    pack = build_spec(PackSettings, run.get("pack") or {}, "pack")
    if not isinstance(run["out_dir"], str) or not run["out_dir"].strip():
        raise ConfigError(f"out_dir must be a directory path, got {run['out_dir']!r}")
    out_dir = Path(run["out_dir"])
    _check_writable(out_dir)
    if run["device"] not in ("auto", "cpu") and not re.fullmatch(
        r"cuda(:\d+)?", str(run["device"])
    ):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {run['device']!r}")
    sweep = run["sweep"]
    name = sweep.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            "sweep.name must be a directory name (letters, digits, '.', '_', '-'; results go to "
            f"out_dir/<sweep.name>), got {name!r}"
        )
    analysis = _analysis_roles(sweep.get("analysis") or {})
    ray = build_spec(RaySettings, run.get("ray") or {}, "ray")
    metrics = build_spec(MetricsSpec, run["metrics"], "metrics")
    _check_metrics_fit(metrics, variants.values())
    if ray.resolved_address() == "local":  # a cluster's nodes may see another data.root, GPUs
        check_device(str(run["device"]))
        for spec in {v.data for v in variants.values()}:
            check_files(spec)
    return SweepPlan(
        name=name,
        out_dir=out_dir,
        device=str(run["device"]),
        ray=ray,
        pack=pack,
        metrics=metrics,
        axes=axes,
        analysis=analysis,
        config=run,
        variants=list(variants.values()),
        checkpoints=_checkpoints(run),
        tracker=build_spec(TrackerSettings, run.get("tracker") or {}, "tracker"),
        notes=notes,
    )


def _duplicate_notes(axes: dict[str, list], n_variants: int) -> list[str]:
    """One line per axis that lists a value more than once (``model.width=8,8``): each variant
    runs once, so the sweep is smaller than the product of the axes' lengths."""
    notes = []
    for key, values in axes.items():
        seen: dict[str, int] = {}
        for value in values:
            text = canonical_json(value)
            seen[text] = seen.get(text, 0) + 1
        repeated = [json.loads(t) for t, n in seen.items() if n > 1]
        if repeated:
            listed = ", ".join(str(r) for r in repeated)
            notes.append(
                f"note: the axis {key} lists {listed} more than once ({len(values)} values, "
                f"{len(seen)} distinct); each variant runs once: {n_variants} variants, not "
                f"{math.prod(len(v) for v in axes.values())}"
            )
    return notes


_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")


def _as_typed(message: str, args: list[str]) -> str:
    """A bad value from a command-line axis, also as the user typed it: Hydra's grammar reads
    ``optim.lr=0,01`` as the two values 0 and 1, and the error names the parsed 0.0."""
    for arg in args:
        key, eq, text = arg.lstrip("+").partition("=")
        if not eq or not message.startswith(f"{key} "):
            continue
        hint = ""
        if _DECIMAL_COMMA.fullmatch(text):
            hint = (
                f"; ',' separates the values of an axis (here {', '.join(text.split(','))}): "
                f"a decimal number is written with '.', {key}={text.replace(',', '.')}"
            )
        return f"{message} (from {arg!r} as typed{hint})"
    return message


def check_fits_this_machine(plan: SweepPlan, ray_started: bool = False) -> None:
    """For the embedded Ray instance, before it starts and before anything is written: a
    worker's share must fit this machine (:func:`check_local_resources`, unless a Ray instance
    is already running in this process, whose resources count then) and every pack its device
    (:func:`check_memory`). Not in :func:`plan_sweep`: a GPU preset is planned on a laptop to
    be shown (``--cfg job``) or sent to a cluster. On a cluster, its resources count: the
    runner checks them as soon as it has joined, also before anything is written."""
    if plan.ray.resolved_address() != "local":
        return
    if not ray_started:
        check_local_resources(plan.ray)
    check_memory(plan.variants, plan.device, plan.pack.max_members)


def check_local_resources(ray: RaySettings) -> None:
    """A worker's share must fit the embedded Ray instance, which has this machine's CPUs (or
    ray.num_cpus) and GPUs: otherwise no worker could start."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ray.gpus_per_worker > gpus:
        raise ConfigError(
            f"ray.gpus_per_worker must be <= the GPUs of this machine ({gpus}), where the embedded "
            f"Ray instance runs, got {ray.gpus_per_worker:g}; a cluster's GPUs count when joining "
            "one (ray.address=HOST:PORT)"
        )
    cpus = ray.num_cpus or os.cpu_count() or 1
    if ray.cpus_per_worker > cpus:
        where = f"ray.num_cpus={ray.num_cpus}" if ray.num_cpus else "this machine's"
        raise ConfigError(
            f"ray.cpus_per_worker must be <= the CPUs of the embedded Ray instance ({cpus}, "
            f"{where}), got {ray.cpus_per_worker:g}"
        )


def device_memory(device: str) -> tuple[str, int]:
    """(what, bytes): the memory a pack may use on ``device`` as this machine resolves it:
    a CUDA device's total memory, or for the CPU the machine's available RAM."""
    import psutil
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "this machine's available memory", int(psutil.virtual_memory().available)
    index = int(device.partition(":")[2] or 0)
    total = torch.cuda.get_device_properties(index).total_memory
    return f"the memory of cuda:{index}", int(total)


def _size_knobs(v: Variant) -> str:
    """The knobs that set a member's memory, as the command line writes them."""
    m = v.model
    depth = f" model.depth={m.depth}" if m.name == "mlp" else ""
    return (
        f"model={m.name} model.width={m.width}{depth} optim.batch_size={v.optim.batch_size} "
        f"(data={v.data.name})"
    )


def check_memory(variants: list[Variant], device: str, max_members: int) -> None:
    """Refuse a sweep whose packs cannot fit the device, by the estimate of training memory
    the runner plans with (:func:`landscape.pack.member_bytes`). On a GPU a pack too large is
    trained a few members at a time, so one member must fit; on the CPU a pack trains all its
    members at once, so the largest pack must fit the machine's available memory."""
    from landscape.datasets import DATA_SETS
    from landscape.pack import make_packs, member_bytes

    if not variants:
        return
    what, have = device_memory(device)
    on_cpu = what.startswith("this machine")
    estimates: dict[tuple, int] = {}

    def need(v: Variant) -> int:
        key = (v.model, v.data.name, v.optim.name, v.optim.batch_size, v.train.precision)
        if key not in estimates:
            record = DATA_SETS[v.data.name]
            estimates[key] = member_bytes(
                v, record.shape_of(v.data), record.classes_of(v.data), record.vocab_of(v.data)
            )
        return estimates[key]

    packs = make_packs(variants, max_members) if on_cpu else [[v] for v in variants]
    pack = max(packs, key=lambda p: len(p) * need(p[0]))
    one = need(pack[0])
    total = len(pack) * one
    if total <= have:
        return
    members = f"a pack of {len(pack)} members" if len(pack) > 1 else "one pack member"
    fits = have // one
    then = (
        f"; pack.max_members={fits} would fit"
        if fits >= 1
        else "; use a smaller model or batch size"
    )
    raise ConfigError(
        f"{_size_knobs(pack[0])}: {members} needs about {_bytes(total)} by the estimate of "
        f"training memory ({_bytes(one)} each), more than {what} ({_bytes(have)}, "
        f"device={device}){then}"
    )


def _bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


_NAME = re.compile(r"[\w.\-]+")
MAX_VARIANTS = 100_000  # sweep.max_variants when the config does not say


def _check_size(axes: dict[str, list], max_variants: Any) -> None:
    """Refuse a grid larger than ``sweep.max_variants`` before expanding it (a million variants
    take minutes and gigabytes to plan): the count, and the key to raise."""
    if isinstance(max_variants, bool) or not isinstance(max_variants, int) or max_variants < 1:
        raise ConfigError(f"sweep.max_variants must be an integer >= 1, got {max_variants!r}")
    n = math.prod(len(values) for values in axes.values())
    if n > max_variants:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items())
        raise ConfigError(
            f"the sweep has {n:,} variants ({sizes}), more than sweep.max_variants={max_variants:,}: "
            f"sweep fewer values, or raise the limit (sweep.max_variants={n}) to run them all"
        )


def check_device(device: str) -> None:
    """The device must exist on this machine (checked for local runs: a cluster's workers may
    have GPUs the driver lacks). ``auto`` and ``cpu`` always do."""
    if device in ("auto", "cpu"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device}: this machine has no usable CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use device=auto or "
            "device=cpu, or join a cluster with GPUs (ray.address=...)"
        )
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"device={device}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
            f"(cuda:0 to cuda:{count - 1})"
        )


# Groups whose options each set their own ``<group>.name`` (the registry key).
NAMED_GROUPS = ("model", "data", "optim")


def _check_group_names(
    scalars: list[str], axes: dict[str, list], groups: dict[str, list[str]]
) -> None:
    """``model.name`` (or data.name, optim.name) set apart from its group would keep the
    other group's keys (``model=cnn model.name=mlp``): the group chooses the name."""
    given = {k.lstrip("+"): v for k, v in (s.split("=", 1) for s in scalars)} | axes
    for key, value in given.items():
        group, _, leaf = key.partition(".")
        if leaf == "name" and group in NAMED_GROUPS:
            raise ConfigError(
                f"{key} cannot be set on its own (got {value!r}): choose the {group} with "
                f"{group}=<option> (a sweep: {group}=a,b); options: {', '.join(groups[group])}"
            )


def _analysis_roles(analysis: dict) -> dict[str, str | list[str]]:
    """``sweep.analysis``: knob names by role as strings, and ``claims``, the names of the
    literature claims the sweep tests, a list (``landscape-claims``, which runs them, checks
    the names)."""
    out: dict[str, str | list[str]] = {}
    for role, value in analysis.items():
        if role != "claims":
            out[role] = str(value)
            continue
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not names:
            raise ConfigError(
                f"sweep.analysis.claims must be a non-empty list of claim names, got {value!r}"
            )
        out[role] = [str(n) for n in names]
    return out


def _check_metrics_fit(metrics: MetricsSpec, variants) -> None:
    """Metric settings that must fit every variant's training run."""
    epochs = metrics.trajectory.epochs
    if metrics.trajectory.enabled and epochs:
        shortest = min(v.train.epochs for v in variants)
        late = [e for e in epochs if e > shortest]
        if late:
            raise ConfigError(
                f"metrics.trajectory.epochs must be <= train.epochs ({shortest} for the shortest "
                f"variant), got {list(epochs)}"
            )


def _checkpoints(run: dict) -> bool:
    value = run.get("checkpoints", False)
    if not isinstance(value, bool):
        raise ConfigError(f"checkpoints must be true or false, got {value!r}")
    if run["metrics"].get("cross", {}).get("enabled") and not value:
        raise ConfigError(
            "metrics.cross.enabled=true needs checkpoints=true (pairs are read from checkpoints), got checkpoints=false"
        )
    return value
