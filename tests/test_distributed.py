"""Data-parallel training: `tunelab train --nproc 2` (torchrun, gloo on CPU) trains the run one process trains,
for one task and for mixtures of every architecture.

Two processes with batch 4 and one with batch 8 see the same 8 examples of the planned order at every
optimiser step, and DDP averages the two halves' gradients into the one-process gradient, so the logged loss
curves agree up to floating-point summation order. Dropout is switched off: each process draws its own masks,
which no process count can reproduce.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModel, AutoTokenizer

from tunelab.cli import main
from tunelab.runs import RunDir

from helpers import (
    NEGATIVE,
    NOUNS,
    POSITIVE,
    SUBJECTS,
    preference_run_settings,
    session_home,
    subject_pairs,
    write_jsonl,
    write_yaml,
)

pytestmark = pytest.mark.integration  # torchrun launches and three trainings: ~50 s on 2 cores

STEPS = 6
LOSS_RTOL = 1e-5
"""Same examples, same gradients: what is left is fp32 summation order (two half-batch sums added after the
all-reduce instead of one sum, other thread counts), measured at ~1e-7 relative over six steps. Examples in
another order (length-grouped sampling sized by the per-device batch) measured 4.5e-3, so 1e-5 separates the two."""

MIXTURE = {
    "tasks": [{"task": "sst2", "max_examples": 24}, {"task": "rte", "max_examples": 16}],
    "eval_examples": 4,
    "validation_examples": 4,
}


def _encoder_without_dropout(model_dir: str, out: Path) -> str:
    """The tiny encoder with dropout off (BERT's default is 0.1), for the reason in the module docstring."""
    model = AutoModel.from_pretrained(model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return str(out)


def _sentiment_file(path: Path) -> Path:
    rng = random.Random(0)
    return write_jsonl(
        path,
        [
            {
                "text": f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}",
                "label": "positive" if i % 2 else "negative",
            }
            for i in range(96)
        ],
    )


def _copy_file_of_mixed_lengths(path: Path) -> Path:
    """copy_task_file's prompts are all one length, which hides the order length-grouped sampling chooses."""
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + NOUNS
    return write_jsonl(
        path,
        [
            {"question": "now " * rng.randrange(8) + f"repeat the word {word}", "answer": word}
            for word in (rng.choice(words) for _ in range(64))
        ],
    )


def _config_file(
    path: Path,
    task: str,
    model_dir: str,
    data_file: Path | None,
    mixture: dict | None = None,
    method: str = "lora",
    **training,
) -> Path:
    data = (
        {"max_length": 96, "max_target_length": 8}
        if mixture
        else {"train": str(data_file), "max_length": 32}
        if task == "classification"
        else {
            "train": str(data_file),
            "prompt_template": "{question}",
            "response_field": "answer",
            "max_length": 48,
            "max_target_length": 8,
        }
    )
    path.write_text(
        yaml.safe_dump(
            {
                "name": f"tiny-ddp-{task}",
                "task": task,
                "model": {"name": model_dir},
                "data": data,
                "method": {"name": method, "lora": {"dropout": 0.0}},
                "training": {
                    "max_steps": STEPS,
                    "logging_steps": 1,
                    "learning_rate": 3e-3,
                    "precision": "fp32",
                    "seed": 7,
                    **training,
                },
                "eval": {"max_new_tokens": 4},
                **({"mixture": mixture} if mixture else {}),
            }
        ),
        encoding="utf-8",
    )
    return path


def _train_both(config: Path, out: Path) -> tuple[RunDir, RunDir, str]:
    """The config trained by 2 processes of batch 4 (torchrun) and by 1 process of batch 8: the runs and the
    launcher's output."""
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "train",
            str(config),
            "training.batch_size=4",
            f"output_dir={out / 'two'}",
            "--nproc",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-4000:] + launched.stderr[-4000:]
    assert main(["train", str(config), "training.batch_size=8", f"output_dir={out / 'one'}"]) == 0
    return _only_run(out / "two"), _only_run(out / "one"), launched.stdout


def _only_run(output_dir: Path) -> RunDir:
    runs = [path for path in output_dir.iterdir() if path.is_dir()]
    assert len(runs) == 1, f"expected one run directory under {output_dir}, found {runs}"
    return RunDir(runs[0])


def _loss_per_step(run: RunDir) -> dict[int, float]:
    entries = [entry for entry in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in entry]
    steps = [entry["step"] for entry in entries]
    assert steps == list(range(1, STEPS + 1)), f"one loss line per logged step expected, got steps {steps}"
    return {entry["step"]: entry["loss"] for entry in entries}


