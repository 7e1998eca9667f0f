"""docs/slurm/landscape.sbatch, its Ray part on this machine: SLURM's commands are stand-ins
(``scontrol`` names one node, ``srun`` runs its command here, ``hostname --ip-address`` says
127.0.0.1); ``ray start``, the token, the join and the sweep are real."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.sweeps.conftest import TINY
from tests.sweeps.test_join import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "slurm" / "landscape.sbatch"

STANDINS = {
    # scontrol show hostnames NODELIST: one name per line
    "scontrol": 'echo "$SLURM_JOB_NODELIST" | tr , "\\n"\n',
    # srun [options] command...: the command, here (its options name nodes and task counts)
    "srun": (
        'while [[ "$1" == -* ]]; do\n'
        '  if [[ "$1" == -w ]]; then shift 2; else shift; fi\n'
        "done\n"
        'exec "$@"\n'
    ),
    "hostname": 'if [[ "$1" == --ip-address ]]; then echo 127.0.0.1; else command hostname; fi\n',
}


def test_the_sbatch_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.slow
def test_the_sbatch_script_starts_ray_runs_the_sweep_and_stops_ray(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STANDINS.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must be short
    extra = " ".join(
        f"{flag}={free_port()}"
        for flag in (
            "--ray-client-server-port",
            "--dashboard-port",
            "--dashboard-agent-listen-port",
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))},
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HOME": str(home),
        "RAY_TMPDIR": ray_tmp,
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_CPUS_PER_TASK": "2",
        "LANDSCAPE_RAY_PORT": str(free_port()),
        "LANDSCAPE_RAY_HEAD_ARGS": extra,
    }
    out = tmp_path / "results"
    job = subprocess.Popen(
        ["bash", str(SCRIPT), *TINY, f"out_dir={out}", "--quiet", "--no-report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = job.communicate(timeout=400)
    assert job.returncode == 0, stderr[-3000:]
    assert f"joining the Ray cluster at 127.0.0.1:{env['LANDSCAPE_RAY_PORT']}" in stdout
    runs = pd.read_parquet(out / "demo" / "runs")
    assert len(runs) == 8 and set(runs.status) == {"ok"}
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if ray_tmp in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == [], "the job's Ray processes outlived it"
