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
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import os
import queue
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
EXTRA = "pip install 'clbench[track]'"
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # csv needs nothing
# Training values are buffered and sent every FLUSH_EVERY iterations (and before every
# accuracy row): one device sync per batch instead of one per iteration, and live curves.
FLUSH_EVERY = 100
MLFLOW_BATCH = 1000  # MLflow's limit of metrics in one log_batch call


def parse_log(values, where: str = "--log") -> tuple[str, ...]:
    """Tracker names from `--log` values or a suite's `log` list, in order, without repeats.

    A value may hold several names separated by commas; `none` drops the names before it
    (`--log none` switches off the trackers of a suite file)."""
    names: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"bad {where} entry {value!r}; accepted: {', '.join(TRACKERS)}, none")
        for name in (part.strip().lower() for part in value.split(",")):
            if name == "none":
                names = []
            elif name not in TRACKERS:
                raise ConfigError(f"unknown tracker {name!r} in {where}; accepted: {', '.join(TRACKERS)}, none")
            elif name not in names:
                names.append(name)
    return tuple(names)


def _missing(name: str) -> ClbenchError:
    return ClbenchError(f"--log {name} needs the {MODULES[name]} package, which is not installed: {EXTRA}")


def require(names) -> None:
    """Fail before any cell runs when a tracker's package is missing (no import: mlflow takes seconds)."""
    for name in names:
        module = MODULES.get(name)
        try:
            found = module is None or importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            raise _missing(name)


def _import(name: str):
    try:
        return importlib.import_module(MODULES[name])
    except ImportError as exc:
        raise _missing(name) from exc


def _component(text: str) -> str:
    """A scenario or label as one folder name."""
    return str(text).replace(os.sep, "_").replace("/", "_") or "_"


def cell_folder(root: Path, cfg) -> Path:
    """<root>/<scenario>/<label>/seed<seed>: TensorBoard shows the runs as that tree."""
    return Path(root) / _component(cfg.scenario) / _component(cfg.label) / f"seed{cfg.seed}"


# --------------------------------------------------------------------------- backends
def _base_logger():
    from avalanche.logging import BaseLogger

    return BaseLogger


def make_mlflow_logger(cfg, cell_id: str, directory: Path):
    """An Avalanche `BaseLogger` whose values go to MLflow's client, one run per cell."""
    _import("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    class MLflowLogger(_base_logger()):
        def __init__(self):
            super().__init__()
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(directory) / "mlruns").resolve().as_uri()
            with _file_store_allowed(uri):  # MLflow 3 refuses a file store unless asked for it
                self.client = MlflowClient(tracking_uri=uri)
                experiment = f"clbench/{cfg.scenario}"
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    try:
                        experiment_id = self.client.create_experiment(experiment)
                    except Exception:  # another worker created it meanwhile
                        experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
                else:
                    experiment_id = found.experiment_id
                tags = {"clbench.scenario": cfg.scenario, "clbench.label": cfg.label, "clbench.seed": str(cfg.seed),
                        "clbench.strategy": cfg.strategy, "clbench.cell_id": cell_id,
                        "clbench.config_hash": cfg.config_hash()}
                self.run_id = self.client.create_run(experiment_id, run_name=f"{cfg.label}/seed{cfg.seed}",
                                                     tags=tags).info.run_id
            self.pending: list = []

        def log_single_metric(self, name, value, x_plot):
            self.pending.append(Metric(name, float(value), int(time.time() * 1000), int(x_plot)))

        def flush(self):
            for start in range(0, len(self.pending), MLFLOW_BATCH):
                self.client.log_batch(self.run_id, metrics=self.pending[start:start + MLFLOW_BATCH])
            self.pending = []

        def close(self, failed: bool = False):
            self.flush()
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    return MLflowLogger()


@contextmanager
def _file_store_allowed(uri: str):
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # only while the client opens the store
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


