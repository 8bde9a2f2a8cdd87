"""Proof that a new kind of example and a new objective are each one file (issue 30, item 7): both are defined
here, registered with one call each, selected by a config's `data.kind` and `objective`, and a tiny run goes
through train -> eval -> predict -> serve (and its page in the UI) with nothing else in tunelab knowing about them.

The kind, `reversal`, is prompt -> answer where the answer is the prompt's words in reverse order; it reads a
model's answer as the words of its first line and is judged by exact match. The objective, `smoothed_text_to_text`,
is text-to-text training whose loss is label-smoothed cross-entropy on the answer tokens.
"""

from __future__ import annotations

import json
import random

import pytest
import torch.nn.functional as F
from fastapi.testclient import TestClient

from tunelab.data.encode import TaskCollator
from tunelab.kinds import KINDS, register_kind
from tunelab.kinds.encoding import IGNORE_INDEX, padded_with_ignored_labels
from tunelab.kinds.generation import Generation
from tunelab.serve.catalog import load_catalog
from tunelab.train.objectives import OBJECTIVES, register_objective
from tunelab.train.objectives.text_to_text import TextToText
from tunelab.train.trainer import PlannedTrainer
from tunelab.ui.app import create_ui

from helpers import NOUNS, POSITIVE, cli, logged_losses, only_run, write_jsonl, write_yaml
from serving import call, in_process


class Reversal(Generation):
    """The answer is the prompt's words reversed: generated like any answer, read back as the words of the
    model's first line (what follows is the model rambling on), and right only when every word is in place."""

    name = "reversal"
    primary_metric = "exact_match"
    inline_metrics = ("exact_match",)
    answer_key = "reversed"

    def target(self, spec, record):
        return " ".join(reversed(str(record.fields[spec.input_fields[0]]).split()))

    def parse(self, spec, outputs, records):
        return [" ".join(output.strip().split("\n")[0].split()) for output in outputs]


SMOOTHING = 0.1
LOSSES: list[float] = []
"""Every loss the toy objective's trainer computed, in order: proof that its loss is the one that trained."""


class LabelSmoothedTrainer(PlannedTrainer):
    """Next-token cross-entropy on the answer tokens with label smoothing, from the model's own logits."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits, labels = outputs.logits[:, :-1], inputs["labels"][:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=SMOOTHING,
        )
        if model.training:
            LOSSES.append(loss.item())
        return (loss, {"logits": outputs.logits}) if return_outputs else loss


class SmoothedTextToText(TextToText):
    """text_to_text with its own trainer: label-smoothed answers instead of the chunked completion loss."""

    name = "smoothed_text_to_text"
    base_note = "Base = the pretrained decoder before tuning, prompted the same way."

    def _trainer_and_collator(self, model, config, tokenizer):
        return LabelSmoothedTrainer, TaskCollator(padded_with_ignored_labels(tokenizer))


@pytest.fixture
def toys():
    """The toy kind and objective registered for one test, and taken out of the registries afterwards."""
    register_kind(Reversal)
    try:
        register_objective(SmoothedTextToText)
        try:
            LOSSES.clear()
            yield
        finally:
            del OBJECTIVES[SmoothedTextToText.name]
    finally:
        del KINDS[Reversal.name]


def reversal_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [rng.choice(POSITIVE), rng.choice(NOUNS)]
        rows.append({"words": " ".join(words), "reversed": " ".join(reversed(words))})
    return rows


def toy_run_settings(model: str, train_file, out) -> dict:
    """A tiny decoder run whose data is of the toy kind and which trains with the toy objective."""
    return {
        "name": "toy",
        "output_dir": str(out),
        "model": {"name": model},
        "objective": SmoothedTextToText.name,
        "data": {
            "kind": Reversal.name,
            "train": str(train_file),
            "prompt_template": "reverse: {words}",
            "response_field": "reversed",
            "max_length": 32,
            "max_target_length": 6,
        },
        "method": {"name": "full"},
        "training": {"epochs": 12, "batch_size": 8, "learning_rate": 1e-2, "logging_steps": 1, "precision": "fp32"},
        "eval": {"max_new_tokens": 4},
    }


def test_a_kind_and_an_objective_defined_here_train_evaluate_predict_and_serve(
    toys, tiny_decoder, tmp_path, monkeypatch
):
    train_file = write_jsonl(tmp_path / "reversal.jsonl", reversal_rows(48, seed=0))
    config = write_yaml(tmp_path / "toy.yaml", toy_run_settings(tiny_decoder, train_file, tmp_path / "runs"))

    assert cli(f"train {config}") == 0
    run = only_run(tmp_path / "runs")
    assert logged_losses(run) == pytest.approx(LOSSES, rel=1e-3), "the run logged another loss than the toy's"
    assert len(LOSSES) >= 6 and sum(LOSSES[-3:]) < sum(LOSSES[:3]), f"the label-smoothed loss did not fall: {LOSSES}"
    assert run.config().data.kind == Reversal.name and run.config().objective == SmoothedTextToText.name
    assert SmoothedTextToText.base_note in (run.path / "README.md").read_text()  # the card asks the objective
    (scored,) = json.loads(run.eval_path.read_text())["tasks"].values()  # before and after tuning
    assert scored["metric"] == "exact_match" and "exact_match" in scored["tuned"]["metrics"]

    held_out = write_jsonl(tmp_path / "held_out.jsonl", reversal_rows(6, seed=1))
    assert cli(f"eval {run.path} --data {held_out} --output {tmp_path / 'eval'}") == 0
    (report,) = (tmp_path / "eval").glob("data-held_out*.json")
    (task,) = json.loads(report.read_text())["tasks"].values()
    assert list(task["metrics"]) == ["exact_match"], task

    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"words": r["words"]} for r in reversal_rows(3, seed=2)])
    predictions = tmp_path / "predictions.jsonl"
    assert cli(f"predict {run.path} --input {inputs} --output {predictions}") == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 3
    reading = KINDS[Reversal.name].parse(None, [row["prediction"] for row in rows], [])
    assert [row[Reversal.answer_key] for row in rows] == reading  # the kind's reading beside the text generated

    with in_process(load_catalog([f"toy={run.path}"])) as url:
        status, body, _ = call(
            url,
            "/v1/chat/completions",
            {"model": "toy", "messages": [{"role": "user", "content": "reverse: great film"}], "max_tokens": 4},
        )
    assert status == 200 and body["choices"][0]["message"]["content"].strip(), body

    monkeypatch.chdir(tmp_path)  # the UI names a run by its path from the working directory
    page = TestClient(create_ui([tmp_path / "runs"])).get(f"/run/runs/{run.path.name}")
    assert page.status_code == 200 and "exact_match" in page.text
