"""Evaluation of conversations: the perplexity of exactly the assistant tokens training covers, the last assistant
turn generated against its reference, the stop rate (the "never stops" bug, measured), base against tuned with
intervals, `predict`, `eval --suite` and `forgetting` on a chat run.

A tiny 2-layer Llama with smollm2's tokenizer stands in for a chat model; saved once with smollm2's ChatML template
and once without any (a base model such as gemma3-270m, which a run gives a template through data.chat_template).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunelab import pipeline
from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig, build_config
from tunelab.data.task_records import load_records
from tunelab.eval.commands import evaluate_suite, forgetting
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import TaskResult, record_prompt_ids, reference_nll, run_task, skip_reason
from tunelab.eval.targets import Target, base_target, load_target
from tunelab.kinds.chat_masks import mask_conversation
from tunelab.kinds.chat_messages import conversation_of
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.loading import prepare
from tunelab.records import DataError
from tunelab.run_commands import evaluate_run, predict_run
from tunelab.runs import RunDir
from tunelab.tasks import load_task
from tunelab.tasks.suite import load_suite

from helpers import SHARED_DATA, TINY_SHAPE, write_jsonl, write_yaml

CHAT_METRICS = ["rougeL", "chrf", "reference_perplexity", "stop_rate"]


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory) -> tuple[str, str]:
    """(a tiny decoder read with smollm2's tokenizer and ChatML template, the same weights without a template)."""
    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    config = LlamaConfig(
        **{**TINY_SHAPE, "vocab_size": len(tokenizer), "max_position_embeddings": 1024},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folders = []
    for name, template in (("templated", tokenizer.chat_template), ("plain", None)):
        folder = tmp_path_factory.mktemp(f"tiny-chat-{name}")
        tokenizer.chat_template = template
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    return folders[0], folders[1]


def _conversations(split: str, count: int) -> list[dict]:
    with open(SHARED_DATA / "chat" / f"{split}.jsonl", encoding="utf-8") as lines:
        return [json.loads(next(lines)) for _ in range(count)]


@pytest.fixture(scope="module")
def chat_run(chat_models, tmp_path_factory) -> RunDir:
    """A chat run of the template-less tiny model (given ChatML by data.chat_template, as gemma3-270m is): 16
    conversations, 2 LoRA steps, 4 held-out conversations scored before and after."""
    folder = tmp_path_factory.mktemp("chat-run")
    train = write_jsonl(folder / "train.jsonl", _conversations("train", 16))
    test = write_jsonl(folder / "test.jsonl", _conversations("test", 4))
    config = build_config(
        {
            "name": "tiny-chat",
            "output_dir": str(folder / "runs"),
            "model": {"name": chat_models[1]},
            "data": {"kind": "chat", "train": str(train), "test": str(test), "chat_template": "chatml"},
            "method": {"name": "lora"},
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "precision": "fp32"},
            "eval": {"max_new_tokens": 8},
        }
    )
    return pipeline.train(config)


def _chat_spec(max_new_tokens: int = 8):
    return load_task("chat").model_copy(update={"max_new_tokens": max_new_tokens})


def test_reference_perplexity_scores_exactly_the_trained_assistant_tokens(chat_models):
    target = load_target(chat_models[0])
    spec = _chat_spec()
    records = load_records(spec, 3)
    pairs = reference_nll(target, spec, records)
    data = DataConfig(kind="chat", max_length=spec.max_length)
    for record, (nll, count) in zip(records, pairs):
        messages, tools = conversation_of(record, spec.messages_field, spec.tools_field)
        masked = mask_conversation(messages, tools, target.tokenizer, data)
        assert count == masked.trained == masked.trained_by_role()["assistant"] > 0
        ids = torch.tensor([masked.input_ids])
        labels = torch.tensor([masked.labels])
        with torch.no_grad():
            logits = target.model(input_ids=ids).logits[0, :-1]
        summed = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
        assert nll == pytest.approx(float(summed), rel=1e-4)
    assert all(m in spec.metrics for m in CHAT_METRICS)
    cut = spec.model_copy(update={"max_length": 12})  # every conversation cut before its first assistant turn
    assert [count for _, count in reference_nll(target, cut, records + records[:1])] == [0, 0, 0, 0]


def _biased(folder: str, token: int) -> Target:
    """The tiny model with a head that always says `token`: a zero projection plus a bias on that token."""
    target = load_target(folder)
    head = torch.nn.Linear(target.model.config.hidden_size, target.model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[token] = 10.0
    target.model.lm_head = head
    return target


def test_stop_rate_is_100_for_a_model_that_closes_its_turn_and_0_for_one_that_never_does(chat_models):
    spec = _chat_spec(max_new_tokens=4)
    records = load_records(spec, 4)
    tokenizer = AutoTokenizer.from_pretrained(chat_models[0])
    stops = run_task(_biased(chat_models[0], tokenizer.eos_token_id), spec, records, samples=50)
    never = run_task(_biased(chat_models[0], tokenizer.convert_tokens_to_ids("Hello")), spec, records, samples=50)
    assert stops.finishes == ["stop"] * 4 and stops.outputs == [""] * 4
    assert never.finishes == ["length"] * 4 and all(output.startswith("Hello") for output in never.outputs)
    assert stops.scores["stop_rate"].as_dict() == {"value": 100.0, "low": 100.0, "high": 100.0}
    assert never.scores["stop_rate"].as_dict() == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_stop_rate_refuses_a_result_that_generated_nothing():
    result = TaskResult("sst2", "classification", 2, scoring="loglik")
    with pytest.raises(Exception, match="stop_rate counts how generated answers end"):
        result.metric_inputs("stop_rate")
    assert get_metric("stop_rate").per_example("stop", None) == 100.0
    assert get_metric("stop_rate").compute(["stop", "length", "length", "stop"], [None] * 4) == 50.0


def test_a_chat_run_reports_base_and_tuned_with_intervals(chat_run):
    evaluation = json.loads(chat_run.eval_path.read_text())
    (task,) = evaluation["tasks"].values()
    for role in ("base", "tuned"):
        metrics = task[role]["metrics"]
        assert list(metrics) == CHAT_METRICS
        for interval in metrics.values():
            assert interval["low"] <= interval["value"] <= interval["high"]
            assert math.isfinite(interval["value"])
    card = chat_run.card_path.read_text()
    assert "stop_rate" in card


def test_the_base_of_a_chat_run_is_asked_through_the_runs_template(chat_models, chat_run):
    plain = load_target(chat_models[1])
    assert not plain.tokenizer.chat_template
    base = base_target(chat_models[1], str(chat_run.path))
    tuned = load_target(str(chat_run.path))
    assert base.tokenizer.chat_template == tuned.tokenizer.chat_template
    assert base.tokenizer.eos_token == tuned.tokenizer.eos_token == "<|im_end|>"
    spec, record = _chat_spec(), load_records(_chat_spec(), 1)[0]
    assert record_prompt_ids(base, spec, record, 8) == record_prompt_ids(tuned, spec, record, 8)
    assert base_target(chat_models[0], str(chat_run.path)).tokenizer.chat_template != tuned.tokenizer.chat_template


def test_predict_writes_each_conversations_last_assistant_turn(chat_run, tmp_path):
    inputs = write_jsonl(tmp_path / "inputs.jsonl", _conversations("validation", 3))
    written = predict_run(chat_run, str(inputs), str(tmp_path / "out.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == len(rows) == 3
    for row, conversation in zip(rows, _conversations("validation", 3)):
        assert row["messages"] == conversation["messages"] and isinstance(row["prediction"], str)


def test_eval_of_a_chat_run_and_of_a_plain_model_on_the_chat_task(chat_models, chat_run, tmp_path):
    suite = write_yaml(tmp_path / "chat-suite.yaml", {"name": "chat-only", "tasks": [{"task": "chat", "limit": 2}]})
    for target in (str(chat_run.path), chat_models[0]):
        report = json.loads(evaluate_suite(target, str(suite), output=str(tmp_path / "eval"), samples=50).read_text())
        assert list(report["tasks"]["chat"]["metrics"]) == CHAT_METRICS
    assert [entry.task for entry in load_suite("conversations").tasks] == ["chat", "toolcall"]
    data = write_jsonl(tmp_path / "held-out.jsonl", _conversations("validation", 2))
    report = json.loads(evaluate_run(chat_run, str(data), tmp_path / "data", samples=50).read_text())
    assert list(report["tasks"]["held-out.jsonl"]["metrics"]) == CHAT_METRICS
    untemplated = evaluate_suite(chat_models[1], str(suite), output=str(tmp_path / "plain"), samples=50)
    assert "has no chat template" in json.loads(untemplated.read_text())["tasks"]["chat"]["skipped"]


def test_forgetting_of_a_chat_run_on_the_retention_suite(chat_models, chat_run, tmp_path):
    path = forgetting(chat_models[1], str(chat_run.path), "retention", limit=1, output=str(tmp_path), samples=20)
    report = json.loads(path.read_text())
    assert report["base"] == chat_models[1] and report["tuned"] == str(chat_run.path)
    assert set(report["tasks"]) == {entry.task for entry in load_suite("retention").tasks}
    for row in report["tasks"].values():
        assert "skipped" in row or {"base", "tuned", "change"} <= set(row)


def test_a_conversation_the_template_refuses_is_named_by_file_and_line(chat_models):
    target = load_target(chat_models[0])
    target.tokenizer.chat_template = chat_template_text("gemma")  # Gemma's turns alternate: no tool turn
    spec = load_task("toolcall")
    record = next(r for r in load_records(spec) if any(m["role"] == "tool" for m in r.fields["messages"]))
    with pytest.raises(DataError, match=r"toolcall.*:\d+: the chat template refuses this conversation"):
        record_prompt_ids(target, spec, record, 8)


@pytest.mark.parametrize(
    "template, skipped",
    [("gemma", "refuses this conversation"), (None, "drops the assistant's tool call"), ("chatml", None)],
)
def test_a_tool_task_is_skipped_by_a_model_whose_template_cannot_lay_out_tool_calls(chat_models, template, skipped):
    target = load_target(chat_models[0])
    if template:  # None: smollm2's own ChatML, which writes no tool calls
        target.tokenizer.chat_template = chat_template_text(template)
    spec = load_task("toolcall")
    records = load_records(spec, limit=4)
    reason = skip_reason(target, spec, records=records)
    if skipped is None:
        assert reason is None
    else:
        assert "cannot lay out this task's tool calls" in reason and skipped in reason and "chatml" in reason
        assert run_task(target, spec, records).skipped == reason