class _WandbModule:
    """The wandb module as Avalanche 0.6's WandBLogger expects it (`wandb.viz.CustomChart`)."""

    def __init__(self, wandb):
        from types import SimpleNamespace

        self._wandb = wandb
        self.viz = getattr(wandb, "viz", None) or SimpleNamespace(CustomChart=wandb.plot.CustomChart)

    def __getattr__(self, name):
        return getattr(self._wandb, name)


def make_wandb_logger(cfg, cell_id: str, directory: Path):
    wandb = _import("wandb")
    from avalanche.logging import WandBLogger

    class Logger(WandBLogger):
        def import_wandb(self):
            self.wandb = _WandbModule(wandb)

        def close(self, failed: bool = False):
            self.wandb.finish(exit_code=1 if failed else 0)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {
        # Avalanche would call wandb.util.generate_id, which wandb 0.2x no longer has.
        "id": uuid.uuid4().hex[:12],
        "group": f"{cfg.scenario}/{cfg.label}", "tags": [cfg.scenario, cfg.label, f"seed{cfg.seed}", cfg.strategy],
        "job_type": cfg.strategy,
    }
    if "WANDB_MODE" not in os.environ:
        params["mode"] = "offline"
    if "WANDB_SILENT" not in os.environ:
        params["settings"] = wandb.Settings(silent=True)  # no sync hint printed for every cell
    return Logger(project_name=os.environ.get("WANDB_PROJECT", "clbench"),
                  run_name=f"{cfg.scenario}/{cfg.label}/seed{cfg.seed}", save_code=False,
                  config=cfg.to_dict() | {"cell_id": cell_id}, dir=str(directory), params=params)


def make_tensorboard_logger(cfg, cell_id: str, directory: Path):
    _import("tensorboard")
    from avalanche.logging import TensorboardLogger

    folder = cell_folder(directory, cfg)
    # A rerun of the cell replaces its curves, as it replaces its result.json.
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()

    class Logger(TensorboardLogger):
        def flush(self):
            self.writer.flush()

        def close(self, failed: bool = False):
            self.writer.close()

    return Logger(tb_log_dir=folder)


def make_csv_logger(cfg, cell_id: str, directory: Path):
    class CSVMetricsLogger(_base_logger()):
        """One `step,name,value` row per value: the same series the other trackers get."""

        def __init__(self):
            super().__init__()
            folder = cell_folder(directory, cfg)
            folder.mkdir(parents=True, exist_ok=True)
            self.file = open(folder / "metrics.csv", "w", newline="")
            self.writer = csv.writer(self.file)
            self.writer.writerow(["step", "name", "value"])

        def log_single_metric(self, name, value, x_plot):
            self.writer.writerow([int(x_plot), name, repr(float(value))])

        def flush(self):
            self.file.flush()

        def close(self, failed: bool = False):
            self.file.close()

    return CSVMetricsLogger()


FACTORIES = {"tensorboard": ("tensorboard", make_tensorboard_logger), "wandb": (".", make_wandb_logger),
             "mlflow": (".", make_mlflow_logger), "csv": ("csv", make_csv_logger)}


# --------------------------------------------------------------------------- the tracker
def learning_rates(optimizer) -> dict[str, float]:
    """The optimizer's learning rates by series name: one per CMS level (train/lr/level0, ...),
    one per parameter group where there are several, else train/lr."""
    if optimizer is None:
        return {}
    if hasattr(optimizer, "level_lrs"):  # clbench.nested.MultiRateOptimizer
        return {f"train/lr/{name}": lr for name, lr in optimizer.level_lrs().items()}
    groups = getattr(optimizer, "param_groups", [])
    if len(groups) == 1:
        return {"train/lr": float(groups[0].get("lr", float("nan")))}
    return {f"train/lr/{g.get('name', f'group{j}')}": float(g.get("lr", float("nan"))) for j, g in enumerate(groups)}


