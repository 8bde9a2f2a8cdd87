"""A run stopped by Ctrl-C or SIGTERM, or by its own divergence: what it saves, says and records.

Ctrl-C and SIGTERM are real signals sent to `tunelab train` in a subprocess: the run finishes its step, saves a
checkpoint, is marked interrupted and says so in one line; the resumed run says where it continues, sums the time of
both attempts and ends where the uninterrupted run ends. A diverged run fails at its step and names the learning
rate instead of reporting success.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tunelab import pipeline
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.runs import RunDir
from tunelab.train.trainer import TrainingDiverged

from helpers import NEGATIVE, NOUNS, POSITIVE, losses_by_step, only_run, tiny_run_settings, write_jsonl, write_yaml

STEPS = 80
"""Long enough that a signal sent at the first logged step arrives well before the end (steps take milliseconds)."""


def _write_config(folder: Path, encoder: str, **training) -> Path:
    """A tiny LoRA classifier with validation (so it keeps its best checkpoint), logging every 3 steps: a
    checkpoint at a step that is not a multiple of 3 falls inside a logging window."""
    rows = [
        {"text": f"the {noun} was {adjective}", "label": label}
        for label, words in (("positive", POSITIVE), ("negative", NEGATIVE))
        for adjective in words
        for noun in NOUNS
    ]
    training = {
        "max_steps": STEPS,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "logging_steps": 3,
        "seed": 3,
        "save_minutes": None,
        **training,
    }
    data = write_jsonl(folder / "sentiment.jsonl", rows)
    settings = tiny_run_settings("classification", encoder, data, name="tiny", method="lora", **training)
    return write_yaml(folder / "tiny.yaml", settings)


@pytest.fixture(scope="module")
def uninterrupted(tiny_encoder, tmp_path_factory) -> RunDir:
    folder = tmp_path_factory.mktemp("whole")
    assert main(["train", str(_write_config(folder, tiny_encoder)), f"output_dir={folder / 'runs'}"]) == 0
    return only_run(folder / "runs")


def _signal_once_it_logged(config: Path, output_dir: Path, number: int) -> subprocess.CompletedProcess:
    """`tunelab train` in a subprocess, sent `number` once it logged its first step. SIGINT is given back to the
    child: a pytest-xdist worker ignores it, and an ignored signal stays ignored across exec."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(config), f"output_dir={output_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if any('"loss"' in p.read_text() for p in output_dir.glob("*/metrics.jsonl")):
            process.send_signal(number)
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_saves_the_step_and_the_resumed_run_ends_as_the_uninterrupted_one(
    number, uninterrupted, tiny_encoder, tmp_path, capsys
):
    config = _write_config(tmp_path, tiny_encoder)
    stopped = _signal_once_it_logged(config, tmp_path / "runs", number)
    run = only_run(tmp_path / "runs")

    assert stopped.returncode == 128 + number, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    line = stopped.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted at step (\d+); resume with tunelab train --resume (.+)", line)
    assert match and Path(match[2]) == run.path, line
    step = int(match[1])
    assert 0 < step < STEPS
    state = run.state()
    assert (state["state"], state["interrupted_at_step"], state["attempts"]) == ("interrupted", step, 1)
    assert run.checkpoint_step() == step  # the step it stopped at was saved, not only the last periodic checkpoint
    first_attempt = state["train_seconds"]
    assert first_attempt > 0

    assert main(["train", "--resume", str(run.path)]) == 0
    assert f"resuming at step {step} of {STEPS}" in capsys.readouterr().out
    state = run.state()
    assert (state["state"], state["attempts"]) == ("complete", 2)
    assert "interrupted_at_step" not in state and state["train_seconds"] > first_attempt  # both attempts summed
    assert f"{state['train_seconds']:.1f} s over 2 attempts" in run.card_path.read_text()
    # every logged loss, that of the logging window the resume fell inside too
    assert losses_by_step(run) == pytest.approx(losses_by_step(uninterrupted), rel=1e-5)


def test_a_complete_run_names_the_step_it_kept_not_a_deleted_checkpoint(uninterrupted):
    state = uninterrupted.state()
    assert not uninterrupted.checkpoints.exists() and "best_checkpoint" not in state
    validated = [
        e["step"] for e in map(json.loads, uninterrupted.metrics_path.read_text().splitlines()) if "eval_loss" in e
    ]
    assert state["best_step"] in validated


class FailAtSecondStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("the machine went away")


def test_a_resume_without_a_checkpoint_says_it_starts_over(tiny_encoder, tmp_path, capsys):
    config = load_config(_write_config(tmp_path, tiny_encoder, max_steps=6), [f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(RuntimeError, match="went away"):
        pipeline.train(config, callbacks=[FailAtSecondStep()])
    run = only_run(tmp_path / "runs")
    assert run.last_checkpoint() is None and run.state()["state"] == "failed" and list(losses_by_step(run)) == [1]
    capsys.readouterr()

    assert main(["train", "--resume", str(run.path)]) == 0
    assert (
        f"no complete checkpoint in {run.checkpoints}: training starts over, at step 0 of 6" in capsys.readouterr().out
    )
    assert run.state()["state"] == "complete" and "error" not in run.state()
    assert list(losses_by_step(run)) == [1, 3, 6]  # step 1 once: the failed attempt's line went


def test_resume_refuses_a_config_beside_it(tmp_path, capsys):
    assert main(["train", "configs/sentiment-minilm-lora.yaml", "--resume", str(tmp_path / "a-run")]) == 2
    error = capsys.readouterr().err
    assert "takes no config or overrides" in error and "configs/sentiment-minilm-lora.yaml" in error
    assert main(["train", "--resume", str(tmp_path / "a-run"), "training.epochs=2"]) == 2
    assert "drop 'training.epochs=2'" in capsys.readouterr().err


class PoisonAt(TrainerCallback):
    """Sets a weight to NaN after step `step`: the next step's loss and gradients are NaN, as after a blow-up."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)


def test_a_diverged_run_fails_at_its_step_and_names_the_learning_rate(tiny_encoder, tmp_path):
    config = load_config(_write_config(tmp_path, tiny_encoder, max_steps=12), [f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(TrainingDiverged, match=r"at step 5 \(loss nan, gradient norm nan\).*learning rate 0.003"):
        pipeline.train(config, callbacks=[PoisonAt(4)])
    run = only_run(tmp_path / "runs")
    state = run.state()
    assert state["state"] == "failed" and "step 5" in state["error"] and "training.learning_rate" in state["error"]
    assert not run.card_path.exists() and not run.eval_path.exists()
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert logged[-1]["step"] == 5 and math.isnan(logged[-1]["loss"])  # the step that diverged is on record


def test_a_learning_rate_far_too_high_fails_the_run_instead_of_completing_it(tiny_encoder, tmp_path, capsys):
    config = _write_config(tmp_path, tiny_encoder, max_steps=30, learning_rate=1e4)
    assert main(["train", str(config), f"output_dir={tmp_path / 'runs'}"]) == 2
    output = capsys.readouterr()
    assert "training diverged at step" in output.err and "learning rate 10000" in output.err
    assert "run complete" not in output.out
    assert only_run(tmp_path / "runs").state()["state"] == "failed"
