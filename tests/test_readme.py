"""The README's commands work as written: its list of config files is the config tree, and
its five-minute tour runs in order (slow: it trains the demo)."""

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.config import STORED_OPTIONS, config_groups

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_readme_lists_every_config_file():
    listed = {}
    for group, names in re.findall(r"^ +conf/(\w+)/\{([^}]*)\}\.yaml", README, re.M):
        # plus the options stored in code (metrics/base), which the line names in words
        listed[group] = sorted({*names.split(","), *STORED_OPTIONS.get(group, ())})
    # conf/data/<name>.yaml: one per data set record (tests/landscape/test_data.py checks that)
    for group in re.findall(r"^ +conf/(\w+)/<name>\.yaml", README, re.M):
        listed[group] = config_groups().get(group)
    assert listed == config_groups()


def tour_commands() -> list[str]:
    block = README.split("## A five-minute tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [
        line.split("  #")[0].strip()
        for line in block.splitlines()
        if line.startswith("landscape-sweep")
    ]


def test_the_tour_has_its_commands():
    commands = tour_commands()
    assert commands[0] == "landscape-sweep" and len(commands) == 6


@pytest.mark.slow
def test_the_tour_runs_as_written_in_order(tmp_path):
    took = []
    for command in tour_commands():
        t0 = time.monotonic()
        args = shlex.split(command)[1:]
        done = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
            env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        )
        took.append(round(time.monotonic() - t0))
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    print("seconds per command:", took)
    assert sum(took) < 15 * 60  # a five-minute tour on a laptop; this machine's 2 shared cores