class Tracker:
    """The loggers of one cell. `plugin()` is added to the strategy; the runner calls
    `log_row` after each evaluation and `close` at the end, ok or failed."""

    def __init__(self, names, cfg, cell_id: str, directory: Path, metric_name: str = "accuracy"):
        self.metric_name, self.iteration = metric_name, 0
        self.losses: list = []  # (step, detached loss tensor)
        self.lrs: list[tuple[int, dict[str, float]]] = []
        self.batch: list[tuple[str, float, int]] = []
        self.loggers: list = []
        # The loggers are fed by one thread, in order: a wandb.log call waits ~1 ms on W&B's
        # service, which would otherwise stall every training iteration (benchmarks/tracking_overhead.md).
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="clbench-tracking", daemon=True)
        try:
            for name in names:
                sub, factory = FACTORIES[name]
                self.loggers.append(factory(cfg, cell_id, Path(directory) / sub))
        except BaseException:
            self.close(failed=True)
            raise
        self.thread.start()

    def _drain(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # a logger failed: the cell fails at close; drop the rest
            try:
                for name, value, step in batch:
                    for logger in self.loggers:
                        logger.log_single_metric(name, value, step)
                for logger in self.loggers:
                    if hasattr(logger, "flush"):
                        logger.flush()
            except BaseException as exc:
                self.error = exc

    def plugin(self):
        from avalanche.core import SupervisedPlugin

        tracker = self

        class TrackingPlugin(SupervisedPlugin):
            def after_training_iteration(self, strategy, **kwargs):
                tracker.record_iteration(strategy)

            def after_training_exp(self, strategy, **kwargs):
                tracker.flush()

        return TrackingPlugin()

    def record_iteration(self, strategy) -> None:
        loss = getattr(strategy, "loss", None)
        if loss is not None:
            self.losses.append((self.iteration, loss.detach() if hasattr(loss, "detach") else loss))
        self.lrs.append((self.iteration, learning_rates(getattr(strategy, "optimizer", None))))
        self.iteration += 1
        if len(self.lrs) >= FLUSH_EVERY:
            self.flush()

    def _log(self, name: str, value, step: int) -> None:
        self.batch.append((name, value, step))

    def _send(self) -> None:
        if self.batch:
            self.queue.put(self.batch)
            self.batch = []

    def flush(self) -> None:
        """Send the buffered training values (one device sync for the losses) to the loggers' thread."""
        losses = {}
        if self.losses:
            import torch

            values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()).cpu()
                                  for _, v in self.losses]).tolist()
            losses = {step: value for (step, _), value in zip(self.losses, values, strict=True)}
        # Step by step, every series of a step before the next step (W&B drops a step it has passed).
        for step, rates in self.lrs:
            if step in losses:
                self._log("train/loss", float(losses[step]), step)
            for name, lr in rates.items():
                self._log(name, float(lr), step)
        self.losses, self.lrs = [], []
        self._send()

    def log_row(self, experience: int | None, row) -> None:
        """An accuracy row: after training experience `experience`, or None for the untrained model."""
        self.flush()  # W&B drops a step lower than one it has seen: training values go first
        width = max(2, len(str(len(row) - 1)))
        for j, value in enumerate(row):
            self._log(f"eval/{self.metric_name}/exp{j:0{width}d}", float(value), self.iteration)
        if experience is not None:
            seen = [float(v) for v in row[:experience + 1]]
            self._log(f"eval/{self.metric_name}/avg_seen", sum(seen) / len(seen), self.iteration)
            self._log("eval/experience", experience + 1, self.iteration)
        self._send()

    def close(self, failed: bool = False) -> None:
        """Flush and close every logger; the first error is raised after all are closed."""
        error = None
        try:
            self.flush()
        except Exception as exc:
            error = exc
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        error = error or self.error
        for logger in self.loggers:
            try:
                logger.close(failed=failed)
            except Exception as exc:
                error = error or exc
        self.loggers = []
        if error is not None:
            raise error
