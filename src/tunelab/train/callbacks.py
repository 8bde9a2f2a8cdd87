"""Trainer callbacks: the run's metrics log and training clock, and a progress bar that shows the loss."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tunelab.runs import RunDir


class MetricsLog(TrainerCallback):
    """Append every Trainer log event (loss, learning rate, eval metrics) to the run's metrics.jsonl, with the
    epoch of the planned order (the Trainer reads the whole plan as one pass)."""

    def __init__(self, run: RunDir, steps_per_epoch: int):
        self.run, self.steps_per_epoch = run, steps_per_epoch

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            epoch = round(state.global_step / self.steps_per_epoch, 4)
            self.run.append_metrics({"step": state.global_step, **logs, "epoch": epoch})


class TrainingClock(TrainerCallback):
    """Keep run.json's `train_seconds` (every attempt's training time, summed) and `attempts` up to date while the
    run trains, so an interrupted or killed attempt's time still counts once the run is resumed: written at each
    log and checkpoint and at the end (a killed attempt counts up to its last log)."""

    def __init__(self, run: RunDir):
        self.run = run
        self.before, self.started = 0.0, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if state.is_world_process_zero:
            recorded = self.run.state()
            self.before = recorded.get("train_seconds", 0.0)
            self.run.update_state(attempts=recorded.get("attempts", 0) + 1)

    def _record(self, state) -> None:
        if state.is_world_process_zero:
            self.run.update_state(train_seconds=self.before + time.perf_counter() - self.started)

    def on_log(self, args, state, control, **kwargs):
        self._record(state)

    def on_save(self, args, state, control, **kwargs):
        self._record(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._record(state)


class LossProgressBar(ProgressCallback):
    """Trainer's tqdm bar (steps, rate, ETA) with the latest loss in its postfix instead of printed dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        shown = {k: logs[k] for k in ("loss", "eval_loss", "eval_accuracy") if k in logs}
        if shown:
            self.training_bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, refresh=True)
        if any(k.startswith("eval_") and k.endswith("loss") for k in logs):
            metrics = ", ".join(
                f"{k[5:]}={v:.4f}" for k, v in logs.items() if k.startswith("eval_") and isinstance(v, float)
            )
            self.training_bar.write(f"step {state.global_step} validation: {metrics}")
