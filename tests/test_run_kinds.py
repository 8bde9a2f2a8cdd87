"""Every run kind with every command: one-task runs (a classifier, a generator) and mixtures of all three
architectures are trained once on tiny models, then predicted with, scored on files and suites, checked for
forgetting, robustness and bias, exported for human rating and merged, each with the task routed to its head
or adapter."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tunelab import pipeline, run_commands
from tunelab.config import build_config
from tunelab.data.task_records import load_records
from tunelab.eval import human
from tunelab.eval.human import HumanEvalError
from tunelab.runs import RunDir
from tunelab.tasks import load_task
from tunelab.train.trained import load_run

from helpers import NEGATIVE, NOUNS, POSITIVE, SHARED_DATA, cli, session_home, write_jsonl

pytestmark = pytest.mark.skipif(not SHARED_DATA.exists(), reason="the mixtures read sst2 and rte from ../shared/data")

KINDS = ["classifier", "text_to_text", "mixture", "multi_head", "task_adapters"]
GENERATING = {"text_to_text", "mixture", "task_adapters"}
MIXTURE = {
    "tasks": [{"task": "sst2", "max_examples": 16}, {"task": "rte", "max_examples": 8}],
    "eval_examples": 4,
    "validation_examples": 4,
}


def _config(kind: str, folder, encoder: str, decoder: str):
    rng = random.Random(0)
    common = {
        "name": kind,
        "output_dir": str(folder / "runs"),
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 3e-3, "precision": "fp32", "logging_steps": 1},
        "eval": {"max_new_tokens": 4, "retention_limit": 2},
    }
    if kind == "classifier":
        rows = [
            {
                "text": f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}",
                "label": "positive" if i % 2 else "negative",
            }
            for i in range(40)
        ]
        return build_config(
            {
                **common,
                "task": "classification",
                "model": {"name": encoder},
                "method": {"name": "lora"},
                "data": {"train": str(write_jsonl(folder / "sentiment.jsonl", rows)), "max_length": 32},
                "eval": {**common["eval"], "retention_suite": "glue-mini"},
            }
        )
    if kind == "text_to_text":
        rows = [
            {"question": f"repeat the word {w}", "answer": w}
            for w in (rng.choice(POSITIVE + NOUNS) for _ in range(40))
        ]
        return build_config(
            {
                **common,
                "task": "causal_lm",
                "model": {"name": decoder},
                "method": {"name": "lora"},
                "data": {
                    "train": str(write_jsonl(folder / "copy.jsonl", rows)),
                    "prompt_template": "{question}",
                    "response_field": "answer",
                    "max_length": 48,
                },
            }
        )
    architecture = "text_to_text" if kind == "mixture" else kind
    encoder_based = kind == "multi_head"
    return build_config(
        {
            **common,
            "task": "classification" if encoder_based else "causal_lm",
            "model": {"name": encoder if encoder_based else decoder},
            "method": {"name": "full" if encoder_based else "lora"},
            "data": {"max_length": 96},
            "mixture": {
                **MIXTURE,
                "architecture": architecture,
                "eval_only": [] if encoder_based else ["cola"],
                "shared_adapter": kind == "task_adapters",
            },
            "eval": {**common["eval"], **({"retention_suite": "glue-mini"} if encoder_based else {})},
        }
    )


@pytest.fixture(scope="module")
def runs(tiny_encoder, tiny_decoder, tmp_path_factory) -> dict[str, RunDir]:
    """One complete run of each kind (each trained in seconds)."""
    folder = tmp_path_factory.mktemp("run-kinds")
    with pytest.MonkeyPatch.context() as patch:  # conftest's per-test TUNELAB_HOME is not set up yet at module scope
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return {kind: pipeline.train(_config(kind, folder, tiny_encoder, tiny_decoder)) for kind in KINDS}


def _task_option(kind: str) -> str:
    return "" if kind in ("classifier", "text_to_text") else "--task sst2"


def _inputs(kind: str, folder, labelled: bool):
    """Records of the run's task: its own fields for a one-task run, SST-2's for a mixture."""
    if kind == "classifier":
        rows = [
            {"text": "the film was great", "label": "positive"},
            {"text": "the cast was dull", "label": "negative"},
        ]
    elif kind == "text_to_text":
        rows = [
            {"question": "repeat the word film", "answer": "film"},
            {"question": "repeat the word dull", "answer": "dull"},
        ]
    else:
        rows = [
            {"text": r.fields["text"], "label": r.fields["label"]} for r in load_records(load_task("sst2"), 2, seed=3)
        ]
    if not labelled:
        rows = [{k: v for k, v in row.items() if k not in ("label", "answer")} for row in rows]
    return write_jsonl(folder / f"{kind}-{'labelled' if labelled else 'inputs'}.jsonl", rows)


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_predicts(kind, runs, tmp_path):
    output = tmp_path / "predictions.jsonl"
    assert (
        cli(
            f"predict {runs[kind].path} --input {_inputs(kind, tmp_path, False)} --output {output} {_task_option(kind)}"
        )
        == 0
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(row["prediction"], str) for row in rows)
    if kind in GENERATING:  # generated text, mapped to a label when the task has label words
        assert all(("label" in row) == (kind != "text_to_text") for row in rows)
    else:  # a head's label with every label's probability
        assert all(
            row["prediction"] in row["scores"] and sum(row["scores"].values()) == pytest.approx(1, abs=1e-4)
            for row in rows
        )


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_is_scored_on_a_labelled_file(kind, runs, tmp_path):
    data = _inputs(kind, tmp_path, True)
    assert (
        cli(f"eval {runs[kind].path} --data {data} --output {tmp_path / 'report'} --samples 50 {_task_option(kind)}")
        == 0
    )
    report = json.loads((tmp_path / "report" / f"data-{data.stem}.json").read_text())
    scored = report["tasks"][data.name]
    assert scored["examples"] == 2 and "metrics" in scored, scored


EXPECTED_SUITE = {  # glue-mini's tasks (sst2, rte, cola) each kind can answer
    "classifier": {"sst2"},  # one head with SST-2's labels
    "text_to_text": {"sst2", "rte", "cola"},
    "mixture": {"sst2", "rte", "cola"},
    "multi_head": {"sst2", "rte"},  # a head per trained task
    "task_adapters": {"sst2", "rte", "cola"},  # cola through the shared adapter
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_takes_a_suite_routing_each_task(kind, runs, tmp_path):
    assert cli(f"eval {runs[kind].path} --suite glue-mini --limit 2 --samples 20 --output {tmp_path}") == 0
    report = json.loads((tmp_path / "glue-mini.json").read_text())
    assert {name for name, task in report["tasks"].items() if "skipped" not in task} == EXPECTED_SUITE[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_reports_forgetting(kind, runs, tmp_path):
    run = runs[kind]
    if kind in GENERATING:  # base and tuned answer every suite task as instructions
        assert (
            cli(
                f"forgetting {run.config().model.name} {run.path} --suite glue-mini --limit 2 --samples 20 --output {tmp_path}"
            )
            == 0
        )
        report = json.loads((tmp_path / "forgetting-glue-mini.json").read_text())
    else:  # an encoder's base has no head to answer with: the run scored its untrained head(s) at the end of training
        report = json.loads((run.path / "eval" / "forgetting-glue-mini.json").read_text())
        assert "Forgetting (glue-mini suite)" in run.card_path.read_text()
    assert {name for name, row in report["tasks"].items() if "skipped" not in row} == EXPECTED_SUITE[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_is_checked_for_robustness_and_bias(kind, runs, tmp_path):
    run = str(runs[kind].path)
    assert (
        cli(f"robustness {run} --task sst2 --perturbations typos,casing --limit 4 --samples 20 --output {tmp_path}")
        == 0
    )
    robustness = json.loads((tmp_path / "robustness-sst2.json").read_text())
    assert set(robustness["perturbations"]) == {"typos", "casing"}
    assert cli(f"bias {run} --task sst2 --attributes names --limit 4 --samples 20 --output {tmp_path}") == 0
    assert json.loads((tmp_path / "bias-sst2.json").read_text())["task"] == "sst2"


@pytest.mark.parametrize("kind", KINDS)
def test_generating_run_kinds_export_a_rating_sheet(kind, runs, tmp_path):
    sheet = tmp_path / f"{kind}-sheet.csv"
    task = None if kind in ("classifier", "text_to_text") else "sst2"
    if kind not in GENERATING:
        with pytest.raises(HumanEvalError, match="human rating is for generated text"):
            human.export_sheet(runs[kind], None, 2, sheet, task=task)
        return
    assert human.export_sheet(runs[kind], None, 2, sheet, task=task) == sheet
    key = json.loads(sheet.with_name(f"{sheet.stem}.key.json").read_text())
    assert len(key["items"]) == 4  # two prompts, base and tuned


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind", KINDS)
def test_every_run_kind_merges_into_a_standalone_model(kind, runs, tmp_path):
    run = runs[kind]
    merged = run_commands.merge_run(
        run, tmp_path / "merged", task=None if kind in ("classifier", "text_to_text", "mixture") else "sst2"
    )
    loaded = load_run(run)
    batch = loaded.tokenizer(["the film was great", "a dull, tedious cast"], return_tensors="pt", padding=True)
    if kind in ("classifier", "multi_head"):
        standalone = AutoModelForSequenceClassification.from_pretrained(merged).eval()
        labels = (
            ["negative", "positive"] if kind == "classifier" else ["positive", "negative"]
        )  # sst2's label_words order
        assert list(standalone.config.id2label.values()) == labels
        if kind == "classifier":
            expected = _logits(loaded.model, batch)
        else:
            with torch.no_grad():
                expected = loaded.model.predict(
                    batch["input_ids"], batch["attention_mask"], "sst2", batch.get("token_type_ids")
                )
        assert torch.allclose(_logits(standalone, batch), expected, atol=1e-5)
        return
    standalone = AutoModelForCausalLM.from_pretrained(merged).eval()
    batch.pop("token_type_ids", None)
    if kind == "task_adapters":
        from tunelab.methods.task_adapters import route

        route(loaded.model, "sst2")
    assert torch.allclose(_logits(standalone, batch), _logits(loaded.model, batch), atol=1e-4)
