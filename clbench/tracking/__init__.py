"""Experiment tracking (`--log tensorboard|wandb|mlflow|csv`): a cell's training loss,
learning rates and accuracy rows, sent to Avalanche's own loggers where they exist.

clbench runs no Avalanche evaluation loop (strategies get a silent evaluator and the runner
computes the accuracy matrix itself), so nothing reaches a logger through an
`EvaluationPlugin`. The `Tracker` feeds the loggers directly through their one common
entry point, `BaseLogger.log_single_metric(name, value, x_plot)`:

- tensorboard: Avalanche's `TensorboardLogger`, as is.
- wandb: Avalanche's `WandBLogger`, given its run id (it calls `wandb.util.generate_id`,
  gone from wandb 0.2x) and a view of the wandb module that still has `wandb.viz`
  (`CustomChart` moved to `wandb.plot`). Offline unless WANDB_MODE is set.
- mlflow: Avalanche has no MLflow logger; `MLflowLogger` is a `BaseLogger` that hands
  the values to MLflow's own client in batches.
- csv: Avalanche's `CSVLogger` writes fixed columns from callbacks of its evaluation loop
  (its `log_single_metric` is the base class's no-op), so it would write nothing here;
  `CSVMetricsLogger` writes `step,name,value` rows with the csv module instead.

Every value has the same x: the number of training iterations the cell has run (loss and
learning rates of iteration k at step k; an accuracy row at the iteration count when it was
measured; the untrained model's row at 0). W&B needs one non-decreasing step for all its
series, and it puts loss and accuracy on one axis everywhere. docs/tracking.md has the names
and the places.

The package: this module holds the tracker names and the parsing of `--log` (imported by the
CLI and the engines, so it imports nothing heavy); `backends` the loggers; `tracker` the
`Tracker` the runner drives.
"""

from __future__ import annotations

import importlib.util

from clbench.errors import ClbenchError, ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
EXTRA = "pip install 'clbench[track]'"
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # csv needs nothing
# Training values are buffered and sent every FLUSH_EVERY iterations (and before every
# accuracy row): one device sync per batch instead of one per iteration, and live curves.
FLUSH_EVERY = 100


def parse_log(values, where: str = "--log") -> tuple[str, ...]:
    """Tracker names from `--log` values or a suite's `log` list, in order, without repeats.

    A value may hold several names separated by commas; `none` drops the names before it
    (`--log none` switches off the trackers of a suite file). `NAME:K` (e.g. `wandb:10`)
    sends that tracker the training series as means over windows of K iterations instead of
    every iteration (accuracy rows are always sent): docs/tracking.md, "Cost"."""
    names: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"bad {where} entry {value!r}; accepted: {', '.join(TRACKERS)}, none")
        for entry in (part.strip().lower() for part in value.split(",")):
            name, colon, every = entry.partition(":")
            if name == "none" and not colon:
                names = []
            elif name not in TRACKERS:
                raise ConfigError(f"unknown tracker {name!r} in {where}; accepted: {', '.join(TRACKERS)}, none")
            elif colon and not (every.isdigit() and int(every) >= 1):
                raise ConfigError(f"bad {where} {entry!r}: the window after ':' must be a whole number of "
                                  f"iterations >= 1, e.g. {name}:10")
            else:
                canonical = name if every in ("", "1") else f"{name}:{int(every)}"
                names = [n for n in names if n.partition(":")[0] != name] + [canonical]  # the last one wins
    return tuple(names)


def split_entry(entry: str) -> tuple[str, int]:
    """'wandb:10' -> ('wandb', 10); 'csv' -> ('csv', 1)."""
    name, _, every = entry.partition(":")
    return name, int(every or 1)


def _missing(name: str) -> ClbenchError:
    return ClbenchError(f"--log {name} needs the {MODULES[name]} package, which is not installed: {EXTRA}")


def require(names) -> None:
    """Fail before any cell runs when a tracker's package is missing (no import: mlflow takes seconds)."""
    for name in (split_entry(entry)[0] for entry in names):
        module = MODULES.get(name)
        try:
            found = module is None or importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            raise _missing(name)
