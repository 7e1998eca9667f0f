"""The command as a user runs it: a real process, real exit codes, real files (or none). Most
bad-input cases run the same entry point in this process (a process costs seconds)."""

import subprocess
import sys

import pytest

from sweeps import cli
from tests.sweeps.conftest import command

SWEEP = [sys.executable, "-m", "sweeps.cli"]


def run(args, cwd):
    return subprocess.run([*SWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# Bad input of each kind (a config value, a flag, Hydra's printing flags) in a real process
IN_A_PROCESS = ("model=gpt", "--frobnicate", "--cfg job model=gpt")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model=gpt", "model=gpt is not a known option"),
        ("model.widht=4", "model.widht is not a known key"),
        ("optim.lr=0", "optim.lr must be finite and > 0, got 0.0"),
        (
            "optim.batch_size=-1",
            "optim.batch_size must be an integer > 0, or 0 for the whole training set (full batch), got -1",
        ),
        ("optim.batch_size=100000", "optim.batch_size must be <= the training set size"),
        ("model.width=0", "model.width must be an integer > 0, got 0"),
        ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
        ("--frobnicate", "unknown flag --frobnicate"),
        ("-x", "unknown flag -x; allowed: --retry-failed"),
        ("+foo=1", "foo is not a known key (got 1); allowed under the config root"),
        ("ray.num_cpus=-2", "ray.num_cpus must be an integer >= 1 or null, got -2"),
        ("data=mnist data.root=nowhere", "data.name=mnist: no usable MNIST files in"),
        ("--cfg job model=gpt", "model=gpt is not a known option"),
        ("--cfg job model.width=range(", "cannot parse override 'model.width=range('"),
        ("--cfg bogus", "--cfg must be one of job, hydra, all, got 'bogus'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, override, fragment
):
    args = [*override.split(), "out_dir=results"]
    if override in IN_A_PROCESS:
        result = run(args, tmp_path)
        status, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        status, stderr = command(args), capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_dir_exits_2(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a directory")
    result = run(["out_dir=blocker/results"], tmp_path)
    assert result.returncode == 2
    assert "out_dir must be a writable directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_hydra_cfg_job_prints_the_composed_config_and_runs_nothing(tmp_path):
    result = run(["--cfg", "job", "model=cnn", "model.width=12"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: cnn" in result.stdout and "width: 12" in result.stdout
    assert "sweep:" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_hydra_help_lists_config_groups(tmp_path):
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("model", "data", "optim", "metrics", "sweep"):
        assert f"{group}:" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_version_and_multirun_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert command(["--version"]) == 0
    assert capsys.readouterr().out.startswith("landscape-sweep 0.1.0 (code ")
    # a sweep is already a multirun: -m / --multirun are accepted, not refused
    shown = run(["-m", "--multirun", "--cfg", "job", "model.width=12"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "width: 12" in shown.stdout
    assert list(tmp_path.iterdir()) == []


def test_hydra_shell_completion(tmp_path):
    install = run(["-sc", "install=bash"], tmp_path)
    assert (
        install.returncode == 0
        and "complete -o nospace -o default -F hydra_bash_completion" in install.stdout
    )
    query = subprocess.run(
        [*SWEEP, "-sc", "query=bash"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COMP_LINE": "landscape-sweep model="},
    )
    assert query.stdout.split() == [
        "model=cnn",
        "model=mlp",
        "model=resnet18",
        "model=transformer",
        "model=vgg9",
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_report_is_its_own_command_and_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """The sweep draws its report with ``landscape-report``'s code in a child process started
    with the sweep (the report itself: tests/analysis; a sweep that draws one:
    test_end_to_end.py). The child draws only when told: cancelled, it ends having written
    nothing; told to draw into a full disk, the sweep says so in one line."""
    assert "import analysis.report" in cli._REPORT_CHILD  # landscape-report's own main
    report = cli._Report(tmp_path)
    assert report.proc.args[3:] == [str(tmp_path), "--out", str(tmp_path / "report")]
    report.cancel()
    assert report.proc.returncode is not None and list(tmp_path.iterdir()) == []

    full_disk = (
        "import sys\n"
        "assert sys.stdin.readline() == 'draw\\n'\n"
        "sys.exit('Traceback (most recent call last):\\nOSError: [Errno 28] No space left on device')"
    )
    monkeypatch.setattr(cli, "_REPORT_CHILD", full_disk)
    assert cli._Report(tmp_path).draw() == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"no space left on the device of {tmp_path} while writing the report" in lines[0]
    assert f"run `landscape-report {tmp_path}`" in lines[0]
