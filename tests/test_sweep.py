"""`tunelab sweep` on a tiny encoder: the search space is checked when the config loads, trials are pruned,
an interrupted study continues where it stopped, and best.yaml trains to its trial's metric."""

from __future__ import annotations

import fcntl
import json
import re

import optuna
import pytest
import yaml

from tunelab import pipeline
from tunelab.config import ConfigError, build_config, load_config
from tunelab.runs import RunDir, RunError
from tunelab.sweep import STUDY, SweepError, suggest, sweep, sweep_metric, trial_config

from helpers import cli, sweep_config_file, trials_of

LORA_SPACE = {
    "training.learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
    "method.lora.r": {"low": 2, "high": 8, "step": 2},
    "method.lora.target_modules": {"choices": ["attention", ["query", "key", "value"]]},
}


def kept_metric(run: RunDir, metric: str) -> float:
    """The validation metric at the checkpoint the run kept, from its metrics log."""
    step = run.state()["best_step"]
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    return next(entry[f"eval_{metric}"] for entry in logged if entry["step"] == step and f"eval_{metric}" in entry)


# --- the sweep section ------------------------------------------------------------------------------------


def test_a_space_key_that_names_no_setting_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"space": {"training.learnig_rate": {"low": 1e-4, "high": 1e-2}}}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "sweep.space.training.learnig_rate" in message and "Did you mean 'training.learning_rate'?" in message
    assert "Known keys there: attention, batch_size, compile," in message  # the training section's, sorted


