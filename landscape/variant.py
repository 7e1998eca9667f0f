"""One fully resolved point of a sweep, as frozen typed objects.

A :class:`Variant` is what the science sees: model, data, optimisation and training
settings plus a seed. Its ``variant_id`` is a short hash of its canonical JSON, so the same
point always gets the same id (resume and extend rely on this), whatever the key order or
the process that computed it. Metric settings live apart (:class:`MetricsSpec`, hashed into
``metrics_id``): adding a metric must not rename trained models.

Validation happens here, at construction, so every entry point (Hydra, a notebook, a test)
gets the same one-line errors: ``ValueError("optim.lr must be > 0, got -1.0")``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from landscape.datasets import DATA_NAMES, DATA_SETS

MODEL_NAMES = ("mlp", "cnn", "resnet18", "vgg9", "transformer")
OPTIM_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16")
PACK_STEPS = ("auto", "vmap", "loop", "packed")
CHECKPOINTS = ("final", "best_train_loss")
MODULAR_OPERATIONS = ("add", "sub", "mul", "div", "x2_xy_y2")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


class ConfigError(ValueError):
    """A user-facing configuration error; its message names the key, the value and what is allowed."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, "one of " + ", ".join(allowed))


# Roles of a setting, declared once on its dataclass field (``setting(...)``) and read by every
# identity, manifest and catalogue that needs them:
# - launch: how a result is computed or where its inputs live, never what it is (where data
#   lives, how the same kernels are launched, how a Hessian-vector product is evaluated): left
#   out of ``variant_id`` / ``metrics_id``, so changing it keeps results current;
# - before: a setting added after results existed, with the value that reproduces what was
#   computed before it: at that value it is left out of the identity (ids stay what they were)
#   and an absent key reads as it.
_ABSENT = object()


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    launch: bool = False,
    before: Any = _ABSENT,
) -> Any:
    """A dataclass field with its role (see above) in ``metadata``."""
    metadata: dict[str, Any] = {}
    if launch:
        metadata["launch"] = True
    if before is not _ABSENT:
        metadata["before"] = before
    return field(default=default, default_factory=default_factory, metadata=metadata)


def launch_keys(spec_cls: type, prefix: str) -> list[str]:
    """``prefix.name`` of every launch-only field of a settings dataclass, nested ones included."""
    return [key for key, f in _walk(spec_cls, prefix) if f.metadata.get("launch")]


def added_keys(spec_cls: type, prefix: str) -> dict[str, Any]:
    """``prefix.name`` -> the value that reproduces the old behaviour, for every added field."""
    return {
        key: f.metadata["before"] for key, f in _walk(spec_cls, prefix) if "before" in f.metadata
    }


