"""What a results directory was made from, and whether a new command may add to it.

``manifest.json`` (plain JSON, never a pickle) holds the composed config, the axes (the
union over every command that added to the directory), the planned variant ids, the code
and package versions, and the catalogue (:mod:`landscape.catalogue`: the data sets used,
the knobs' roles, each table's columns), from which ``analysis`` reads names. A command may
add to a results directory when its *base config* matches: the composed config with the
axes left out (their values are the sweep) and the run-only keys left out (where and how it
runs, which metrics it measures: metrics have their own check, by ``metrics_id``), the keys
that variant ids leave out among them (where the data lives, how the packed step is
launched).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

from landscape.catalogue import catalogue
from landscape.datasets import DATA_SETS
from landscape.metrics.registry import metric_catalogue
from landscape.variant import ADDED_KNOBS, LAUNCH_KNOBS, ConfigError
from sweeps.config import SweepPlan
from sweeps.store import code_version, package_versions

# Keys that may differ between commands adding to one results directory.
RUN_ONLY = ("ray", "out_dir", "device", "pack", "metrics", "sweep", "checkpoints", "tracker")


def _plain(obj: Any) -> Any:
    """The value as it reads back from manifest.json (tuples become lists, and so on)."""
    return json.loads(json.dumps(obj, default=str))


def base_config(config: dict, axes: list[str]) -> dict:
    """``config`` without run-only keys and without the axes (a group axis such as ``model``
    drops its whole section; ``model.width`` drops one key)."""
    base = copy.deepcopy(_plain(config))
    for key in RUN_ONLY:
        base.pop(key, None)
    for knob, default in ADDED_KNOBS.items():  # an absent added knob reads as its default
        section, _, leaf = knob.partition(".")
        node = base.get(section)
        if isinstance(node, dict) and node.get(leaf, default) == default:
            node.pop(leaf, None)
    for axis in [*LAUNCH_KNOBS, *axes]:
        node = base
        *parents, leaf = axis.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return base


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    missing = object()
    return [
        f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}".replace(repr(missing), "(absent)")
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    ]


def check_same_base(old: dict | None, plan: SweepPlan, force: bool) -> list[str]:
    """Raise ConfigError when ``plan`` has another base config than the directory's manifest
    (unless ``force``); returns the differences (empty when none or no manifest)."""
    if not old or "config" not in old:
        return []
    axes = sorted(set(old.get("axes", {})) | set(plan.axes))
    diffs = config_differences(base_config(old["config"], axes), base_config(plan.config, axes))
    if diffs and not force:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(
            f"{plan.results_dir} holds a sweep with another base config ({shown}); "
            "choose another sweep.name or out_dir, or pass --force to add these variants to it anyway"
        )
    return diffs


def build_manifest(
    plan: SweepPlan, old: dict | None, variant_ids: list[str], forced: list[str]
) -> dict:
    old = old or {}
    axes = dict(old.get("axes", {}))
    for key, values in plan.axes.items():  # extending an axis keeps the values run before
        merged = list(axes.get(key, []))
        merged += [v for v in _plain(values) if v not in merged]
        axes[key] = merged
    now = datetime.now(timezone.utc).isoformat()
    history = list(old.get("forced", []))
    if forced:
        history.append({"at": now, "differences": forced})
    # the data sets of every command that added to the directory (records as they are now)
    old_data = (old.get("catalogue") or {}).get("data") or {}
    old_name = ((old.get("config") or {}).get("data") or {}).get("name")
    named = [*old_data, old_name, *axes.get("data", []), *axes.get("data.name", [])]
    names = {v.data.name for v in plan.variants} | {
        n for n in named if isinstance(n, str) and n in DATA_SETS
    }
    return {
        "sweep": plan.name,
        "config": plan.config,
        "axes": axes,
        "analysis": plan.analysis,
        "variants": len(variant_ids),
        "variant_ids": variant_ids,  # this command's plan: ``status`` counts what is left of it
        "code_version": code_version(),
        "versions": package_versions(),
        "created": old.get("created", now),
        "updated": now,  # when this command started (``status`` measures throughput from here)
        **({"forced": history} if history else {}),
        # each table's column types, as every part has them (the store keeps this up to date)
        **({"schemas": old["schemas"]} if old.get("schemas") else {}),
        # the store brings its tables' columns up to date with the schemas
        "catalogue": catalogue(
            names,
            axes=axes,
            analysis=plan.analysis,
            schemas=old.get("schemas"),
            metrics=metric_catalogue(plan.metrics),
        ),
    }
