"""`clbench reproduce`: run the published anchors and check them against their targets.

An anchor (`suites/anchors/<name>.toml`) is one protocol of Avalanche's
continual-learning-baselines (ContinualAI, commit 4900462) with its settings
exactly as published, its target ACC and a band delta. It PASSES when our mean
ACC over seeds is >= target - delta: one-sided, like the source repo's tests
(`if target > acc: assertAlmostEqual(target, acc, delta=delta)`), because doing
better than the published number is not a failure of the reproduction.

ACC is `clbench.metrics.final_average`: the mean of the last row of the accuracy
matrix. The source tests read Avalanche's `Top1_Acc_Stream`, which weights
experiences by test-set size; the two are equal when test experiences have the
same size (Permuted MNIST, Split CIFAR-100) and differ slightly otherwise (Split
MNIST: 1,850 to 2,170 test images per pair of digits). The report prints both.

Flow: load every anchor file, resolve every cell (so a typo in any anchor fails
before an hour of training), run each selected anchor through `run_suite` into
`runs/reproduce/<anchor>/` (resumable), then write `reports/reproduce/`.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clbench.config import RunConfig, coerce, field_types, read_toml_table
from clbench.errors import ConfigError

DEFAULT_ANCHORS = "suites/anchors"
DEFAULT_RUNS = "runs/reproduce"
DEFAULT_REPORT = "reports/reproduce"
# A published protocol states these; letting a scenario profile fill them in
# would silently replace the published value by ours.
REQUIRED_SET_KEYS = ("model", "optimizer", "lr", "epochs", "train_mb_size")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class AnchorConfig:
    name: str
    target: float
    source: str
    scenario: str
    strategy: str
    delta: float = 0.03
    gpu: bool = False
    profile: str = "full"
    seeds: list[int] = field(default_factory=lambda: [0])
    set: dict[str, Any] = field(default_factory=dict)  # flat `--set`-style overrides
    notes: str = ""


@dataclass
class AnchorResult:
    name: str
    target: float
    delta: float
    status: str  # PASS, FAIL or ERROR (a cell failed: no ACC to judge)
    accs: list[float]
    stream_accs: list[float]
    mean: float
    ci95: float
    stream_mean: float
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.target - self.delta


# --------------------------------------------------------------------------- loading
def load_anchor(path: str | Path) -> AnchorConfig:
    """Parse and type-check one anchor file; every problem is a one-line ConfigError."""
    path = Path(path)
    types_ = field_types(AnchorConfig)
    raw = read_toml_table(path, "anchor", types_)
    missing = [k for k in ("target", "source", "scenario", "strategy") if k not in raw]
    if missing:
        raise ConfigError(f"anchor file {path} lacks {', '.join(missing)}")
    raw.setdefault("name", path.stem)
    values = {k: coerce(v, types_[k], f"{path.name}: {k}") for k, v in raw.items()}
    anchor = AnchorConfig(**values)
    if not _NAME.match(anchor.name) or "__" in anchor.name:
        raise ConfigError(f"{path}: bad anchor name {anchor.name!r}: use letters, digits, '_' "
                          "and '-' (no '__')")
    if not 0.0 < anchor.target <= 1.0 or not 0.0 <= anchor.delta < 1.0:
        raise ConfigError(f"{path}: target must be in (0, 1] and delta in [0, 1); "
                          f"got {anchor.target}, {anchor.delta}")
    seeds = anchor.seeds
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be distinct non-negative integers, got {seeds}")
    lacking = [k for k in REQUIRED_SET_KEYS if k not in anchor.set]
    if lacking:
        raise ConfigError(f"{path}: [set] must state the published {', '.join(lacking)} explicitly")
    return anchor


def load_anchors(directory: str | Path) -> list[AnchorConfig]:
    directory = Path(directory)
    files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    if not files:
        raise ConfigError(f"no anchor files (*.toml) in {directory}")
    anchors = [load_anchor(p) for p in files]
    names = [a.name for a in anchors]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"anchor names used twice in {directory}: {', '.join(twice)}")
    return anchors


def anchor_cells(anchor: AnchorConfig, seeds: list[int] | None = None) -> list[RunConfig]:
    """The anchor's resolved cells, one per seed; errors name the anchor."""
    # Imported here, not at the top: `clbench --help` must not pay for torch/Avalanche.
    # It registers the models and the plugin the anchors name (mlp_tanh, resnet32, ...).
    import clbench.anchor_models  # noqa: F401
    from clbench.resolve import resolve_config

    try:
        return [resolve_config(anchor.scenario, anchor.strategy, seed=s, profile=anchor.profile,
                               layers=[(f"anchor {anchor.name}", anchor.set)], label=anchor.name)
                for s in (seeds if seeds is not None else anchor.seeds)]
    except ConfigError as exc:
        raise ConfigError(f"anchor {anchor.name}: {exc}") from exc


