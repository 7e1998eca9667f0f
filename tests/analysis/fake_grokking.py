"""A generated grokking sweep (weight decay x training fraction x 2 seeds) with planted phases,
written as Parquet the way the sweep driver writes one (``runs``, ``curves``, ``trajectory``
and ``manifest.json``), for the grokking claims.

Evaluations at the 31 log-spaced steps ``round(10^(i/10))``, i = 10..40 (10 to 10^4). Training
accuracy crosses (and holds) at step 100 except at weight decay 10 (confusion: it
never fits). Test accuracy crosses at ``TEST_INDEX[(wd, fraction)]`` (+1 for seed 1) where
the model generalises; without weight decay, and at the fraction 0.2 for every weight decay,
it never does (memorisation). The delay falls with both weight decay and training fraction.
The weight norm falls along training while test accuracy rises (``norm_falls``), or rises.

With ``pairs``, a ``pairs`` table (one seed pair per cell) whose metrics are planted by the
pair's phase (:data:`PAIR_PLANT`, read from the phases the curves above give its two runs:
``mixed`` when they differ, as at weight decay 3, fraction 0.5); the curve of the cell
:data:`UNCONVERGED` is still improving (``bezier_improvement`` 0.5) and its mc is -99.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .fake_results import _write_table

WEIGHT_DECAYS = (0.0, 0.3, 1.0, 3.0, 10.0)
FRACTIONS = (0.2, 0.3, 0.5, 0.7)
SEEDS = (0, 1)
STEPS = np.round(10 ** (np.arange(10, 41) / 10)).astype(int)  # 10 ... 10^4, 31 distinct
TRAIN_STEP = 100
TEST_INDEX = {  # index into STEPS of the test crossing, seed 0
    (0.3, 0.3): 27, (0.3, 0.5): 24, (0.3, 0.7): 21,
    (1.0, 0.3): 25, (1.0, 0.5): 22, (1.0, 0.7): 19,
    (3.0, 0.3): 23, (3.0, 0.5): 20, (3.0, 0.7): 17,
}  # fmt: skip

PAIR_PLANT = {  # phase of a pair -> (l2_distance, cka_linear_softmax, barrier_error, mc)
    "comprehension": (10.0, 0.9, 5.0, -1.0),
    "grokking": (12.0, 0.8, 10.0, -2.0),
    "memorisation": (30.0, 0.5, 60.0, -20.0),
    "confusion": (50.0, 0.3, 80.0, -40.0),
    "mixed": (20.0, 0.7, 30.0, -5.0),
}
UNCONVERGED = (0.0, 0.7)  # memorisation; its curve's mc reads -99 and is still improving


def pair_phase(wd: float, fraction: float, plant: dict | None = None) -> str:
    """The planted phase of the cell's seed pair (both seeds' phases, or ``mixed``)."""
    phases = set()
    for seed in SEEDS:
        t = test_step(wd, fraction, seed, plant)
        if wd >= 10:
            phases.add("confusion")
        elif t is None:
            phases.add("memorisation")
        else:
            phases.add("comprehension" if t <= 10 * TRAIN_STEP else "grokking")
    return phases.pop() if len(phases) == 1 else "mixed"


def test_step(wd: float, fraction: float, seed: int, plant: dict | None = None) -> int | None:
    """The planted step at which test accuracy crosses 90% and holds, or None."""
    i = (plant or TEST_INDEX).get((wd, fraction))
    return None if i is None else int(STEPS[i + seed])


test_step.__test__ = False  # not a test, though pytest would collect it by name


def write_grokking(
    root: Path,
    norm_falls: bool = True,
    trajectory: bool = True,
    plant: dict | None = None,
    pairs: bool = False,
) -> Path:
    """The sweep under ``root``; ``plant`` replaces :data:`TEST_INDEX`."""
    runs, curves, traj, pair_rows = [], [], [], []
    for wd in WEIGHT_DECAYS:
        for f in FRACTIONS:
            for seed in SEEDS:
                vid = f"wd{wd}-f{f}-s{seed}"
                runs.append(
                    {"variant_id": vid, "optim.weight_decay": wd, "data.train_fraction": f,
                     "seed": seed, "status": "ok"}
                )  # fmt: skip
                t_test = test_step(wd, f, seed, plant)
                for k, s in enumerate(STEPS):
                    fits = wd < 10 and s >= TRAIN_STEP
                    train = 1.0 if fits else 0.2 + 0.5 * s / STEPS[-1]
                    test = 1.0 if t_test is not None and s >= t_test else 0.1 + 0.3 * s / STEPS[-1]
                    curves.append({"variant_id": vid, "epoch": int(s), "step": int(s),
                                   "train_acc": train, "test_acc": test})  # fmt: skip
                    norm = 50.0 - k if norm_falls else 10.0 + k
                    traj.append({"variant_id": vid, "step": int(s), "param_norm": norm})
            dist, cka, barrier, mc = PAIR_PLANT[pair_phase(wd, f, plant)]
            stuck = (wd, f) == UNCONVERGED
            pair_rows.append(
                {"group_id": f"wd{wd}-f{f}", "variant_a": f"wd{wd}-f{f}-s0",
                 "variant_b": f"wd{wd}-f{f}-s1", "l2_distance": dist, "cka_linear_softmax": cka,
                 "barrier_error": barrier, "mc": -99.0 if stuck else mc,
                 "bezier_improvement": 0.5 if stuck else 0.01}
            )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    _write_table(pd.DataFrame(runs), root / "runs")
    _write_table(pd.DataFrame(curves), root / "curves")
    if trajectory:
        _write_table(pd.DataFrame(traj), root / "trajectory")
    if pairs:
        _write_table(pd.DataFrame(pair_rows), root / "pairs")
    manifest = {
        "sweep": "grokking_fake",
        "axes": {
            "optim.weight_decay": list(WEIGHT_DECAYS),
            "data.train_fraction": list(FRACTIONS),
            "seed": list(SEEDS),
        },
        "analysis": {"temperature": "optim.weight_decay", "load": "data.train_fraction"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root