def _walk(spec_cls: type, prefix: str):
    for f in dataclasses.fields(spec_cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _walk(type(default), key)
        else:
            yield key, f


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mlp"  # registry key in landscape.models
    width: int = (
        32  # hidden units (mlp) or channels of the first stage (cnn, resnet18: k, 2k, 4k, 8k)
    )
    depth: int = 2  # hidden layers (mlp only)
    batch_norm: bool = False
    skip: bool = (
        True  # residual connections (resnet18 only; False reproduces Li et al.'s no-skip nets)
    )
    # transformer only (width is d_model, depth the number of blocks)
    heads: int = setting(4, before=4)  # attention heads (must divide width)
    mlp_ratio: int = setting(4, before=4)  # MLP hidden units = mlp_ratio * width
    patch: int = setting(2, before=2)  # patch side for image inputs (a ViT)

    def __post_init__(self) -> None:
        _choice("model.name", self.name, MODEL_NAMES)
        _require(
            isinstance(self.width, int) and self.width > 0,
            "model.width",
            self.width,
            "an integer > 0",
        )
        _require(
            isinstance(self.depth, int) and self.depth > 0,
            "model.depth",
            self.depth,
            "an integer > 0",
        )
        for key in ("heads", "mlp_ratio", "patch"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value > 0, f"model.{key}", value, "an integer > 0")


@dataclass(frozen=True)
class DataSpec:
    name: str = "digits"
    # where torchvision's data sets live (their records' folders are under it)
    root: str = setting("data", launch=True)
    download: bool = setting(False, launch=True)
    subset: float = (
        1.0  # training subset: a fraction in (0, 1], or a count > 1 (seeded per variant)
    )
    label_noise: float = (
        0.0  # exact fraction of training labels replaced by a different random label
    )
    # the seed of the subset and label-noise draws: null, the variant's own seed (each seed
    # of a point sees its own subset and noisy labels); an integer, shared by every seed (Yang
    # et al.: one noisy-label set per noise level for all seeds)
    sample_seed: int | None = setting(None, before=None)
    normalize: bool = True  # per-channel standardisation with training-set statistics
    augment: bool = False  # on-device random crop (padding 4) and horizontal flip
    # synthetic data only: a seeded Gaussian mixture (the data seed is fixed per data set, not per variant)
    n_train: int = 1024
    n_test: int = 512
    n_features: int = 32
    n_classes: int = 4
    class_sep: float = 1.5
    data_seed: int = (
        0  # synthetic: the mixture and its draw; parity: the relevant bits and the draw
    )
    # modular arithmetic only (data=modular): a op b mod p over every pair, split by split_seed
    modulus: int = setting(97, before=97)  # p, a prime: vocab p + 1 (token p is "="), p classes
    operation: str = setting("add", before="add")  # add, sub, mul, div (b != 0), x2_xy_y2
    train_fraction: float = setting(0.3, before=0.3)  # of all pairs, in (0, 1)
    split_seed: int = setting(0, before=0)
    # sparse parity only (data=parity; sizes are n_train and n_test, the draw data_seed)
    n_bits: int = setting(40, before=40)
    k: int = setting(3, before=3)  # relevant bits, the label their XOR

    @property
    def modular_pairs(self) -> int:
        """Pairs (a, b) of data=modular: p^2, or p (p - 1) for div (b != 0)."""
        return self.modulus * (self.modulus - 1 if self.operation == "div" else self.modulus)

    @property
    def modular_vocab(self) -> int:
        """Tokens of data=modular: 0 .. p - 1 and "=" (token p)."""
        return self.modulus + 1

    @property
    def modular_train_size(self) -> int:
        return round(self.train_fraction * self.modular_pairs)

    @property
    def modular_test_size(self) -> int:
        return self.modular_pairs - self.modular_train_size

    def __post_init__(self) -> None:
        _choice("data.name", self.name, DATA_NAMES)
        _require(
            isinstance(self.modulus, int) and not isinstance(self.modulus, bool)
            and is_prime(self.modulus),
            "data.modulus",
            self.modulus,
            "a prime (2, 3, 5, 7, ..., 97, ...)",
        )  # fmt: skip
        _choice("data.operation", self.operation, MODULAR_OPERATIONS)
        _require(
            0 < self.train_fraction < 1, "data.train_fraction", self.train_fraction, "in (0, 1)"
        )
        if self.name == "modular":
            _require(
                0 < self.modular_train_size < self.modular_pairs,
                "data.train_fraction",
                self.train_fraction,
                f"a fraction that leaves at least one of the {self.modular_pairs} pairs "
                f"(data.modulus={self.modulus}) in each of the training and test sets",
            )
        _require(
            isinstance(self.split_seed, int) and self.split_seed >= 0,
            "data.split_seed",
            self.split_seed,
            "an integer >= 0",
        )
        _require(
            isinstance(self.n_bits, int) and self.n_bits >= 1, "data.n_bits", self.n_bits,
            "an integer >= 1",
        )  # fmt: skip
        _require(
            isinstance(self.k, int) and 1 <= self.k <= self.n_bits,
            "data.k",
            self.k,
            f"an integer in [1, data.n_bits={self.n_bits}]",
        )
        _require(
            not (self.augment and DATA_SETS[self.name].vocab != 0),
            "data.augment",
            self.augment,
            f"false for data.name={self.name} (its inputs are token ids: no crop or flip applies)",
        )
        _require(
            self.sample_seed is None
            or (isinstance(self.sample_seed, int) and not isinstance(self.sample_seed, bool)
                and self.sample_seed >= 0),
            "data.sample_seed",
            self.sample_seed,
            "null (the variant's seed) or an integer >= 0",
        )  # fmt: skip
        _require(self.subset > 0, "data.subset", self.subset, "a fraction in (0, 1] or a count > 1")
        _require(
            self.subset <= 1 or float(self.subset).is_integer(),
            "data.subset",
            self.subset,
            "a fraction in (0, 1] or a whole count > 1",
        )
        _require(0 <= self.label_noise < 1, "data.label_noise", self.label_noise, "in [0, 1)")
        for key in ("n_train", "n_test", "n_features"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value > 0, f"data.{key}", value, "an integer > 0")
        _require(self.n_classes >= 2, "data.n_classes", self.n_classes, "an integer >= 2")


@dataclass(frozen=True)
class OptimSpec:
    name: str = "sgd"
    lr: float = 0.1
    batch_size: int = 64  # 0: the whole training set in one batch (full batch: one step per epoch)
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False
    weight_decay: float = 0.0  # L2 added to the gradient (decoupled for adamw)
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8
    alpha: float = 0.99  # rmsprop smoothing
    schedule: str = "constant"
    step_at: tuple[float, ...] = (
        0.75,
    )  # step schedule: fractions of training where lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs
    lr_ref_batch_size: int = 0  # > 0: lr scales linearly as lr * batch_size / lr_ref_batch_size
    # per-layer multipliers by parameter-name pattern, e.g. {"head.*": 10.0}; the longest match wins
    # (a mapping in the config; kept as sorted (pattern, multiplier) pairs so the spec stays hashable)
    lr_multipliers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, OPTIM_NAMES)
        _require(0 < self.lr < math.inf, "optim.lr", self.lr, "finite and > 0")
        _require(
            isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
            and self.batch_size >= 0,
            "optim.batch_size",
            self.batch_size,
            "an integer > 0, or 0 for the whole training set (full batch)",
        )  # fmt: skip
        _require(
            not (self.batch_size == 0 and self.lr_ref_batch_size > 0),
            "optim.lr_ref_batch_size",
            self.lr_ref_batch_size,
            "0 with optim.batch_size=0 (full batch: scale optim.lr by hand)",
        )
        _require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        _require(
            0 <= self.weight_decay < math.inf, "optim.weight_decay", self.weight_decay,
            "finite and >= 0",
        )  # fmt: skip
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _require(0 < self.eps < math.inf, "optim.eps", self.eps, "finite and > 0")
        _require(0 <= self.alpha < 1, "optim.alpha", self.alpha, "in [0, 1)")
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _require(0 < self.gamma < math.inf, "optim.gamma", self.gamma, "finite and > 0")
        _require(
            all(0 < s < 1 for s in self.step_at),
            "optim.step_at",
            self.step_at,
            "fractions in (0, 1)",
        )
        _require(
            0 <= self.warmup_epochs < math.inf, "optim.warmup_epochs", self.warmup_epochs,
            "finite and >= 0",
        )  # fmt: skip
        pairs = (
            self.lr_multipliers.items()
            if isinstance(self.lr_multipliers, dict)
            else self.lr_multipliers
        )
        object.__setattr__(
            self, "lr_multipliers", tuple(sorted((str(k), float(v)) for k, v in pairs))
        )
        for pattern, mult in self.lr_multipliers:
            _require(
                0 <= mult < math.inf, f"optim.lr_multipliers.{pattern}", mult, "finite and >= 0"
            )

    def batch_for(self, n_train: int) -> int:
        """The batch size on a training set of ``n_train`` examples (0: all of them)."""
        return self.batch_size or n_train


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    drop_last: bool = True  # Yang et al. drop the last incomplete batch
    checkpoint: str = (
        "final"  # or best_train_loss (Yang et al.: metrics on the lowest-training-loss epoch)
    )
    precision: str = "fp32"
    compile: bool = False
    # on a CUDA device, record the packed step once and replay it
    cuda_graphs: bool = setting(True, launch=True)
    # vmap | loop | packed | auto: how members share kernels (StepFn)
    pack_step: str = setting("auto", launch=True)
    # loop step on a CUDA device: members spread over this many streams
    pack_streams: int = setting(1, launch=True)
    # evaluation (curve rows) on a schedule: 0 = after every epoch; N > 0 = every N steps and
    # at the last step
    eval_every: int = setting(0, before=0)
    # 0 = off; K > 0 = about K log-spaced steps in [1, total steps] and the last (overrides
    # eval_every)
    eval_points: int = setting(0, before=0)

    def __post_init__(self) -> None:
        for key in ("eval_every", "eval_points"):
            value = getattr(self, key)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"train.{key}",
                value,
                "an integer >= 0 (0: after every epoch)" if key == "eval_every" else
                "an integer >= 0 (0: off)",
            )  # fmt: skip
        _require(
            isinstance(self.epochs, int) and self.epochs >= 1,
            "train.epochs",
            self.epochs,
            "an integer >= 1",
        )
        _choice("train.checkpoint", self.checkpoint, CHECKPOINTS)
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.pack_step", self.pack_step, PACK_STEPS)
        _require(
            isinstance(self.pack_streams, int) and not isinstance(self.pack_streams, bool)
            and self.pack_streams >= 1,
            "train.pack_streams",
            self.pack_streams,
            "an integer >= 1",
        )  # fmt: skip


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON of a dataclass or plain structure."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def short_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


