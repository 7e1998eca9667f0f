"""The README's and the docs' commands work as written, read by a real ``bash``: every bash
block parses (``bash -n``: a syntax error such as an unquoted ``choice(...)`` fails), every
``landscape-sweep`` command in them, as bash splits its words, is accepted (planned, as
``--cfg job`` plans it before printing), the list of config files is the config tree, and the
five-minute tour runs in order through bash (slow: it trains the demo)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from landscape.data import TORCHVISION_SOURCES
from landscape.variant import ConfigError
from sweeps.config import STORED_OPTIONS, config_groups, plan_sweep

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # landscape-sweep, landscape-report: the installed commands


def bash_blocks() -> list[tuple[str, str]]:
    """(page, block) for every ```bash block of the README and the docs."""
    return [
        (page.name, block)
        for page in PAGES
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.M | re.S)
    ]


def test_every_bash_block_parses_in_bash():
    blocks = bash_blocks()
    assert len(blocks) >= 5 and any(page == "cluster.md" for page, _ in blocks)
    for page, block in blocks:
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert done.returncode == 0, f"{page}: {done.stderr}\n{block}"


def test_bash_n_catches_an_unquoted_sweep_function():
    """The check above can fail: the tour's command 4 as it was written before."""
    bad = "landscape-sweep optim.lr=choice(0.01,0.05) seed=range(2)\n"
    done = subprocess.run(["bash", "-n"], input=bad, capture_output=True, text=True)
    assert done.returncode != 0 and "syntax error" in done.stderr


def test_the_readme_says_how_to_install_pytorchs_cpu_build():
    """Before ``make`` (which installs into .venv only what is missing), from PyTorch's CPU
    wheel index; the Makefile itself stays a plain install."""
    (block,) = [b for page, b in bash_blocks() if page == "README.md" and "whl/cpu" in b]
    lines = block.splitlines()
    pip = next(i for i, line in enumerate(lines) if "--index-url" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[pip]
    assert "torch" in lines[pip].split() and lines[pip].startswith(".venv/bin/python -m pip")
    assert any(line.startswith("make ") for line in lines[pip + 1 :])
    assert "index-url" not in (REPO / "Makefile").read_text()


# Commands that need more than a plan: a results directory, Hydra's help and completion, the
# version (each tested in tests/sweeps/test_cli.py)
NOT_PLANNED = ("status", "compact", "--help", "-h", "-sc", "--version")


def sweep_commands(tmp_path: Path) -> list[tuple[str, list[str]]]:
    """Every ``landscape-sweep`` line of the bash blocks, as bash splits its words: a bash that
    runs the lines with ``landscape-sweep`` a function writing its arguments to a file (not to
    stdout: ``eval "$(landscape-sweep ...)"`` reads that)."""
    lines = [
        (page, line.strip())
        for page, block in bash_blocks()
        for line in block.splitlines()
        if re.match(r"\s*(eval \"\$\()?landscape-sweep\b", line)
    ]
    record = tmp_path / "calls"
    script = "\n".join(
        [
            "set -e",
            "HEAD_IP=127.0.0.1",
            'landscape-sweep() { printf "%s\\0" "$@" "<end>" >> "$RECORD"; }',
            *(line for _, line in lines),
        ]
    )
    subprocess.run(["bash", "-c", script], env={**os.environ, "RECORD": str(record)}, check=True)
    calls, current = [], []
    for word in record.read_text().split("\0")[:-1]:
        if word == "<end>":
            calls.append(current)
            current = []
        else:
            current.append(word)
    assert len(calls) == len(lines), (lines, calls)
    return [(page, args) for (page, _), args in zip(lines, calls)]


def test_every_landscape_sweep_command_in_the_docs_is_accepted(tmp_path):
    root = tmp_path / "data"  # (empty) torchvision files where planning looks for them
    for source in TORCHVISION_SOURCES.values():
        (root / source.folder).mkdir(parents=True, exist_ok=True)
        for name in source.files:
            (root / source.folder / name).touch()
    commands = sweep_commands(tmp_path)
    assert any("optim.lr=choice(0.01,0.05)" in args for _, args in commands)  # quoted, one word
    planned = 0
    for page, args in commands:
        if any(a in NOT_PLANNED for a in args):
            continue
        flags = [a for a in args if a.startswith("-")]
        assert set(flags) <= {"--cfg", "job", "--quiet", "--no-report"}, (page, args)
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        out = f"out_dir={tmp_path / 'results'}"
        try:  # a generated data set (data=modular) has no data.root; torchvision's need one
            plan_sweep([*overrides, out])
        except ConfigError as exc:
            if "data.root" not in str(exc):
                raise
            plan_sweep([*overrides, out, f"data.root={root}"])
        planned += 1
    assert planned >= 6
    assert not (tmp_path / "results").exists()


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
    """Each of the tour's command lines, as written, through bash, with the installed commands
    first on PATH; step 1 and step 2 print what the README shows."""
    took, outputs = [], []
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in tour_commands():
        t0 = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        took.append(round(time.monotonic() - t0))
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        outputs.append(done.stdout)
    assert "sweep demo: 40 variants, 0 already finished (skipped), 40 to run" in outputs[0]
    assert "sweep demo: 40 variants, 40 already finished (skipped), 0 to run" in outputs[1]
    print("seconds per command:", took)
    assert sum(took) < 15 * 60  # a five-minute tour on a laptop; this machine's 2 shared cores
