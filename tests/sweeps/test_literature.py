"""The literature presets, run for real (local Ray, digits), reproduce their claims.

Slow: each is a whole sweep. What the rule computes is tested against hand-computed
values in tests/analysis/test_claims.py; this checks that the measurements behind two of
the claims come out of the real pipeline the way the literature says they do."""

import json
import subprocess
import sys

import pytest

from analysis.claims import main as claims_main


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, claim",
    [("literature_lr", "lr_stiffens_classes"), ("literature_diverge", "lr_diverges")],
)
def test_the_preset_reproduces_its_claim(tmp_path, preset, claim):
    cmd = [sys.executable, "-m", "sweeps.cli", f"sweep={preset}", "out_dir=results"]
    cmd += ["ray.num_cpus=2", "--quiet", "--no-report"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "claims.json"
    assert claims_main([str(tmp_path / "results" / preset), "--json", str(out)]) == 0
    verdicts = {v["claim"]: v for v in json.loads(out.read_text())["verdicts"]}
    assert set(verdicts) == {claim}  # the preset names its claims; only those are tested
    assert verdicts[claim]["verdict"] == "reproduced", verdicts[claim]
