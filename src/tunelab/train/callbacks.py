"""Trainer callbacks: the run's metrics log and a progress bar that shows the loss."""

from __future__ import annotations

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