@pytest.mark.parametrize(
    "space, problem",
    [
        ({"method.lora": {"choices": [4]}}, "is a section; search its settings: method.lora.r"),
        ({"output_dir": {"choices": ["a"]}}, "the sweep sets each trial's 'output_dir' itself"),
        ({"training.learning_rate": {"low": 1e-2, "high": 1e-4}}, "low (0.01) must be below high (0.0001)"),
        ({"training.weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"training.epochs": {"low": 1}}, "give a range"),
        ({"training.epochs": {"low": 1, "high": 3, "choices": [1, 2]}}, "either choices or a range"),
        ({"method.lora.r": {"low": 4.0, "high": 32}}, "method.lora.r takes whole numbers"),
        ({"training.warmup_ratio": {"low": 0.0, "high": 1.0}}, "cannot take 1.0 (training.warmup_ratio:"),
        ({"method.lora.target_modules": {"choices": ["attention", 5]}}, "cannot take 5"),
    ],
)
def test_a_space_that_could_not_run_is_refused_at_load(space, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        build_config({"sweep": {"space": space}})


def test_the_metric_must_be_one_validation_logs_and_agree_with_the_kept_checkpoint():
    space = {"training.epochs": {"low": 1, "high": 3}}
    with pytest.raises(ConfigError, match="logs accuracy, loss, not 'f1'"):
        sweep_metric(build_config({"sweep": {"space": space, "metric": "f1"}}))
    with pytest.raises(ConfigError, match="differs from training.metric_for_best"):
        build_config({"sweep": {"space": space, "metric": "loss"}, "training": {"metric_for_best": "accuracy"}})
    assert sweep_metric(build_config({"sweep": {"space": space, "metric": "eval_loss"}})) == "loss"
    assert build_config({"sweep": {"space": space}}).sweep.direction("accuracy") == "maximize"


def test_train_trains_a_config_with_a_sweep_section_without_it(tmp_path, monkeypatch, capsys):
    trained = []

    def fake_train(config, resume=None):
        trained.append(config)
        (tmp_path / "README.md").write_text("card")
        return RunDir(tmp_path)

    monkeypatch.setattr(pipeline, "train", fake_train)
    assert cli(f"train {sweep_config_file(tmp_path, 'minilm-l6', 'x.jsonl', LORA_SPACE)}") == 0
    assert trained[0].sweep is None and "the sweep: section is for `tunelab sweep`" in capsys.readouterr().out


# --- sweeps on a tiny encoder -------------------------------------------------------------------------------


def test_median_pruning_stops_trials_worse_than_earlier_ones(tiny_encoder, sentiment_file, tmp_path):
    # A rate that wrecks the model (validation loss ~20 where the other stays at ~0.69); three validations per
    # trial, pruning after one finished trial.
    space = {"training.learning_rate": {"choices": [10.0, 1.0e-7]}}
    config = sweep_config_file(
        tmp_path, tiny_encoder, sentiment_file, space, "full", 3, metric="loss", startup_trials=1
    )
    assert cli(f"sweep {config} --trials 4 --output {tmp_path / 'sw'}") == 0
    rows = trials_of(tmp_path / "sw")
    pruned = [row for row in rows.values() if row["state"] == "pruned"]
    assert pruned and all(row["params"]["training.learning_rate"] == 10.0 for row in pruned)
    for row in pruned:
        run = RunDir(row["run_dir"])
        assert run.state()["state"] == "pruned" and "worse than the median" in run.state()["pruned"]
        assert not run.eval_path.exists() and not run.checkpoints.exists()
        with pytest.raises(RunError, match="not complete"):
            run.require_complete()
    complete = [row for row in rows.values() if row["state"] == "complete"]
    assert all(len(row["validations"]) == 3 and RunDir(row["run_dir"]).eval_path.exists() for row in complete)
    table = (tmp_path / "sw" / "trials.md").read_text()
    assert "| pruned |" in table and "| **best** |" in table
    assert (tmp_path / "sw" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_run_again_continues_its_study_and_retries_a_killed_trial(tiny_encoder, sentiment_file, tmp_path):
    config_path = sweep_config_file(tmp_path, tiny_encoder, sentiment_file, LORA_SPACE)
    directory = tmp_path / "sw"
    assert cli(f"sweep {config_path} --trials 2 --output {directory}") == 0
    first = trials_of(directory)
    assert [row["state"] for row in first.values()] == ["complete", "complete"]

    assert cli(f"sweep {config_path} --trials 3 --output {directory}") == 0
    second = trials_of(directory)
    assert len(second) == 3 and {n: second[n] for n in first} == first
    assert second[2]["params"] not in (first[0]["params"], first[1]["params"])  # new values, not a replay

    # A process killed during trial 3 leaves it RUNNING in the study, with a run directory that says running.
    config = load_config(config_path)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{directory / 'study.db'}")
    killed = study.ask()
    values = suggest(killed, config.sweep.space)
    left = RunDir.create(trial_config(config, directory, killed.number, values))
    assert cli(f"sweep {config_path} --trials 4 --output {directory}") == 0
    third = trials_of(directory)
    assert {n: third[n] for n in first} == first and third[2] == second[2]
    assert third[3]["state"] == "interrupted" and left.state()["state"] == "interrupted"
    assert third[4]["state"] == "complete" and third[4]["retry_of"] == 3 and third[4]["params"] == values
    summary = json.loads((directory / "trials.json").read_text())
    assert summary["finished"] == 4 and len(summary["trials"]) == 5
    best = max((row for row in third.values() if row["state"] == "complete"), key=lambda row: row["value"])
    assert summary["best"] == best

    with (directory / ".lock").open("w") as lock:  # another process at work on the folder
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SweepError, match="another `tunelab sweep` is working on"):
            sweep(config, directory, trials=5)


def test_best_yaml_trains_to_its_trials_metric(tiny_encoder, sentiment_file, tmp_path):
    config_path = sweep_config_file(tmp_path, tiny_encoder, sentiment_file, LORA_SPACE, metric="loss")
    directory = tmp_path / "sw"
    assert cli(f"sweep {config_path} --trials 2 --output {directory}") == 0
    best = json.loads((directory / "trials.json").read_text())["best"]
    best_yaml = directory / "best.yaml"
    config = load_config(best_yaml)
    assert config.sweep is None and config.eval.baselines == ["zero_shot"]  # the config's own, not the trial's
    assert config.training.metric_for_best == "loss"  # the checkpoint kept is the one the sweep measured
    assert config.training.learning_rate == best["params"]["training.learning_rate"]
    assert config.method.lora.target_modules == best["params"]["method.lora.target_modules"]

    assert cli(f"train {best_yaml}") == 0
    (again,) = (tmp_path / "runs").iterdir()
    assert kept_metric(RunDir(again), "loss") == pytest.approx(best["value"], abs=1e-6)
    tuned = [
        {
            name: task["tuned"]["metrics"]
            for name, task in json.loads(RunDir(path).eval_path.read_text())["tasks"].items()
        }
        for path in (best["run_dir"], again)
    ]
    assert tuned[0] and tuned[0] == tuned[1]  # the same weights: the same test scores


def test_a_sweep_whose_trials_all_fail_stops_after_three(tiny_encoder, tmp_path, capsys):
    config = sweep_config_file(tmp_path, tiny_encoder, tmp_path / "missing.jsonl", LORA_SPACE)
    assert cli(f"sweep {config} --trials 10 --output {tmp_path / 'sw'}") == 2
    assert "3 trials in a row failed" in capsys.readouterr().err
    rows = trials_of(tmp_path / "sw")
    assert [row["state"] for row in rows.values()] == ["failed"] * 3
    assert "## Failed trials" in (tmp_path / "sw" / "trials.md").read_text()
    assert not (tmp_path / "sw" / "best.yaml").exists()


def test_a_trial_stopped_with_ctrl_c_runs_again_with_its_values(tiny_encoder, sentiment_file, tmp_path, monkeypatch):
    config = load_config(sweep_config_file(tmp_path, tiny_encoder, sentiment_file, LORA_SPACE))
    trained = []

    def interrupted(config, resume=None, callbacks=()):
        trained.append(config)
        raise KeyboardInterrupt if len(trained) == 1 else RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(config, tmp_path / "sw", trials=2)
    assert [row["state"] for row in trials_of(tmp_path / "sw").values()] == ["interrupted", "waiting"]

    sweep(config, tmp_path / "sw", trials=1)  # the queued trial first; a failure counts as finished
    rows = trials_of(tmp_path / "sw")
    assert rows[1]["state"] == "failed" and rows[1]["retry_of"] == 0 and rows[1]["params"] == rows[0]["params"]
    assert rows[1]["error"] == "RuntimeError: out of memory" and len(rows) == 2
    assert trained[1].training.learning_rate == trained[0].training.learning_rate
