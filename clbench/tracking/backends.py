"""The loggers behind `--log` (see the package docstring): Avalanche's own where they exist."""

from __future__ import annotations

import csv
import importlib
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clbench.tracking import MODULES, _missing

MLFLOW_BATCH = 1000  # MLflow's limit of metrics in one log_batch call


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

        def log_step(self, values: dict[str, float], step: int):
            # One wandb.log per step rather than Avalanche's one per value: each call is a
            # round trip to W&B's service, the bulk of W&B's cost (benchmarks/tracking_overhead.md).
            self.wandb.log(values, step=step)

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
