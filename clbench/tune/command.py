"""`clbench tune SUITE`: tune each row of a suite that has a `[tune.<label>]` table, write tuned.toml.

Everything is validated before the run dir is created, so bad input writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from clbench.errors import ConfigError
from clbench.tune.study import PROTOCOLS, PRUNERS, SAMPLERS


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad seeds {text!r}; accepted: comma-separated integers, e.g. 100,101") from None


def add_tune_parser(subparsers, add_engine_args, add_data_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tune", help="tune the rows of a suite with [tune.<label>] search spaces (Optuna)")
    p.add_argument("suite", help="suite TOML file with [tune.<label>] tables (docs/tuning.md)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="validation: the whole stream's val split; first_k: the first --k experiences' val split")
    p.add_argument("--k", type=int, default=None, help="first_k: number of experiences to tune on (1 <= k < T)")
    p.add_argument("--seeds", required=True, type=_seeds, metavar="S,S,...",
                   help="tuning seeds, disjoint from the suite's evaluation seeds")
    p.add_argument("--trials", required=True, type=int, metavar="N", help="trials per tuned row (the same for every row)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="prune trials on the per-experience ACC (local engine only; default median)")
    p.add_argument("--prune-below", type=float, default=None, metavar="ACC",
                   help="threshold pruner: prune a trial whose running ACC falls below ACC")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="scenario.val_fraction of the trial cells, 0 < F <= 0.5 (default 0.1)")
    p.add_argument("--out", help="run directory of the study and its trials (default: runs/<suite name>-tune)")
    p.add_argument("--output", metavar="FILE", help="tuned values file (default: RUN_DIR/tuned.toml)")
    p.add_argument("--report", metavar="DIR", help="also write Optuna's plots (history, importances) to DIR")
    p.add_argument("--jobs", type=int, default=None, help="local engine: a trial's cells in N worker processes")
    add_engine_args(p)
    add_data_args(p)
    return p


def cmd_tune(args, *, engine_options, default_run_dir, load_plugins) -> int:
    """Run by clbench.cli, which passes its own helpers (so this module never imports the CLI)."""
    from clbench.config import load_suite
    from clbench.tune.run import EngineArgs, tune_row, tuned_record
    from clbench.tune.study import TuneSettings, plan
    from clbench.tune.tuned_file import write_tuned

    suite = load_suite(args.suite)
    options = engine_options(args)
    plugin_files = suite.plugin_files + [str(Path(p).resolve()) for p in args.plugin]
    load_plugins(plugin_files)
    settings = TuneSettings(protocol=args.protocol, seeds=args.seeds, trials=args.trials, k=args.k,
                            sampler=args.sampler, pruner=args.pruner, prune_below=args.prune_below,
                            val_fraction=args.val_fraction, cli_set=list(args.sets))
    tuned_rows = plan(suite, settings)  # every check; nothing written yet
    run_dir = Path(args.out) if args.out else default_run_dir(f"{suite.name}-tune")
    output = Path(args.output) if args.output else run_dir / "tuned.toml"
    if output.suffix != ".toml":
        raise ConfigError(f"bad --output {output}; accepted: a .toml file")
    if options.engine == "local" and (options.jobs > 1 or options.cell_timeout):
        from clbench.engines.local import start_fork_server

        start_fork_server()
    engine = EngineArgs(options, args.data_root, args.download, plugin_files, progress=not args.quiet)
    records, missing, studies = {}, [], []
    with ExitStack() as stack:
        if options.engine == "ray":  # one Ray session for every trial, not one per trial
            from clbench.engines.ray_engine import ray_session

            stack.enter_context(ray_session(options))  # no Ray, no cluster: exit 2, nothing written
        run_dir.mkdir(parents=True, exist_ok=True)
        studies = [(t, tune_row(suite, t, settings, run_dir, engine)) for t in tuned_rows]
    for t, study in studies:
        record = tuned_record(study, t, settings, run_dir)
        name = f"{t.row.scenario}/{t.row.label}"
        if record is None:
            missing.append(name)
            print(f"{name}: no trial completed; not in the tuned file", file=sys.stderr)
            continue
        records[(t.row.scenario, t.row.label)] = record
        print(f"{name}: {record['values']}  {record['metric']} {record['objective']:.4f}  "
              f"{record['trials']} trials ({record['pruned']} pruned, {record['failed']} failed), "
              f"{record['cpu_seconds']:.0f} CPU-s")
    write_tuned(output, records, header=f"Written by `clbench tune {args.suite}` (docs/tuning.md); "
                                        f"apply with `clbench bench {args.suite} --tuned {output}`.")
    print(f"tuned values: {output}  (study: sqlite:///{run_dir / 'study.db'})")
    if args.report:
        from clbench.tune.plots import write_plots

        for path in write_plots(studies, Path(args.report)):
            print(f"plot: {path}")
    return 1 if missing else 0
