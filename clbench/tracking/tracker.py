"""The `Tracker` of one cell: buffers training values, feeds the loggers from one thread."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from clbench.tracking import FLUSH_EVERY, split_entry
from clbench.tracking.backends import FACTORIES


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


def _by_step(batch: list[tuple[str, float, int]]):
    """(step, {name: value}) for each run of consecutive entries with the same step, in order."""
    step, values = None, {}
    for name, value, at in batch:
        if at != step and values:
            yield step, values
            values = {}
        step = at
        values[name] = value
    if values:
        yield step, values


class TrainingWindow:
    """Thins one logger's training series (`--log NAME:K`): for every K iterations, the mean
    of each `train/` series over them, at the last one's step. K = 1 passes every
    value. Other series (accuracy rows) always pass, after the means of a window they cut
    short, so that steps never go backwards (W&B drops a step lower than one it has seen)."""

    def __init__(self, every: int):
        self.every, self.sums, self.counts, self.last_step = every, {}, {}, 0

    def _means(self) -> tuple[int, dict[str, float]]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return self.last_step, means

    def feed(self, step: int, values: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
        if self.every == 1:
            return [(step, values)]
        out = []
        train = {k: v for k, v in values.items() if k.startswith("train/")}
        for k, v in train.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        if train:
            self.last_step = step
            if max(self.counts.values()) == self.every:  # a full window (restarted by any row)
                out.append(self._means())
        other = {k: v for k, v in values.items() if k not in train}
        if other:
            if self.sums:
                out.append(self._means())
            out.append((step, other))
        return out


class Tracker:
    """The loggers of one cell. `plugin()` is added to the strategy; the runner calls
    `log_row` after each evaluation and `close` at the end, ok or failed."""

    def __init__(self, names, cfg, cell_id: str, directory: Path, metric_name: str = "accuracy"):
        self.metric_name, self.iteration = metric_name, 0
        self.losses: list = []  # (step, detached loss tensor)
        self.lrs: list[tuple[int, dict[str, float]]] = []
        self.batch: list[tuple[str, float, int]] = []
        self.loggers: list = []
        self.windows: list[TrainingWindow] = []  # one per logger: its training-series thinning
        # The loggers are fed by one thread, in order: a wandb.log call waits ~1 ms on W&B's
        # service, which would otherwise stall every training iteration (benchmarks/tracking_overhead.md).
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="clbench-tracking", daemon=True)
        # What logging costs this process: time in the training thread's calls, CPU of the feeder
        # thread (result["tracking_seconds"]; W&B's own service process is not counted here).
        self.inline_seconds = self.thread_cpu_seconds = 0.0
        t0 = time.perf_counter()
        try:
            for entry in names:
                name, every = split_entry(entry)
                sub, factory = FACTORIES[name]
                self.loggers.append(factory(cfg, cell_id, Path(directory) / sub))
                self.windows.append(TrainingWindow(every))
        except BaseException:
            self.close(failed=True)
            raise
        self.thread.start()
        self.inline_seconds += time.perf_counter() - t0  # opening the loggers (wandb.init, MLflow's run)

    def _drain(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # a logger failed: the cell fails at close; drop the rest
            t0 = time.thread_time()
            try:
                steps = list(_by_step(batch))
                for logger, window in zip(self.loggers, self.windows, strict=True):
                    for step, values in (sent for at, v in steps for sent in window.feed(at, v)):
                        if hasattr(logger, "log_step"):  # one call for all of a step's values
                            logger.log_step(values, step)
                        else:
                            for name, value in values.items():
                                logger.log_single_metric(name, value, step)
                for logger in self.loggers:
                    if hasattr(logger, "flush"):
                        logger.flush()
            except BaseException as exc:
                self.error = exc
            self.thread_cpu_seconds += time.thread_time() - t0

    def cost(self) -> dict[str, Any]:
        """Seconds of the training thread in the tracker's calls, CPU seconds of the feeder thread."""
        return {"training_thread": self.inline_seconds, "feeder_thread_cpu": self.thread_cpu_seconds}

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
        t0 = time.perf_counter()
        loss = getattr(strategy, "loss", None)
        if loss is not None:
            self.losses.append((self.iteration, loss.detach() if hasattr(loss, "detach") else loss))
        self.lrs.append((self.iteration, learning_rates(getattr(strategy, "optimizer", None))))
        self.iteration += 1
        if len(self.lrs) >= FLUSH_EVERY:
            self.flush()
        self.inline_seconds += time.perf_counter() - t0

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
        t0 = time.perf_counter()
        self.flush()  # W&B drops a step lower than one it has seen: training values go first
        width = max(2, len(str(len(row) - 1)))
        for j, value in enumerate(row):
            self._log(f"eval/{self.metric_name}/exp{j:0{width}d}", float(value), self.iteration)
        if experience is not None:
            seen = [float(v) for v in row[:experience + 1]]
            self._log(f"eval/{self.metric_name}/avg_seen", sum(seen) / len(seen), self.iteration)
            self._log("eval/experience", experience + 1, self.iteration)
        self._send()
        self.inline_seconds += time.perf_counter() - t0

    def close(self, failed: bool = False) -> None:
        """Flush and close every logger; the first error is raised after all are closed."""
        t0 = time.perf_counter()
        try:
            self._close(failed)
        finally:
            self.inline_seconds += time.perf_counter() - t0

    def _close(self, failed: bool) -> None:
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
