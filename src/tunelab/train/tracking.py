"""Experiment trackers (`training.report_to`): the Trainer's own TensorBoard, MLflow and W&B callbacks, pointed at
the run.

What we decide for them: TensorBoard writes into `<run>/tensorboard/` (the Trainer's default lies under
`output_dir`, our checkpoints folder, which is deleted once the run completes), so `tensorboard --logdir runs`
shows every run; MLflow and W&B keep their own settings (MLFLOW_TRACKING_URI, WANDB_MODE, ...) and defaults;
each tracker names the run after its directory (`TrainingArguments.run_name`), and run.json records where
TensorBoard and MLflow wrote.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from tunelab import distributed
from tunelab.config import ConfigError, RunConfig
from tunelab.runs import RunDir

INSTALL = {
    "tensorboard": "pip install 'tunelab[tracking]'",
    "mlflow": "pip install 'tunelab[tracking]'",
    "wandb": "pip install wandb",
}
"""How to install each tracker's package, whose module has the tracker's name; W&B is not in tunelab's extras."""


def is_installed(tracker: str) -> bool:
    return importlib.util.find_spec(tracker) is not None


def check_trackers(config: RunConfig) -> None:
    """Refuse, before any data or model loads, a tracker whose package is missing or an MLflow store that will not
    open: the Trainer would find out only once the model is loaded and scored, with an error that names neither
    the config key nor tunelab's extra."""
    for tracker in config.training.report_to:
        if not is_installed(tracker):
            raise ConfigError(
                f"training.report_to names {tracker}, whose package is not installed: run `{INSTALL[tracker]}`, "
                f"or drop {tracker} from training.report_to"
            )
    if "mlflow" in config.training.report_to and distributed.is_main_process():  # only rank 0 logs
        _open_mlflow_store()


def _open_mlflow_store() -> None:
    """Open the store MLflow will log to, without a network call (a server is first reached when the run starts).
    MLflow 3 refuses a `file:` store unless MLFLOW_ALLOW_FILE_STORE=true, and creates a sqlite one here."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient()
    except MlflowException as exc:
        raise ConfigError(
            f"training.report_to names mlflow, but MLflow cannot use its tracking store {mlflow.get_tracking_uri()}: "
            f"{exc}"
        ) from None


@contextmanager
def ends_tracking_on_failure(config: RunConfig) -> Iterator[None]:
    """Mark the MLflow run of a training that raises (a crash, Ctrl-C, a sweep's pruned trial) FAILED or KILLED:
    the Trainer's callback ends its run only when training ends, and the run is otherwise closed as FINISHED
    whenever the callback is collected. A run the caller had opened before training is theirs, and stays open."""
    if "mlflow" not in config.training.report_to:
        yield
        return
    import mlflow

    outer = mlflow.active_run()
    try:
        yield
    except BaseException as exc:
        active = mlflow.active_run()
        if active is not None and (outer is None or active.info.run_id != outer.info.run_id):
            mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


class RunTensorBoard(TensorBoardCallback):
    """The Trainer's TensorBoard callback, writing into the run directory. A resumed run's writer purges what the
    interrupted attempt logged after the checkpoint, so TensorBoard shows every step once, as metrics.jsonl does."""

    def __init__(self, run: RunDir):
        super().__init__()
        self.logging_dir = str(run.tensorboard_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            purge_step = state.global_step + 1 if state.global_step else None  # the resumed checkpoint's step + 1
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=purge_step)
        super().on_train_begin(args, state, control, **kwargs)


class RecordTracking(TrainerCallback):
    """Write to run.json where TensorBoard and MLflow write, once training begins: the Trainer calls its reporting
    callbacks before those added later, so MLflow's run is open by then."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        tracking = {}
        if "tensorboard" in args.report_to:
            tracking["tensorboard"] = str(self.run.tensorboard_dir.resolve())
        if "mlflow" in args.report_to:
            import mlflow

            active = mlflow.active_run().info
            tracking["mlflow"] = {
                "tracking_uri": mlflow.get_tracking_uri(),
                "experiment_id": active.experiment_id,
                "run_id": active.run_id,
            }
        if tracking:
            self.run.update_state(tracking=tracking)


def attach_trackers(trainer, run: RunDir) -> None:
    """Point the Trainer's trackers at the run: TensorBoard into the run directory, and run.json told where."""
    if trainer.pop_callback(TensorBoardCallback) is not None:
        trainer.add_callback(RunTensorBoard(run))
    trainer.add_callback(RecordTracking(run))
