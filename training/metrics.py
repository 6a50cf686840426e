"""What a run reports as it trains: metrics lines in RUN/metrics.jsonl, a tracker of accelerate's, the progress bar."""

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

from store.runs import METRICS_FILE, read_metrics, write_metrics
from training.config import learning_rate_at

TRACKER_DIR = "trackers"  # RUN/trackers/<stage>/: where trackers that keep files (TensorBoard) write them


def start_trackers(accelerator, config, run_dir, project):
    """Open the tracker config.log_with names (accelerate's), writing under run_dir/trackers/project."""
    if config.log_with == "none":
        return
    accelerator.project_configuration.set_directories(run_dir)
    accelerator.project_configuration.logging_dir = str(Path(run_dir) / TRACKER_DIR)
    accelerator.init_trackers(project, config=dataclasses.asdict(config))


class MetricsLog:
    """What a run reports as it trains: each log window's figures (averaged per step, keys ending in "restarts"
    summed) and each evaluation, as records in RUN/metrics.jsonl (rewritten whole after each), in the tracker of
    config.log_with, and on the progress bar. A resumed run keeps the records up to its checkpoint and the window
    the checkpoint saved, so that it logs what an uninterrupted run logs."""

    def __init__(self, run_dir, config, accelerator, steps_per_epoch, total_steps, step, window, resume,
                 description):
        self.path, self.config, self.accelerator = Path(run_dir) / METRICS_FILE, config, accelerator
        self.steps_per_epoch, self.total_steps, self.window = steps_per_epoch, total_steps, window
        # Lines past the checkpoint belong to steps that will be taken again.
        self.records = [m for m in read_metrics(self.path) if m.get("step", 0) <= step] if resume else []
        start_trackers(accelerator, config, run_dir, description.removeprefix("fit ").replace(" ", "-"))
        self.bar = tqdm(total=total_steps, initial=step, desc=description, dynamic_ncols=True,
                        disable=not accelerator.is_main_process)
        # The window's figures may start before a resume; items/s counts only the steps timed in this process.
        self.window_start, self.timed_steps, self.shown = time.perf_counter(), 0, {}

    def add_step(self, step, logs):
        self.timed_steps += 1
        for key, value in logs.items():
            self.window.setdefault(key, []).append(value)
        self.bar.update(1)
        if step % self.config.log_every == 0 or step == self.total_steps:
            elapsed = time.perf_counter() - self.window_start
            record = {"step": step, "epoch": step / self.steps_per_epoch,
                      "lr": learning_rate_at(step - 1, self.total_steps, self.config),
                      "items_per_s": self.timed_steps * self.config.batch_size
                      * self.accelerator.num_processes / max(elapsed, 1e-9)}
            for key, values in self.window.items():
                record[key] = sum(values) if key.endswith("restarts") else sum(values) / len(values)
            self._add({k: v for k, v in record.items() if k != "step"}, record, step,
                      {k: f"{record[k]:.4g}" for k in self.window if not k.endswith("restarts")})
            self.window, self.window_start, self.timed_steps = {}, time.perf_counter(), 0

    def add_evaluation(self, step, results, seconds):
        self._add(results, {"step": step, "epoch": step / self.steps_per_epoch, **results}, step,
                  {k: f"{v:.4g}" for k, v in results.items()})
        self.window_start += seconds  # items/s counts training only

    def _add(self, tracked, record, step, shown):
        self.records.append(record)
        self.accelerator.log(tracked, step=step)
        self.shown.update(shown)
        self.bar.set_postfix(self.shown)
        if self.accelerator.is_main_process:
            write_metrics(self.path, self.records)

    def close(self):
        self.bar.close()
        for tracker in self.accelerator.trackers:  # (accelerator.end_training would also end the process group)
            tracker.finish()


def mean_items_per_s(metrics):
    """The mean training rate over a run's metrics lines (None before the first)."""
    rates = [m["items_per_s"] for m in metrics if "items_per_s" in m]
    return sum(rates) / len(rates) if rates else None
