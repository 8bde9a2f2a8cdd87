"""Resume after `kill -9`: every run kind, one task or a mixture, curricula included, is killed by a real SIGKILL
once it has written a step checkpoint, resumed with `tunelab train --resume`, and ends where the uninterrupted
run ends: the same loss at every logged step (also in the logging window the checkpoint fell inside), each step
logged once, and the same final scores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import TrainerControl, TrainerState

from tunelab.cli import main
from tunelab.runs import RunDir
from tunelab.train import trainer as trainer_module

from helpers import (
    NEGATIVE,
    NOUNS,
    POSITIVE,
    SHARED_DATA,
    SUBJECTS,
    losses_by_step,
    only_run,
    preference_run_settings,
    subject_pairs,
    write_jsonl,
)

SAVE_STEPS = 5
LOGGING_STEPS = 3
"""Checkpoints at 5 and 10 fall inside the logging windows 5-6 and 10-12: the resumed run logs the mean over the
whole window, as the uninterrupted run does."""

MIXTURE = {"eval_examples": 4, "validation_examples": 4}
STAGES = [
    {"name": "first", "tasks": [{"task": "sst2", "max_examples": 24}], "steps": 20},
    {
        "name": "then",
        "tasks": [{"task": "sst2", "max_examples": 24}, {"task": "rte", "max_examples": 16}],
        "steps": 20,
    },
]
TASKS = [{"task": "sst2", "max_examples": 24}, {"task": "rte", "max_examples": 16}]


def _config(kind: str, folder: Path, encoder: str, decoder: str) -> Path:
    training = {
        "batch_size": 4,
        "learning_rate": 3e-3,
        "precision": "fp32",
        "logging_steps": LOGGING_STEPS,
        "seed": 3,
        "save_steps": SAVE_STEPS,
        "save_minutes": None,
    }
    if kind == "classifier":
        rows = [
            {"text": f"the {noun} was {adjective}", "label": label}
            for label, words in (("positive", POSITIVE), ("negative", NEGATIVE))
            for adjective in words
            for noun in NOUNS[:4]
        ]
        config = {
            "task": "classification",
            "model": {"name": encoder},
            "method": {"name": "lora"},
            "data": {"train": str(write_jsonl(folder / "sentiment.jsonl", rows)), "max_length": 32},
            "training": {**training, "epochs": 4},
        }
    elif kind == "text_to_text":
        rows = [{"question": f"repeat the word {w}", "answer": w} for w in (POSITIVE + NEGATIVE + NOUNS) * 3]
        config = {
            "task": "causal_lm",
            "model": {"name": decoder},
            "method": {"name": "lora"},
            "data": {
                "train": str(write_jsonl(folder / "copy.jsonl", rows)),
                "prompt_template": "{question}",
                "response_field": "answer",
                "max_length": 48,
            },
            "training": {**training, "epochs": 3},
        }
    elif kind == "preference":  # full fine-tuning: the reference's log-probabilities are kept in the run
        splits = {"train": SUBJECTS[:10], "validation": SUBJECTS[10:11], "test": SUBJECTS[11:]}
        files = {
            split: str(write_jsonl(folder / f"{split}.jsonl", subject_pairs(names))) for split, names in splits.items()
        }
        settings = preference_run_settings(
            decoder, files["train"], "full", {"validation": files["validation"], "test": files["test"]}
        )
        config = {  # 5 steps of 2 pairs an epoch: the first checkpoint, at step 5, falls inside the window 4-6
            **settings,
            "training": {**settings["training"], **training, "batch_size": 2, "max_steps": 15},
        }
    elif kind == "multi_head":
        config = {
            "task": "classification",
            "model": {"name": encoder},
            "method": {"name": "full"},
            "data": {"max_length": 96},
            "mixture": {**MIXTURE, "tasks": TASKS, "architecture": "multi_head"},
            "training": {**training, "max_steps": 40},
        }
    else:  # mixtures of instructions, as a curriculum: one plain, one with an adapter per task
        architecture = "task_adapters" if kind == "task_adapters_curriculum" else "text_to_text"
        config = {
            "task": "causal_lm",
            "model": {"name": decoder},
            "method": {"name": "lora"},
            "data": {"max_length": 96},
            "mixture": {
                **MIXTURE,
                "stages": STAGES,
                "architecture": architecture,
                "shared_adapter": architecture == "task_adapters",
            },
            "training": training,
        }
    path = folder / f"{kind}.yaml"
    path.write_text(yaml.safe_dump({"name": kind, "eval": {"max_new_tokens": 4}, **config}), encoding="utf-8")
    return path


def _kill_after_a_checkpoint(config: Path, output_dir: Path) -> RunDir:
    """`tunelab train` in a subprocess, SIGKILLed as soon as its first step checkpoint is complete."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(config), f"output_dir={output_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if any(
            RunDir(run).last_checkpoint() for run in output_dir.glob("*/")
        ):  # a whole checkpoint, not one being written
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait(timeout=60) == -signal.SIGKILL, (
        f"the run ended (exit {process.returncode}) before it could be killed: {process.stderr.read()[-2000:]}"
    )
    return only_run(output_dir)


def _tuned(run: RunDir) -> dict:
    return {name: task["tuned"] for name, task in json.loads(run.eval_path.read_text())["tasks"].items()}


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="the mixtures read sst2 and rte from ../shared/data")
@pytest.mark.parametrize(
    "kind", ["classifier", "text_to_text", "multi_head", "curriculum", "task_adapters_curriculum"]
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(kind, tiny_encoder, tiny_decoder, tmp_path):
    _resumes_to_the_uninterrupted_result(_config(kind, tmp_path, tiny_encoder, tiny_decoder), tmp_path)


def test_a_killed_classifier_resumes_to_the_uninterrupted_result(tiny_encoder, tiny_decoder, tmp_path):
    """The classifier kind without ../shared/data, in seconds: the unit suite's check of the resumed loss window."""
    _resumes_to_the_uninterrupted_result(_config("classifier", tmp_path, tiny_encoder, tiny_decoder), tmp_path)


def _resumes_to_the_uninterrupted_result(config: Path, tmp_path: Path) -> None:
    _resume_to(*_whole_and_killed(config, tmp_path))


def _whole_and_killed(config: Path, tmp_path: Path) -> tuple[RunDir, RunDir]:
    """The config trained without interruption, and trained again until killed inside a logging window."""
    assert main(["train", str(config), f"output_dir={tmp_path / 'whole'}"]) == 0
    whole = only_run(tmp_path / "whole")

    killed = _kill_after_a_checkpoint(config, tmp_path / "killed")
    assert killed.state()["state"] == "running" and not killed.eval_path.exists()  # a killed run never looks complete
    assert killed.checkpoint_step() % LOGGING_STEPS  # killed inside a logging window
    return whole, killed


def _resume_to(whole: RunDir, killed: RunDir) -> None:
    """Resume the killed run, which must end as the whole run did."""
    assert main(["train", "--resume", str(killed.path)]) == 0
    assert killed.state()["state"] == "complete"
    assert losses_by_step(killed) == pytest.approx(losses_by_step(whole), rel=1e-5)
    _assert_same_scores(_tuned(killed), _tuned(whole))


def test_a_killed_preference_run_reads_its_reference_back_and_resumes_to_the_uninterrupted_result(
    chat_decoder, tmp_path, capsys
):
    """Under full fine-tuning the reference's log-probabilities are computed before the first step; the resumed
    run reads them back from the run (by then the weights are tuned: computing them again would be wrong)."""
    whole, killed = _whole_and_killed(_config("preference", tmp_path, "", chat_decoder), tmp_path)
    reference = killed.data_dir / "reference_logps.json"
    written = reference.stat().st_mtime_ns
    capsys.readouterr()
    _resume_to(whole, killed)
    resumed = capsys.readouterr().out
    assert f"reference log-probabilities read from {reference}" in resumed and "computed once" not in resumed
    assert reference.stat().st_mtime_ns == written
    assert json.loads(reference.read_text()) == json.loads((whole.data_dir / "reference_logps.json").read_text())


def _assert_same_scores(a: dict, b: dict) -> None:
    """Equal task reports, numbers within float rounding."""
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].get("skipped") == b[task].get("skipped")
        for metric, interval in a[task].get("metrics", {}).items():
            assert interval == pytest.approx(b[task]["metrics"][metric], abs=1e-6), (task, metric)


def test_checkpoints_every_n_steps_and_every_few_minutes(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    callback = trainer_module.CheckpointEvery(steps=4, minutes=2)
    state, saved = TrainerState(max_steps=100), []
    for step in range(1, 13):
        state.global_step = step
        clock[0] += 30 if step != 6 else 100  # step 6 takes long: 2 minutes have passed since the start
        control = TrainerControl()
        callback.on_step_end(None, state, control)
        if control.should_save:
            saved.append(step)
            callback.on_save(None, state, control)
    assert saved == [4, 6, 8, 12]  # every 4 steps, and at step 6 for the time (whose clock then restarts)


@pytest.mark.parametrize("state_file", [None, "", '{"global_step": 1'])  # not yet written, just opened, cut off
def test_a_checkpoint_a_kill_interrupted_is_passed_over(tmp_path, state_file):
    run = RunDir(tmp_path)
    for step, text in ((5, '{"global_step": 5}'), (10, state_file)):
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if text is not None:
            (folder / "trainer_state.json").write_text(text)
    assert run.last_checkpoint() == run.checkpoints / "checkpoint-5"
