"""training.report_to: tiny runs that report to TensorBoard and to a local MLflow store (SQLite, MLflow 3's default
kind) hold the same losses as metrics.jsonl, across a failure and a resume too; a tracker that is not installed, or
an MLflow store that will not open, is refused before anything is created; the config key's checks."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient, fluent
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import TrainerCallback

from tunelab import pipeline
from tunelab.config import ConfigError, RunConfig, build_config
from tunelab.runs import RunDir
from tunelab.train import tracking

from helpers import classification_config, losses_by_step


@pytest.fixture(autouse=True)
def _no_active_mlflow_experiment(monkeypatch):
    """Each test starts as a new `tunelab train` process does: MLflow keeps the experiment of its last
    set_experiment in the process (and in MLFLOW_EXPERIMENT_ID), which another test's store does not hold."""
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set by the test; one set before it is restored by monkeypatch


TRACKED = {"name": "tiny-tracked", "evaluation": {"baselines": []}, "epochs": 2}
"""The tracking tests' tiny classifier: two epochs, no baseline scoring (the trackers see training)."""


class SeeArguments(TrainerCallback):
    """Keeps the TrainingArguments the run trained with."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args


def test_tensorboard_and_mlflow_hold_the_runs_losses(tiny_encoder, sentiment_file, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiny-experiment")
    seen = SeeArguments()
    config = classification_config(
        tiny_encoder, sentiment_file, tmp_path / "runs", report_to=["tensorboard", "mlflow"], **TRACKED
    )
    run = pipeline.train(config, callbacks=[seen])
    assert run.state()["state"] == "complete"
    assert seen.args.report_to == ["tensorboard", "mlflow"] and seen.args.run_name == run.path.name
    losses = losses_by_step(run)
    assert len(losses) >= 3

    events = EventAccumulator(str(run.tensorboard_dir))
    events.Reload()
    scalars = {event.step: event.value for event in events.Scalars("train/loss")}
    assert scalars == pytest.approx(losses, rel=1e-6)

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tiny-experiment")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == run.path.name and tracked.info.status == "FINISHED"
    assert float(tracked.data.params["learning_rate"]) == 3e-3
    history = {metric.step: metric.value for metric in client.get_metric_history(tracked.info.run_id, "loss")}
    assert history == pytest.approx(losses, rel=1e-6)

    recorded = run.state()["tracking"]
    assert recorded["tensorboard"] == str(run.tensorboard_dir.resolve())
    assert recorded["mlflow"] == {
        "tracking_uri": store,
        "experiment_id": experiment.experiment_id,
        "run_id": tracked.info.run_id,
    }
    card = run.card_path.read_text()
    assert f"MLflow run `{tracked.info.run_id}` in `{store}`" in card and "`tensorboard/`" in card


def test_mlflow_without_a_tracking_uri_uses_its_default_store_in_the_working_directory(
    tiny_encoder, sentiment_file, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    run = pipeline.train(
        classification_config(tiny_encoder, sentiment_file, tmp_path / "runs", report_to=["mlflow"], **TRACKED)
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run.state()["tracking"]["mlflow"]["tracking_uri"] == store
    (tracked,) = MlflowClient(tracking_uri=store).search_runs(["0"])  # MLflow's Default experiment
    assert tracked.info.run_name == run.path.name
    assert not run.tensorboard_dir.exists()


def test_an_mlflow_file_store_holds_the_run_when_allowed_and_is_refused_before_the_run_otherwise(
    tiny_encoder, sentiment_file, tmp_path, monkeypatch
):
    """MLflow 3 keeps `file:` stores only behind MLFLOW_ALLOW_FILE_STORE=true; without it, the run is refused
    before it creates anything, with MLflow's reason. With it, the local file store holds the run."""
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    config = classification_config(tiny_encoder, sentiment_file, tmp_path / "runs", report_to=["mlflow"], **TRACKED)
    with pytest.raises(ConfigError, match=r"training\.report_to names mlflow.*file:.*MLFLOW_ALLOW_FILE_STORE=true"):
        pipeline.train(config)
    assert not (tmp_path / "runs").exists()

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = pipeline.train(config)
    client = MlflowClient(tracking_uri=store)
    (tracked,) = client.search_runs(["0"])
    assert tracked.info.run_name == run.path.name and float(tracked.data.params["learning_rate"]) == 3e-3
    history = {metric.step: metric.value for metric in client.get_metric_history(tracked.info.run_id, "loss")}
    assert history == pytest.approx(losses_by_step(run), rel=1e-6)
    assert list((tmp_path / "mlruns").glob(f"0/{tracked.info.run_id}/metrics/loss"))  # files, not a database


class FailAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise RuntimeError("failed on purpose")


def test_a_failed_run_is_failed_in_mlflow_and_resumes_with_each_step_logged_once(
    tiny_encoder, sentiment_file, tmp_path, monkeypatch
):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    config = classification_config(
        tiny_encoder, sentiment_file, tmp_path / "runs", report_to=["tensorboard", "mlflow"], **TRACKED, save_steps=4
    )
    with pytest.raises(RuntimeError, match="failed on purpose"):
        pipeline.train(config, callbacks=[FailAtStep()])  # logs steps 1, 2, 4 and 6; checkpoint at step 4
    (run,) = (RunDir(path) for path in (tmp_path / "runs").iterdir())
    client = MlflowClient(tracking_uri=store)
    (failed,) = client.search_runs(["0"])
    assert run.state()["state"] == "failed" and failed.info.status == "FAILED"
    assert failed.info.run_id == run.state()["tracking"]["mlflow"]["run_id"]
    assert mlflow.active_run() is None  # the next training in this process starts a run of its own

    pipeline.train(config, resume=run)
    losses = losses_by_step(run)
    assert 6 in losses and len(list(run.tensorboard_dir.iterdir())) == 2  # one event file per attempt
    events = EventAccumulator(str(run.tensorboard_dir))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [event.step for event in logged] == list(losses)  # step 6 of the failed attempt purged
    assert [event.value for event in logged] == pytest.approx(list(losses.values()), rel=1e-6)
    resumed = run.state()["tracking"]["mlflow"]["run_id"]
    assert resumed != failed.info.run_id and client.get_run(resumed).info.status == "FINISHED"


def test_no_tracker_by_default(tiny_encoder, sentiment_file, tmp_path):
    seen = SeeArguments()
    run = pipeline.train(
        classification_config(tiny_encoder, sentiment_file, tmp_path, report_to=[], **TRACKED), callbacks=[seen]
    )
    assert seen.args.report_to == []
    assert not run.tensorboard_dir.exists() and "tracking" not in run.state()
    assert "training tracked in" not in run.card_path.read_text()


@pytest.mark.parametrize(
    ("tracker", "install"), [("mlflow", "pip install 'tunelab[tracking]'"), ("wandb", "pip install wandb")]
)
def test_a_tracker_not_installed_is_refused_before_the_run_starts(
    tracker, install, tiny_encoder, sentiment_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(tracking, "is_installed", lambda name: name != tracker)
    with pytest.raises(ConfigError) as refused:
        pipeline.train(
            classification_config(
                tiny_encoder, sentiment_file, tmp_path / "runs", report_to=["tensorboard", tracker], **TRACKED
            )
        )
    message = str(refused.value)
    assert "training.report_to" in message and tracker in message and f"`{install}`" in message
    assert not (tmp_path / "runs").exists()


def test_report_to_defaults_to_none_and_refuses_unknown_or_repeated_trackers():
    assert RunConfig().training.report_to == []
    assert build_config({"training": {"report_to": ["mlflow", "tensorboard"]}}).training.report_to == [
        "mlflow",
        "tensorboard",
    ]
    with pytest.raises(ConfigError, match=r"training\.report_to\.0.*'tensorbord'.*Did you mean 'tensorboard'"):
        build_config({"training": {"report_to": ["tensorbord"]}})
    with pytest.raises(ConfigError, match=r"training\.report_to.*names mlflow more than once"):
        build_config({"training": {"report_to": ["mlflow", "tensorboard", "mlflow"]}})
