"""``landscape-sweep``: compose, expand, run on Ray, write Parquet, draw the report.

    landscape-sweep                                   # the demo sweep, embedded local Ray
    landscape-sweep sweep=demo model.width=4,8,16 optim.batch_size=16,64 seed=0,1,2
    landscape-sweep ray.address=auto ...              # join a running Ray cluster
    landscape-sweep --cfg job                         # Hydra prints the composed config
    landscape-sweep --help                            # Hydra's help: groups and options
    eval "$(landscape-sweep -sc install=bash)"        # shell completion (Hydra's; zsh, fish too)
    landscape-sweep status results/demo               # counts, failures by error, throughput, ETA
    landscape-sweep compact results/demo              # merge many small Parquet parts into few

Running the same command again resumes a sweep (finished variants are skipped); new values
on an axis train only the new variants. Flags:

    --retry-failed   run variants recorded as failed again (their old rows are replaced)
    --remeasure      retrain variants measured with other metrics settings (rows replaced)
    --force          add to a results directory whose base config differs
    --no-report      skip the HTML report        --quiet   no progress bar
    --version        print the version and exit   -m, --multirun   accepted (a sweep is one)

Bad input (unknown option or key, invalid value, unwritable out_dir) prints one line naming
the key, the value and what is allowed, exits with 2 and writes nothing. So does a refused
results directory (another driver holds it, another base config, other metrics settings) and
a Ray cluster that cannot be joined, and, before the embedded Ray instance starts, a worker
share this machine lacks (``ray.gpus_per_worker``) or a pack whose estimated memory cannot fit
its device. An axis listing a value twice is said in one line. Ctrl-C or SIGTERM stops the sweep within seconds with one
line (exit 130 or 143); a full disk ends it with one line (exit 1); both keep what finished,
and the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from landscape.variant import ConfigError

# Hydra's own flags: these are handed to Hydra's entry point, which prints and runs nothing.
HYDRA_FLAGS = (
    "--cfg",
    "-c",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--resolve",
    "--package",
    "-p",
)
OUR_FLAGS = {
    "--retry-failed": "run variants recorded as failed again",
    "--multirun": "accepted and ignored: a sweep is already a multirun",
    "-m": "the same as --multirun",
    "--remeasure": "retrain variants measured with other metrics settings",
    "--force": "add to a results directory whose base config differs",
    "--no-report": "skip the HTML report",
    "--quiet": "no progress bar",
}
# Hydra's shell completion: ``eval "$(landscape-sweep -sc install=bash)"`` (bash, zsh, fish)
COMPLETION_FLAGS = ("-sc", "--shell-completion")
COMMANDS = ("status", "compact")
CFG_PARTS = ("job", "hydra", "all")


def _hydra_passthrough(args: list[str]) -> int:
    import hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweeps.config import CONF_DIR

    parser = OverridesParser.create()
    kept = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            kept.append(arg)
            continue
        if parser.parse_override(arg).is_sweep_override():
            print(f"(sweep axis {arg} is not shown in the composed config)", file=sys.stderr)
        else:
            kept.append(arg)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def _app(cfg) -> None:  # only reached without a printing flag, which we never pass here
        pass

    sys.argv = ["landscape-sweep", *kept]
    _app()
    return 0


def _checked_passthrough(args: list[str]) -> int:
    """Hydra's printing flags, after the same checks a run makes (Hydra's own messages span
    many lines): ``--cfg``/``-c`` takes job, hydra or all; the overrides must plan a sweep."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--cfg", "-c"):
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value not in CFG_PARTS:
                return _error(f"{name} must be one of {', '.join(CFG_PARTS)}, got {value!r}")
    if not any(a in ("--help", "-h", "--hydra-help") for a in args):
        from sweeps.config import plan_sweep

        try:
            plan = plan_sweep([a for a in args if "=" in a and not a.startswith("-")])
        except ConfigError as exc:
            return _error(str(exc))
        for note in plan.notes:  # stdout is the composed config
            print(note, file=sys.stderr)
    return _hydra_passthrough(args)