def select(anchors: list[AnchorConfig], only: list[str], include_gpu: bool) -> list[AnchorConfig]:
    """`--only` names (all CPU anchors if none); GPU anchors need --include-gpu."""
    by_name = {a.name: a for a in anchors}
    if not only:
        return [a for a in anchors if include_gpu or not a.gpu]
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown anchor(s) {', '.join(unknown)}; valid: {', '.join(by_name)}")
    gpu_only = [n for n in only if by_name[n].gpu and not include_gpu]
    if gpu_only:
        raise ConfigError(f"anchor(s) {', '.join(gpu_only)} have gpu = true: add --include-gpu")
    return [by_name[n] for n in dict.fromkeys(only)]


# --------------------------------------------------------------------------- evaluation
def stream_accuracy(result: dict[str, Any]) -> float:
    """Avalanche's Top1_Acc_Stream after the last experience: test-size-weighted last row."""
    import numpy as np

    last = np.asarray(result["matrix"][-1], dtype=float)
    n = np.asarray(result["n_test"], dtype=float)
    return float((last * n).sum() / n.sum())


def evaluate(anchor: AnchorConfig, results: list[dict[str, Any] | None]) -> AnchorResult:
    """PASS/FAIL of one anchor from its cells' result dicts (None = missing)."""
    from clbench.metrics import as_matrix, final_average
    from clbench.report.aggregate import seed_stats

    ok = [r for r in results if r is not None and r.get("status") == "ok"]
    errors = [f"seed {r.get('seed')}: {r.get('error')}" for r in results if r and r not in ok]
    errors += ["a cell has no result" for r in results if r is None]
    accs = [final_average(as_matrix(r["matrix"])) for r in ok]
    streams = [stream_accuracy(r) for r in ok]
    mean, _, ci = seed_stats(accs)
    seconds = sum(float(r.get("wall_seconds") or 0.0) for r in results if r is not None)
    if errors or not accs:
        status = "ERROR"
    else:
        # Inclusive like assertAlmostEqual(delta=...); 1e-9 absorbs float noise in target - delta.
        status = "PASS" if mean >= anchor.target - anchor.delta - 1e-9 else "FAIL"
    return AnchorResult(anchor.name, anchor.target, anchor.delta, status, accs, streams, mean, ci,
                        seed_stats(streams)[0], seconds, errors)


