"""The grokking presets measure the landscape between seeds at the end of training: distance,
CKA on real inputs (token ids cannot be mixed up), the linear barrier and a Bezier curve, on
the same weight decay x training fraction grid the report's grokking section draws."""

from __future__ import annotations

import pytest

from sweeps.config import plan_sweep


@pytest.mark.parametrize("preset", ["grokking_cpu", "grokking_modadd"])
def test_grokking_preset_measures_pairs_between_its_seeds(preset, tmp_path):
    plan = plan_sweep([f"sweep={preset}", f"out_dir={tmp_path}"])
    m = plan.metrics
    assert m.any_pairs
    assert m.distance.enabled and m.cka.enabled and m.barrier.enabled and m.bezier.enabled
    assert m.cka.inputs != "mixup"  # refused on token data; the models' own inputs
    assert m.bezier.lr == 0.01 and m.bezier.momentum == 0.9  # Yang et al.'s curve optimiser
    assert m.bezier.max_pairs == 0  # two seeds: one pair per cell, every pair gets its curve
    seeds = plan.axes["seed"]
    assert len(seeds) >= 2  # a pair per cell needs two seeds
    # every cell of the two analysis knobs holds all its seeds (the pair's members)
    cells: dict[tuple, set] = {}
    for v in plan.variants:
        flat = v.flat()
        cell = (flat["optim.weight_decay"], flat["data.train_fraction"])
        cells.setdefault(cell, set()).add(v.seed)
    assert all(s == set(seeds) for s in cells.values())
    assert len(cells) == len(plan.axes["optim.weight_decay"]) * len(
        plan.axes["data.train_fraction"]
    )