def _error(message: str) -> int:
    print(f"landscape-sweep: error: {message}", file=sys.stderr)
    return 2


class _CommandParser(argparse.ArgumentParser):
    """A command's arguments; a bad one is one line, as everywhere in ``landscape-sweep`` (not
    argparse's usage block), and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.exit(_error(f"{self.prog.split()[-1]}: {message} (see --help)"))


def _command(name: str, args: list[str]) -> int:
    """``status <dir>`` or ``compact <dir> [--max-rows N]``."""
    about = {
        "status": "counts by status, failures by error, throughput and ETA (reads only)",
        "compact": "merge many small Parquet parts into few with the same rows (crash-safe)",
    }
    parser = _CommandParser(prog=f"landscape-sweep {name}", description=about[name])
    parser.add_argument("results_dir", help="a sweep's results directory, e.g. results/demo")
    if name == "compact":
        parser.add_argument(
            "--max-rows", type=int, default=None, help="runs rows per compacted part"
        )
    opts = parser.parse_args(args)
    root = Path(opts.results_dir)
    if not (root / "runs").is_dir() and not (root / "manifest.json").is_file():
        return _error(
            f"{opts.results_dir} is not a sweep's results directory (no runs/ or manifest.json)"
        )
    if name == "status":
        from sweeps.status import format_status, sweep_status

        try:
            print(format_status(sweep_status(root)))
        except ConfigError as exc:  # a damaged manifest
            return _error(str(exc))
        return 0
    from sweeps.lock import ResultsLock, ResultsLockedError
    from sweeps.store import COMPACT_ROWS, Store

    if opts.max_rows is not None and opts.max_rows < 1:
        return _error(f"--max-rows must be >= 1, got {opts.max_rows}")
    store = Store(root)
    try:
        with ResultsLock(root):
            for line in store.recover().lines():
                print(line)
            before_parts = {t: len(store.parts(t)) for t in store.tables()}
            before, after = store.compact(opts.max_rows or COMPACT_ROWS)
            after_parts = {t: len(store.parts(t)) for t in store.tables()}
    except ResultsLockedError as exc:
        return _error(str(exc))
    changes = ", ".join(f"{t} {before_parts.get(t, 0)} -> {n}" for t, n in after_parts.items())
    print(f"compacted {before} pack commits into {after} ({changes} parts)")
    return 0


def _version() -> str:
    from importlib import metadata

    from sweeps.store import DISTRIBUTION, INSTALLED, code_version

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    code = code_version()
    if code.endswith(f"({INSTALLED})"):
        return f"landscape-sweep {version} ({INSTALLED})"
    return f"landscape-sweep {version} (code {code})"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return _command(args[0], args[1:])
    if "--version" in args:
        print(_version())
        return 0
    args = [a for a in args if a not in ("-m", "--multirun")]  # a sweep is already a multirun
    if any(a.split("=", 1)[0] in COMPLETION_FLAGS for a in args):
        return _hydra_passthrough(args)  # Hydra's shell completion: install, or answer a query
    if any(a.split("=", 1)[0] in HYDRA_FLAGS for a in args):
        return _checked_passthrough(args)
    flags = {a for a in args if a.startswith("-")}
    unknown = flags - set(OUR_FLAGS)
    if unknown:
        allowed = ", ".join([*OUR_FLAGS, "--version", "--cfg job", "--help"])
        return _error(f"unknown flag {sorted(unknown)[0]}; allowed: {allowed}")
    overrides = [a for a in args if not a.startswith("-")]
    from sweeps.signals import Stopped, stop_on_signals

    stop_on_signals()
    try:
        return _sweep(overrides, flags, " ".join(["landscape-sweep", *args]))
    except Stopped as stop:  # before the sweep read its results directory
        print(
            f"landscape-sweep: stopped by {stop.name} before anything was written", file=sys.stderr
        )
        return stop.exit_status


def _sweep(overrides: list[str], flags: set[str], command: str) -> int:
    from sweeps.config import plan_sweep

    try:
        plan = plan_sweep(overrides)
    except ConfigError as exc:
        return _error(str(exc))
    for note in plan.notes:
        print(note)

    from sweeps.runner import wait_for_ray_shutdown

    try:
        return _run_and_report(plan, flags, command)
    finally:
        wait_for_ray_shutdown()  # the embedded instance ends while the report is drawn


def _run_and_report(plan, flags: set[str], command: str) -> int:
    report = None if "--no-report" in flags else _Report(plan.results_dir)
    try:
        status = _run(plan, flags, command)
        return report.draw() if report is not None and status == 0 else status
    finally:
        if report is not None:
            report.cancel()


def _run(plan, flags: set[str], command: str) -> int:
    from sweeps.runner import DiskFull, SweepStopped, run_sweep

    try:
        summary = run_sweep(
            plan,
            progress="--quiet" not in flags,
            retry_failed="--retry-failed" in flags,
            remeasure="--remeasure" in flags,
            force="--force" in flags,
            shutdown_later=True,
        )
    except ConfigError as exc:
        return _error(str(exc))
    except SweepStopped as stop:
        from sweeps.signals import Stopped, received

        signal_ = received() or Stopped(signal.SIGINT)  # a plain KeyboardInterrupt: Ctrl-C
        if stop.summary is None:
            done = f"stopped by {signal_.name} before anything was written"
        else:
            done = f"stopped by {signal_.name}: {stop.summary.finished_line()}"
        print(f"landscape-sweep: {done}; run `{command}` again to resume", file=sys.stderr)
        return signal_.exit_status
    except DiskFull as full:
        done = full.summary.finished_line() if full.summary else "nothing was written"
        print(
            f"landscape-sweep: error: no space left on the device of {plan.results_dir}: {done}; "
            f"free some space and run `{command}` again to resume",
            file=sys.stderr,
        )
        return 1
    from sweeps.status import end_of_sweep

    for line in end_of_sweep(plan, summary, command):
        print(line)
    return 0


# How a child process's error says that the disk is full (Python's and pyarrow's alike)
DISK_FULL = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT))
# The report's child: its imports (pandas, matplotlib, seaborn, the analysis: about 1.5 s on a
# 2-core CPU) while the sweep runs, then ``landscape-report``'s own main once told to draw
_REPORT_CHILD = (
    "import sys\n"
    "import analysis.report as report\n"
    "sys.exit(report.main(sys.argv[1:]) if sys.stdin.readline() == 'draw\\n' else 0)"
)


class _Report:
    """Draw the report with its own command's code, ``landscape-report``, in a child process
    (the sweep's code never imports the analysis'), started with the sweep so that it has
    imported what it needs by the time the results are in; it reads them only when told to
    draw. A full disk is one line and exit 1, as is any other failure after the child's own
    message: the sweep's results are complete either way, and ``landscape-report`` draws the
    report again."""

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir
        self.out = results_dir / "report"
        cmd = [sys.executable, "-c", _REPORT_CHILD, str(results_dir), "--out", str(self.out)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def cancel(self) -> None:
        """End the child if it was not told to draw (it has written nothing)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def draw(self) -> int:
        _, stderr = self.proc.communicate("draw\n")
        if self.proc.returncode == 0:
            sys.stderr.write(stderr)  # warnings, as the report command prints them
            print(f"report:  {self.out / 'index.html'}")
            return 0
        if any(text in stderr for text in DISK_FULL):
            what = f"no space left on the device of {self.results_dir} while writing the report"
            then = "free some space and run"
        else:
            sys.stderr.write(stderr)
            what, then = f"the report failed (exit {self.proc.returncode}, above)", "run"
        print(
            f"landscape-sweep: error: {what} (the sweep's results are complete); "
            f"{then} `landscape-report {self.results_dir}`",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
