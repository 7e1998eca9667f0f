"""Pairs between replicate-group members that were trained in different packs (a group larger
than pack.max_members, a pack split or retried member by member, a seed run again): measured
after training from checkpoints, once; without checkpoints the sweep says what is missing."""

import subprocess
import sys

import pandas as pd
import pytest

from sweeps.passes import group_pairs_pass, missing_group_pairs
from sweeps.store import Store
from tests.sweeps.conftest import tiny_plan

ONE_GROUP = ["model.width=4", "seed=0,1,2", "metrics.distance.enabled=true"]


def _recorded(tmp_path, *extra):
    """A results directory whose 3 seeds finished ok but only seeds 0 and 1 shared a pack."""
    plan = tiny_plan(tmp_path, *ONE_GROUP, *extra)
    store = Store(plan.results_dir)
    ids = [v.variant_id for v in plan.variants]
    store.write_pack(
        {
            "runs": [
                {"variant_id": ids[0], "status": "ok"},
                {"variant_id": ids[1], "status": "ok"},
            ],
            "pairs": [{"variant_a": ids[0], "variant_b": ids[1], "l2_distance": 1.0}],
        }
    )
    store.write_pack({"runs": [{"variant_id": ids[2], "status": "ok"}]})
    return plan, store, ids


def test_missing_pairs_are_those_across_packs_within_max_pairs(tmp_path):
    plan, store, ids = _recorded(tmp_path)
    [(members, pairs)] = missing_group_pairs(plan, store, ids)
    assert [v.seed for v in members] == [0, 1, 2]
    assert pairs == [(0, 2), (1, 2)]
    plan2 = tiny_plan(tmp_path, *ONE_GROUP, "metrics.max_pairs=2")
    assert missing_group_pairs(plan2, store, ids)[0][1] == [(0, 2)]  # 1 recorded + 1 = 2
    plan1 = tiny_plan(tmp_path, *ONE_GROUP, "metrics.max_pairs=1")
    assert missing_group_pairs(plan1, store, ids) == []


def test_without_checkpoints_the_sweep_says_which_pairs_are_missing(tmp_path):
    plan, store, ids = _recorded(tmp_path)
    lines: list[str] = []
    group_pairs_pass(plan, store, ids, lines.append)
    assert len(lines) == 1 and lines[0].startswith("2 pairs between replicate-group members")
    assert "checkpoints=true" in lines[0]
    assert len(pd.read_parquet(plan.results_dir / "pairs")) == 1  # nothing written


@pytest.mark.slow
def test_a_group_split_across_packs_gets_every_pair_from_checkpoints(tmp_path):
    args = [
        "out_dir=results", "data=synthetic", "model=mlp", "train.epochs=1", "optim.batch_size=64",
        "metrics=fast", "metrics.hessian_trace.enabled=false", "ray.num_cpus=2", "--no-report",
        "checkpoints=true", "pack.max_members=2", *ONE_GROUP,
    ]  # fmt: skip

    def sweep():
        cmd = [sys.executable, "-m", "sweeps.cli", *args]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    out = sweep()
    assert "group pairs: measuring 2 pairs of 1 replicate groups" in out
    results = tmp_path / "results" / "demo"
    runs = pd.read_parquet(results / "runs")
    pairs = pd.read_parquet(results / "pairs")
    assert len(runs) == 3 and runs.pack_id.nunique() == 2  # the group was split: 2 + 1
    by_seed = runs.set_index("variant_id").seed
    assert sorted(tuple(sorted((by_seed[a], by_seed[b]))) for a, b in zip(pairs.variant_a, pairs.variant_b)) == [(0, 1), (0, 2), (1, 2)]  # fmt: skip
    assert pairs.l2_distance.notna().all() and (pairs.l2_distance > 0).all()
    assert pairs.group_id.nunique() == 1
    again = sweep()  # nothing missing any more: nothing measured twice
    assert "group pairs" not in again
    assert len(pd.read_parquet(results / "pairs")) == 3
