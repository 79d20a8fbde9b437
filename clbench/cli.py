"""The `clbench` command line: list, run, bench, report.

User errors (bad names, values, files, missing data) print one line and exit
with code 2; a suite whose cells partly failed exits with code 1 after storing
every result.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from clbench.errors import ClbenchError

PROFILES = ("smoke", "quick", "full")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="dataset folder (default: $CLBENCH_DATA, then ./data)")
    p.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="never download missing data (default: download unless CI or CLBENCH_OFFLINE=1)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load a strategy/scenario/model file that is not installed (repeatable)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. lr=0.05, strategy.ewc_lambda=10, scenario.n_experiences=3")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_log_arg(p: argparse.ArgumentParser) -> None:
    from clbench.tracking import TRACKERS

    p.add_argument("--log", action="append", default=None, metavar="|".join(TRACKERS),
                   help="log each cell's loss, learning rates and accuracies to this tracker (repeatable; "
                        "replaces a suite's `log`; `none` for no tracker; NAME:K sends the training series as "
                        "means over K iterations, e.g. wandb:10); files under RUN_DIR/tracking, "
                        "see docs/tracking.md")


def tracking_choice(args, suite_log=()) -> tuple[str, ...]:
    """The trackers of a command: --log when given, else the suite's; checked to be installed."""
    from clbench.tracking import parse_log, require

    names = parse_log(args.log) if args.log is not None else parse_log(suite_log)
    require(names)
    return names


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    from clbench.engines import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this machine (--jobs N processes); ray: one Ray task per cell (pip install 'clbench[dist]')")
    p.add_argument("--address", help="ray: cluster to join, 'auto' or HOST:PORT (default: start a local one)")
    p.add_argument("--cpus-per-cell", type=float, default=None, metavar="N", help="ray: CPUs per cell (default 1)")
    p.add_argument("--gpus-per-cell", type=float, default=None, metavar="N", help="ray: GPUs per cell (default 0)")
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="kill a cell that runs longer and store it as failed (runs cells in worker processes)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="re-run a cell whose worker process died up to N times, then store it as failed (default 2)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch deterministic algorithms: bit-identical GPU runs, or an error naming the op that has none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clbench", description="Continual-learning benchmark suite on Avalanche.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered strategies, scenarios, models, optimizers or plugins")
    p.add_argument("what", nargs="?", default="all",
                   choices=("all", "strategies", "scenarios", "models", "optimizers", "plugins"))
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py")

    p = sub.add_parser("run", help="run one cell (scenario x strategy x seed)")
    p.add_argument("--scenario", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--out", default="runs/single", help="run directory (default: runs/single)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch deterministic algorithms: bit-identical GPU runs, or an error naming the op that has none")
    _add_log_arg(p)
    _add_data_args(p)

    p = sub.add_parser("bench", help="run a suite file (scenarios x strategies x seeds), resumable")
    p.add_argument("suite", help="suite TOML file, e.g. suites/quick.toml")
    p.add_argument("--out", help="run directory (default: runs/<suite name>)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip cells that already have an ok result (default); --no-resume reruns them")
    p.add_argument("--jobs", type=int, default=None,
                   help="local engine: cells run in parallel worker processes (default 1)")
    p.add_argument("--report", metavar="DIR", help="also write the report to DIR when the suite ends")
    p.add_argument("--tuned", metavar="FILE", help="apply the values of a `clbench tune` file to its rows")
    _add_log_arg(p)
    _add_engine_args(p)
    _add_data_args(p)

    p = sub.add_parser("report", help="build tables and plots from a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN_DIR", help="runs to put side by side")
    p.add_argument("--formats", default="md,csv,tex,html,png", help="comma-separated subset of md,csv,tex,html,png")
    from clbench.reproduce import add_reproduce_parser
    from clbench.tune.command import add_tune_parser

    _add_log_arg(add_tune_parser(sub, _add_engine_args, _add_data_args))
    add_reproduce_parser(sub)
    return parser


def _load_plugins(files: list[str]) -> None:
    from clbench.registry import load_plugin_file

    for path in files:
        load_plugin_file(path)


def cmd_list(args) -> int:
    from clbench.registry import MODELS, OPTIMIZERS, PLUGINS, SCENARIOS, STRATEGIES

    _load_plugins(args.plugin)
    sections = {
        "strategies": (STRATEGIES, lambda s: f"[{', '.join(s.supports)}] {s.description}"),
        "scenarios": (SCENARIOS, lambda s: f"[{s.scenario_type}] {s.description}"),
        "models": (MODELS, lambda s: s.description),
        "optimizers": (OPTIMIZERS, lambda s: s.description),
        "plugins": (PLUGINS, lambda s: s.description),
    }
    for name, (registry, describe) in sections.items():
        if args.what not in ("all", name):
            continue
        if args.what == "all":
            print(f"{name}:")
        names = registry.names()
        if not names:
            print("  (none registered)")
        width = max((len(n) for n in names), default=0)
        for n in names:
            print(f"  {n:<{width}}  {describe(registry.get(n))}")
    return 0


def cmd_run(args) -> int:
    from clbench.api import run
    from clbench.config import parse_set_args
    from clbench.engines import EngineOptions
    from clbench.suite import outcome_lines

    # The Python API's own function (docs/api.md): one path for validation, running and storing.
    result = run(args.scenario, args.strategy, seed=args.seed, profile=args.profile, out=args.out,
                 overrides=parse_set_args(args.sets), data_root=args.data_root, download=args.download,
                 progress=not args.quiet, plugin_files=args.plugin,
                 options=EngineOptions(deterministic=args.deterministic, log=tracking_choice(args)),
                 check=False)
    if result.ok:
        name = "BPC" if result.data.get("metric_name") == "bpc" else "ACC"  # final mean of the metric
        print(f"{result.cell_id}: {name} {result.acc:.4f}  forgetting {result.forgetting:.4f}  "
              f"BWT {result.bwt:.4f}  wall {result.wall_seconds:.1f}s")
    print("\n".join(outcome_lines(result.outcome)))
    return 0 if result.ok else 1


def cmd_bench(args) -> int:
    from clbench.config import load_suite
    from clbench.report import write_summary_csv
    from clbench.resolve import expand_suite
    from clbench.suite import outcome_lines, run_suite

    suite = load_suite(args.suite)
    options = engine_options(args)
    options.log = tracking_choice(args, suite.log)
    if options.engine == "local" and (options.jobs > 1 or options.cell_timeout):
        from clbench.engines.local import start_fork_server

        start_fork_server()  # workers' imports run while this process resolves the suite
    plugin_files = suite.plugin_files + [str(Path(p).resolve()) for p in args.plugin]
    _load_plugins(plugin_files)
    skipped: list[str] = []
    tuned = _tuned_records(args.tuned, suite) if args.tuned else None
    cells = expand_suite(suite, args.sets, skipped, tuned=tuned)  # validates every cell before anything runs
    for line in skipped:
        print(f"skipping {line}")
    run_dir = Path(args.out) if args.out else default_run_dir(suite.name)
    outcome = run_suite(cells, run_dir, resume=args.resume, data_root=args.data_root, download=args.download,
                        plugin_files=plugin_files, progress=not args.quiet, suite_name=suite.name, options=options)
    summary = write_summary_atomically(run_dir, write_summary_csv)
    print("\n".join(outcome_lines(outcome)))
    print(f"summary: {summary}")
    if args.report:
        return _report(run_dir, Path(args.report), [], "md,csv,tex,html,png") or (1 if outcome.failed else 0)
    return 1 if outcome.failed else 0


def _tuned_records(path: str, suite):
    from clbench.resolve import suite_rows
    from clbench.tune.tuned_file import check_rows, read_tuned

    records = read_tuned(path)
    check_rows(records, suite_rows(suite), set(suite.tune), suite.seeds, path)
    return records


def engine_options(args):
    """The engine options of `bench`; options of the other engine are refused, not ignored."""
    from clbench.engines import EngineOptions

    ray_only = {"--address": args.address, "--cpus-per-cell": args.cpus_per_cell, "--gpus-per-cell": args.gpus_per_cell}
    if args.engine == "local":
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:
            raise ClbenchError(f"{', '.join(given)} only apply to --engine ray")
    elif args.jobs is not None:
        raise ClbenchError("--jobs applies to --engine local; with Ray, size cells with --cpus-per-cell")
    options = EngineOptions(
        engine=args.engine, jobs=1 if args.jobs is None else args.jobs, cell_timeout=args.cell_timeout,
        retries=args.retries, deterministic=args.deterministic, address=args.address,
        cpus_per_cell=1.0 if args.cpus_per_cell is None else args.cpus_per_cell,
        gpus_per_cell=0.0 if args.gpus_per_cell is None else args.gpus_per_cell,
    )
    options.validate()
    return options


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_run_dir(suite_name: str) -> Path:
    """runs/<suite name>, for a name that is one plain path component."""
    if not _SAFE_NAME.fullmatch(suite_name) or suite_name.endswith("."):
        raise ClbenchError(
            f"suite name {suite_name!r} cannot name a run directory (letters, digits, '_', '-', '.'); "
            "rename it or give --out"
        )
    return Path("runs") / suite_name


def write_summary_atomically(run_dir: Path, write_summary_csv) -> Path:
    """summary.csv via a temp file and a rename: two processes finishing together never mix lines."""
    final = run_dir / "summary.csv"
    fd, tmp = tempfile.mkstemp(prefix=".summary.", suffix=".csv.tmp", dir=run_dir)
    os.close(fd)
    try:
        write_summary_csv(run_dir, Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return final


def _report(run_dir: Path, out: Path | None, compare: list[str], formats: str) -> int:
    from clbench.report import build_report

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    result = build_report(run_dir, out, formats=fmts, compare=[Path(c) for c in compare])
    print(result.text)
    return 0


def cmd_report(args) -> int:
    return _report(Path(args.run_dir), Path(args.out) if args.out else None, args.compare, args.formats)


def cmd_tune(args) -> int:
    from clbench.tune.command import cmd_tune as run_tune

    def options_with_log(args):  # trials log only with --log: a suite's `log` is for its evaluation cells
        options = engine_options(args)
        options.log = tracking_choice(args)
        return options

    return run_tune(args, engine_options=options_with_log, default_run_dir=default_run_dir, load_plugins=_load_plugins)


def cmd_reproduce(args) -> int:
    from clbench.reproduce import cmd_reproduce as run_reproduce

    return run_reproduce(args)


COMMANDS = {"list": cmd_list, "run": cmd_run, "bench": cmd_bench, "report": cmd_report, "reproduce": cmd_reproduce,
            "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    _quiet_library_warnings()
    try:
        return COMMANDS[args.command](args)
    except ClbenchError as exc:
        print(f"clbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `clbench list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("clbench: interrupted; completed cells are saved, rerun the same command to resume", file=sys.stderr)
        return 130


def _quiet_library_warnings() -> None:
    """Avalanche 0.6 emits deprecation noise on every strategy (§1.6 #16).

    Its `@deprecated` wrapper forces the warning on inside a catch_warnings
    block, so filters cannot silence it; drop it when it is displayed instead.
    Warnings from anywhere else are still shown.
    """
    import warnings

    warnings.filterwarnings("ignore", message=".*No loggers specified.*")
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecationWarning) and "avalanche" in str(filename):
            return
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