# --------------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _short(value: Any) -> Any:
    """Long lists (class orders) shortened for the one-line settings summary."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 12:
        return f"[{', '.join(map(str, value[:5]))}, ..., {value[-1]}] ({len(value)} items)"
    return value


def settings_line(cfg: RunConfig) -> str:
    """The resolved settings of a cell, in the order a reader compares them with the source."""
    t = cfg.train
    args = ", ".join(f"{k}={v}" for k, v in cfg.model_args.items())
    parts = [f"model {cfg.model}" + (f"({args})" if args else ""),
             f"{t.optimizer} lr {t.lr:g} momentum {t.momentum:g} wd {t.weight_decay:g}",
             f"{t.epochs} epoch(s)", f"minibatch {t.train_mb_size} (eval {t.eval_mb_size})",
             f"device {cfg.device}"]
    if cfg.plugins:
        parts.append(f"plugins {cfg.plugins}")
    parts.append(f"strategy {cfg.strategy} {cfg.strategy_args}")
    parts.append(f"scenario {cfg.scenario} {_short(cfg.scenario_args)}")
    return "; ".join(parts)


def write_report(out: Path, anchors: list[AnchorConfig], results: list[AnchorResult],
                 cells: dict[str, list[RunConfig]], command: str) -> Path:
    """reports/reproduce/: README.md (table, notes, settings), reproduce.csv, settings.json."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    by_name = {a.name: a for a in anchors}
    rows = [{
        "anchor": r.name, "scenario": by_name[r.name].scenario,
        "strategy": by_name[r.name].strategy,
        "target": r.target, "delta": r.delta, "threshold": round(r.threshold, 6),
        "n_seeds": len(r.accs), "seeds": ";".join(str(c.seed) for c in cells[r.name]),
        "acc_mean": r.mean, "acc_ci95": r.ci95,
        "acc_per_seed": ";".join(f"{x:.4f}" for x in r.accs),
        "stream_acc_mean": r.stream_mean, "result": r.status, "seconds": round(r.seconds, 1),
        "gpu": by_name[r.name].gpu, "source": by_name[r.name].source,
        "notes": by_name[r.name].notes, "errors": " | ".join(r.errors),
    } for r in results]  # fmt: skip
    pd.DataFrame(rows).to_csv(out / "reproduce.csv", index=False)
    settings = {name: [c.to_dict() for c in cfgs] for name, cfgs in cells.items()}
    (out / "settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")

    lines = [
        "# Reproduction of the continual-learning-baselines anchors", "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({_environment()}). Anchors: `suites/anchors/`; docs: `docs/reproducibility.md`.", "",
        "PASS means our mean ACC over seeds is >= target - δ (one-sided, as the source repo's "
        "tests). ACC is the mean of the last row of the accuracy matrix; *stream* is the "
        "test-size-weighted version that Avalanche's `Top1_Acc_Stream` (used by the source) "
        "computes; they are equal when test experiences have equal sizes. CI: 95% Student-t "
        "half-width over seeds (n/a with one seed). Time: wall-clock, all seeds.", "",
        "| anchor | target | δ | ours (mean ± CI) | stream | seeds | result | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in results:
        ours = _fmt(r.mean) + (f" ± {_fmt(r.ci95)}" if r.ci95 == r.ci95 else "")
        gpu = " (GPU)" if by_name[r.name].gpu else ""
        lines.append(f"| {r.name}{gpu} | {r.target:.2f} | {r.delta:.2f} | {ours} | "
                     f"{_fmt(r.stream_mean)} | {len(r.accs)} | **{r.status}** | "
                     f"{_duration(r.seconds)} |")
    passed = sum(r.status == "PASS" for r in results)
    lines += ["", f"{passed} of {len(results)} anchor(s) passed; total time "
              f"{_duration(sum(r.seconds for r in results))}.", "", "## Notes", ""]
    for r in results:
        a = by_name[r.name]
        lines.append(f"- **{r.name}**: {a.notes or '(none)'} Source: {a.source}.")
        lines += [f"  - error: {e}" for e in r.errors]
    lines += ["", "## Settings used", "", "Resolved from each anchor file; every cell's full "
              "config is in `settings.json` and in its `result.json`.", ""]
    for r in results:
        seeds = [c.seed for c in cells[r.name]]
        lines.append(f"- **{r.name}** (seeds {seeds}): {settings_line(cells[r.name][0])}")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _environment() -> str:
    import os

    import avalanche
    import torch

    import clbench

    return (f"clbench {clbench.__version__}, avalanche {avalanche.__version__}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch thread(s) on {os.cpu_count()} "
            f"CPU(s), CUDA {'yes' if torch.cuda.is_available() else 'no'}")


# --------------------------------------------------------------------------- CLI
def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reproduce", help="run the published continual-learning-baselines "
                              "anchors and check them against their targets")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this anchor (repeatable, or comma-separated)")
    p.add_argument("--include-gpu", action="store_true", help="also run gpu = true anchors")
    p.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 instead")
    p.add_argument("--anchors", default=DEFAULT_ANCHORS, help=f"default: {DEFAULT_ANCHORS}")
    p.add_argument("--out", default=DEFAULT_RUNS, help=f"runs root (default: {DEFAULT_RUNS})")
    p.add_argument("--report-dir", default=DEFAULT_REPORT, help=f"default: {DEFAULT_REPORT}")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse cells that already have an ok result (default); --no-resume reruns")
    p.add_argument("--dry-run", action="store_true", help="validate every anchor, print the plan")
    p.add_argument("--data-root", help="dataset folder (default: $CLBENCH_DATA, then ./data)")
    p.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="never download missing data")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N anchors side by side, each in its own process with one torch thread "
                        "(default 1: one after another, in this process)")
    return p


