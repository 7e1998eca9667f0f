"""``landscape-sweep``: compose, expand, run on Ray, write Parquet, draw the report.

    landscape-sweep                                   # the demo sweep, embedded local Ray
    landscape-sweep sweep=demo model.width=4,8,16 optim.batch_size=16,64 seed=0,1,2
    landscape-sweep ray.address=auto ...              # join a running Ray cluster
    landscape-sweep --cfg job                         # Hydra prints the composed config
    landscape-sweep --help                            # Hydra's help: groups and options

Bad input (unknown option or key, invalid value, unwritable out_dir) prints one line naming
the key, the value and what is allowed, exits with 2 and writes nothing.
"""

from __future__ import annotations

import sys

from landscape.variant import ConfigError

# Hydra's own flags: these are handed to Hydra's entry point, which prints and runs nothing.
HYDRA_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--package", "-p")
OUR_FLAGS = {"--retry-failed": "run variants recorded as failed again", "--no-report": "skip the HTML report",
             "--quiet": "no progress bar"}


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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=", 1)[0] in HYDRA_FLAGS for a in args):
        return _hydra_passthrough(args)
    flags = {a for a in args if a.startswith("--")}
    unknown = flags - set(OUR_FLAGS)
    if unknown:
        allowed = ", ".join([*OUR_FLAGS, "--cfg job", "--help"])
        print(f"landscape-sweep: error: unknown flag {sorted(unknown)[0]}; allowed: {allowed}", file=sys.stderr)
        return 2
    overrides = [a for a in args if not a.startswith("--")]

    from sweeps.config import plan_sweep

    try:
        plan = plan_sweep(overrides)
    except ConfigError as exc:
        print(f"landscape-sweep: error: {exc}", file=sys.stderr)
        return 2

    from sweeps.runner import run_sweep

    try:
        summary = run_sweep(plan, progress="--quiet" not in flags, retry_failed="--retry-failed" in flags)
    except ConfigError as exc:
        print(f"landscape-sweep: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing new"
    print(f"ran {summary.ran} variants ({counts}) in {summary.wall_time_s:.1f} s; "
          f"{summary.skipped} skipped as already finished")
    print(f"results: {plan.results_dir}/  (runs, curves, ... as Parquet; manifest.json)")
    if "--no-report" not in flags:
        from analysis.load import load_results
        from analysis.report import build_report

        report = build_report(load_results(plan.results_dir), plan.results_dir / "report")
        print(f"report:  {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