SECTIONS = {"model": ModelSpec, "data": DataSpec, "optim": OptimSpec, "train": TrainSpec}
# knobs that change how a run is launched, not what it computes (left out of variant ids)
LAUNCH_KNOBS = tuple(k for name, cls in SECTIONS.items() for k in launch_keys(cls, name))
# knobs added after results existed -> the value that reproduces the results before them
ADDED_KNOBS = {k: v for name, cls in SECTIONS.items() for k, v in added_keys(cls, name).items()}


@dataclass(frozen=True)
class Variant:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0"
        )

    @functools.cached_property
    def variant_id(self) -> str:
        """Hash of every knob that can change a result: where the data files live
        (``data.root``) and whether they may be downloaded are left out, so a cluster whose
        nodes keep the data elsewhere computes the same ids."""
        return short_hash(self.identity())

    @functools.cached_property
    def group_id(self) -> str:
        """Replicate group: the same point with the seed left out."""
        identity = self.identity()
        del identity["seed"]
        return short_hash(identity)

    def identity(self) -> dict[str, Any]:
        flat = self.flat()
        for key in LAUNCH_KNOBS:
            del flat[key]
        for key, default in ADDED_KNOBS.items():
            if flat[key] == default:
                del flat[key]
        return flat

    def flat(self) -> dict[str, Any]:
        """Every knob as a flat ``section.key`` column, tuples as lists."""
        out: dict[str, Any] = {}
        for section in ("model", "data", "optim", "train"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                if (
                    key == "lr_multipliers"
                ):  # Parquet needs one type per column: the mapping as JSON
                    value = json.dumps(dict(value), sort_keys=True) if value else None
                out[f"{section}.{key}"] = list(value) if isinstance(value, (tuple, list)) else value
        out["seed"] = self.seed
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        """Build from nested plain dicts (as OmegaConf.to_container gives); unknown keys fail loudly."""
        kwargs: dict[str, Any] = {}
        for name, spec_cls in SECTIONS.items():
            kwargs[name] = build_spec(spec_cls, d.get(name, {}), name)
        kwargs["seed"] = _check_type("seed", d.get("seed", 0), int)
        return cls(**kwargs)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check a config value against a field's type hint; ints are accepted (and converted) for floats."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if (
            isinstance(value, dict) and typing.get_origin(args[0]) is tuple
        ):  # a mapping -> (key, value) pairs
            value = list(value.items())
        if value is None and args[-1] is Ellipsis:  # null for a list: empty
            value = ()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if args[-1] is Ellipsis:
            return tuple(_check_type(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} entries, got {value!r}")
        return tuple(_check_type(key, v, a) for v, a in zip(value, args))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _TYPE_NAMES and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key} must be {_TYPE_NAMES[hint]}, got {value!r}")
    return value


@functools.cache
def _type_hints(spec_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(spec_cls)


def build_spec(spec_cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct a (possibly nested) spec dataclass from a dict, naming unknown keys and
    checking every value's type against the field's annotation."""
    known = {f.name: f for f in dataclasses.fields(spec_cls)}
    hints = _type_hints(spec_cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key} is not a known key (got {value!r}); allowed: {', '.join(sorted(known))}"
            )
        default = (
            known[key].default_factory()
            if known[key].default_factory is not dataclasses.MISSING
            else known[key].default
        )  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}.{key} must be a section of keys, got {value!r}")
            value = build_spec(type(default), value, f"{prefix}.{key}")
        else:
            value = _check_type(f"{prefix}.{key}", value, hints[key])
        kwargs[key] = value
    return spec_cls(**kwargs)