def cmd_reproduce(args) -> int:
    """Exit 0 only if every anchor that ran passed; 1 if one failed or errored."""
    from clbench.store import check_no_conflicts, read_result, result_path
    from clbench.suite import cell_ids

    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"bad --seeds {args.seeds}; must be >= 1")
    if args.jobs < 1:
        raise ConfigError(f"bad --jobs {args.jobs}; must be >= 1")
    anchors = load_anchors(args.anchors)
    seeds = list(range(args.seeds)) if args.seeds is not None else None
    cells = {a.name: anchor_cells(a, seeds) for a in anchors}  # validates every anchor first
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    chosen = select(anchors, only, args.include_gpu)
    if not chosen:
        raise ConfigError("no anchor selected (all are gpu = true? add --include-gpu)")
    for a in chosen:
        print(f"{a.name}: {len(cells[a.name])} cell(s), target {a.target:.2f} - {a.delta:.2f}; "
              f"{settings_line(cells[a.name][0])}")
    if args.dry_run:
        return 0
    _check_devices(chosen)
    for a in chosen:  # a changed anchor must not fail only after an hour of other anchors
        check_no_conflicts(Path(args.out) / a.name, cell_ids(cells[a.name]))
    results: dict[str, AnchorResult] = {}
    report = None
    for a in _run_anchors(chosen, cells, args):
        stored = [read_result(result_path(Path(args.out) / a.name, cid)) for cid in cell_ids(cells[a.name])]
        r = results[a.name] = evaluate(a, stored)
        print(f"{r.status} {a.name}: ACC {_fmt(r.mean, 4)} (target {a.target:.2f}, threshold "
              f"{r.threshold:.2f}) in {_duration(r.seconds)}", flush=True)
        print("".join(f"  {e}\n" for e in r.errors), end="")
        # Rewritten after every anchor, so an interrupted run still leaves a report.
        done_in_order = [x for x in chosen if x.name in results]
        report = write_report(Path(args.report_dir), anchors, [results[x.name] for x in done_in_order],
                              {x.name: cells[x.name] for x in done_in_order}, _command(args))
    print(f"report: {report}")
    return 0 if all(r.status == "PASS" for r in results.values()) else 1


def _run_anchors(chosen: list[AnchorConfig], cells: dict, args):
    """Run each chosen anchor's cells; yield each anchor as soon as its cells are stored."""
    from clbench.suite import run_suite

    def run_one(a: AnchorConfig, progress: bool) -> None:
        run_suite(cells[a.name], Path(args.out) / a.name, resume=args.resume, data_root=args.data_root,
                  download=args.download, progress=progress, suite_name=f"reproduce/{a.name}")

    if args.jobs == 1:
        for a in chosen:
            run_one(a, progress=not args.quiet)
            yield a
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from clbench.engines import worker_init

    # One thread per worker: two 2-thread processes on 2 cores thrash (see CPU budget).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=worker_init, initargs=([], 1)) as pool:
        futures = {
            pool.submit(_run_anchor_in_worker, [c.to_dict() for c in cells[a.name]], str(Path(args.out) / a.name),
                        args.resume, args.data_root, args.download, f"reproduce/{a.name}"): a
            for a in chosen
        }
        for future in as_completed(futures):
            future.result()  # a crashed worker surfaces here; failed cells are stored as failed
            yield futures[future]


def _run_anchor_in_worker(cfg_dicts, run_dir, resume, data_root, download, suite_name) -> None:
    from clbench.config import RunConfig
    from clbench.suite import run_suite

    run_suite([RunConfig.from_dict(d) for d in cfg_dicts], Path(run_dir), resume=resume, data_root=data_root,
              download=download, progress=False, suite_name=suite_name)


def _check_devices(chosen: list[AnchorConfig]) -> None:
    import torch

    needs = [a.name for a in chosen if a.gpu or str(a.set.get("device", "")).startswith("cuda")]
    if needs and not torch.cuda.is_available():
        raise ConfigError(f"anchor(s) {', '.join(needs)} need a GPU, but CUDA is not available")


def _command(args) -> str:
    parts = ["clbench reproduce"] + [f"--only {n}" for n in args.only]
    parts += ["--include-gpu"] if args.include_gpu else []
    parts += [f"--seeds {args.seeds}"] if args.seeds is not None else []
    return " ".join(parts)