@pytest.fixture(scope="module")
def classification_runs(tiny_encoder, tmp_path_factory) -> tuple[RunDir, RunDir, str]:
    """Trained once for the tests that read them (a torchrun launch costs ~20 s here)."""
    folder = tmp_path_factory.mktemp("ddp-classification")
    model = _encoder_without_dropout(tiny_encoder, folder / "encoder")
    config = _config_file(folder / "config.yaml", "classification", model, _sentiment_file(folder / "sentiment.jsonl"))
    with pytest.MonkeyPatch.context() as patch:  # conftest's per-test TUNELAB_HOME is not set up yet at module scope
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return _train_both(config, folder)


def test_two_processes_write_one_complete_run_directory(classification_runs):
    two, one, launcher_output = classification_runs
    assert launcher_output.count("run complete:") == 1  # the card is printed by rank 0 only
    for run, processes in ((two, 2), (one, 1)):
        state = run.state()
        assert state["state"] == "complete" and state["world_size"] == processes
        assert run.eval_path.exists() and (run.model_dir / "adapter_model.safetensors").exists()
        assert not run.checkpoints.exists()
        _loss_per_step(run)  # one writer: exactly one loss line per step


def test_two_classification_processes_follow_the_one_process_loss_curve(classification_runs):
    two, one, _ = classification_runs
    assert _loss_per_step(two) == pytest.approx(_loss_per_step(one), rel=LOSS_RTOL)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_two_decoder_processes_follow_the_one_process_loss_curve(tiny_decoder, tmp_path, packing):
    # padded: each process pads its own half batch; packed: each process packs its own rows
    config = _config_file(
        tmp_path / "config.yaml",
        "causal_lm",
        tiny_decoder,
        _copy_file_of_mixed_lengths(tmp_path / "copy.jsonl"),
        packing=packing,
    )
    two, one, _ = _train_both(config, tmp_path)
    assert _loss_per_step(two) == pytest.approx(_loss_per_step(one), rel=LOSS_RTOL)


@pytest.mark.parametrize("architecture", ["text_to_text", "multi_head", "task_adapters"])
def test_two_processes_train_a_mixture_as_one_does(architecture, tiny_decoder, tiny_encoder, tmp_path):
    """The planned mixture is dealt out batch by batch: balanced text-to-text batches, multi-head batches, and
    single-task batches that both processes route to the same adapter."""
    encoder = architecture == "multi_head"
    model = _encoder_without_dropout(tiny_encoder, tmp_path / "encoder") if encoder else tiny_decoder
    mixture = {**MIXTURE, "architecture": architecture, "balanced_batches": architecture == "text_to_text"}
    config = _config_file(
        tmp_path / "config.yaml",
        "classification" if encoder else "causal_lm",
        model,
        None,
        mixture=mixture,
        method="full" if encoder else "lora",
    )
    two, one, _ = _train_both(config, tmp_path)
    assert two.state()["world_size"] == 2 and two.state()["plan"] == one.state()["plan"]
    assert _loss_per_step(two) == pytest.approx(_loss_per_step(one), rel=LOSS_RTOL)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_follow_the_one_process_curves_of_a_preference_run(method, chat_decoder, tmp_path):
    """DPO: each process scores its half of the pairs against the reference (the adapter-free model, or for full
    fine-tuning the log-probabilities every process reads from the run), and the rewards logged are the mean
    over both halves."""
    subjects = [f"{colour} {subject}" for colour in ("red", "blue", "green") for subject in SUBJECTS]
    splits = {"train": subjects[:24], "validation": subjects[24:28], "test": subjects[28:30]}
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", subject_pairs(names)) for split, names in splits.items()}
    settings = preference_run_settings(
        chat_decoder, files["train"], method, {"validation": str(files["validation"]), "test": str(files["test"])}
    )
    settings["training"].update(max_steps=STEPS, learning_rate=3e-3 if method == "full" else 3e-2, seed=7)
    two, one, _ = _train_both(write_yaml(tmp_path / "config.yaml", settings), tmp_path)
    assert _loss_per_step(two) == pytest.approx(_loss_per_step(one), rel=LOSS_RTOL)
    assert _logged(one, "rewards/margins")[STEPS] > 0  # the policy has moved from its reference
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "eval_rewards/margins"):
        assert _logged(two, name) == pytest.approx(_logged(one, name), rel=LOSS_RTOL, abs=1e-7), name


def _logged(run: RunDir, name: str) -> dict[int, float]:
    return {
        entry["step"]: entry[name]
        for entry in map(json.loads, run.metrics_path.read_text().splitlines())
        if name in entry
    }
