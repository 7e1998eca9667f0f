"""A plain (non-editable) install works: the wheel carries the config tree, and the installed
command composes a config from it, away from the checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_listed_packages_are_the_tree():
    """pyproject lists the packages (conf/ ships as sweeps.conf): the list must name every
    folder of Python modules under the three top-level packages."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(d.relative_to(ROOT).parts)
        for top in ("landscape", "sweeps", "analysis")
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and any(d.glob("*.py"))
    }
    assert set(listed["packages"]) == found | {"sweeps.conf"}
    assert listed["package-dir"] == {"sweeps.conf": "conf"}


def test_a_wheel_installs_and_runs_without_the_checkout(tmp_path):
    wheels, target, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # built from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("landscape", "sweeps", "analysis", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = wheels.glob("landscape_sweeps-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert (target / "sweeps" / "conf" / "sweep" / "taxonomy_cifar10.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import sweeps.config as c; print(c.CONF_DIR)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()) == target / "sweeps" / "conf"
    job = subprocess.run(
        [str(target / "bin" / "landscape-sweep"), "--cfg", "job", "model.width=7"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    assert "width: 7" in job.stdout
    assert not (tmp_path / "results").exists()
    # no checkout of this code around the installed code (a git repository that does not
    # track it, as a virtual environment inside some other checkout): no commit, says so
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    version = subprocess.run(
        [str(target / "bin" / "landscape-sweep"), "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.stdout.strip() == (
        "landscape-sweep 0.1.0 (installed from a wheel or sdist: no git commit recorded)"
    ), version.stderr
