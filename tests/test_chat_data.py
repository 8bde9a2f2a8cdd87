"""Conversations as data: both formats read through the run's data path, every validation error named by file,
line and message index, the data report's counts of what trains, the duplicate and overlap checks on
conversations, the mask view (`data check --show-masks`, the run's data/masks.md, its card and run page), and the
refusal of conversations that train nothing. Real chat data read in place, smollm2-135m-instruct's tokenizer."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tunelab.card import render_card
from tunelab.config import build_config
from tunelab.data.report import render_report
from tunelab.data.taskset import load_taskset
from tunelab.data_checks import MASKS_SAVED, read_checked, run_data_report, save_data_report
from tunelab.kinds import kind_named
from tunelab.kinds.chat_masks import mask_conversation
from tunelab.kinds.chat_messages import conversation_of
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.loading import config_tokenizer
from tunelab.pipeline import train
from tunelab.records import DataError
from tunelab.runs import RunDir
from tunelab.ui.app import create_ui

from helpers import SHARED_DATA, cli, write_jsonl, write_yaml

CHAT = SHARED_DATA / "chat"
TOOLCALL = SHARED_DATA / "toolcall"
MODEL = "smollm2-135m-instruct"


def _rows(path, count: int) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(next(lines)) for _ in range(count)]


def _settings(tmp_path, train, validation=None, test=None, **data) -> dict:
    return {
        "name": "chat-data",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": MODEL},
        "data": {
            "kind": "chat",
            "train": str(train),
            **({"validation": str(validation)} if validation else {}),
            **({"test": str(test)} if test else {}),
            "max_length": 512,
            **data,
        },
    }


def _config(tmp_path, train, validation=None, test=None, **data):
    return build_config(_settings(tmp_path, train, validation, test, **data))


def _split_files(tmp_path, count: int = 6) -> tuple:
    """Small train, validation and test files of real conversations (distinct ones)."""
    return tuple(
        write_jsonl(tmp_path / f"{split}.jsonl", _rows(CHAT / f"{split}.jsonl", count))
        for split in ("train", "validation", "test")
    )


USER = {"role": "user", "content": "What is the weather in Paris?"}
ANSWER = {"role": "assistant", "content": "It is sunny."}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_0", "content": '{"sky": "sunny"}'}


def test_openai_messages_and_sharegpt_conversations_are_read_as_the_same_conversation(tmp_path):
    tools = _rows(TOOLCALL / "train.jsonl", 1)[0]["tools"]
    sharegpt = {
        "tools": json.dumps(tools),
        "conversations": [
            {"from": "human", "value": USER["content"]},
            {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": RESULT["content"]},
            {"from": "gpt", "value": ANSWER["content"]},
        ],
    }
    openai = {"tools": tools, "messages": [USER, CALL, RESULT, ANSWER]}
    path = write_jsonl(tmp_path / "both.jsonl", [openai, sharegpt])
    config = _config(tmp_path, path)
    records, _ = read_checked(config, str(path))
    (first, first_tools), (second, second_tools) = (conversation_of(record, "messages", "tools") for record in records)
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "assistant"] == [m["role"] for m in first]
    assert second[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": {"city": "Paris"}}
    assert first[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # the wire's JSON string read
    assert first_tools == second_tools == tools


BAD_CONVERSATIONS = {
    "unknown role": (
        {"messages": [{"role": "narrator", "content": "x"}, ANSWER]},
        "message 0: unknown role 'narrator'",
    ),
    "empty content": ({"messages": [{"role": "user", "content": "  "}, ANSWER]}, "message 0 (user) has empty content"),
    "no assistant turn": ({"messages": [USER]}, "the conversation has no assistant turn"),
    "tool without a call": ({"messages": [USER, RESULT, ANSWER]}, "message 1 (tool) answers no tool call"),
    "wrong tool_call_id": (
        {"messages": [USER, CALL, {**RESULT, "tool_call_id": "call_9"}, ANSWER]},
        "message 2 (tool) answers tool_call_id 'call_9'",
    ),
    "bad arguments JSON": (
        {"messages": [USER, {**CALL, "tool_calls": [{"function": {"name": "weather", "arguments": "{city:"}}]}]},
        "message 1: tool call 0: arguments are not valid JSON",
    ),
    "tool_calls on a user message": (
        {"messages": [{**USER, "tool_calls": CALL["tool_calls"]}, ANSWER]},
        "message 0: a user message carries tool_calls",
    ),
    "tools not a list": ({"messages": [USER, ANSWER], "tools": {"name": "weather"}}, "tools must be a list"),
}


@pytest.mark.parametrize("fault", list(BAD_CONVERSATIONS))
def test_every_fault_of_a_conversation_is_named_by_file_line_and_message(fault, tmp_path, capsys):
    record, message = BAD_CONVERSATIONS[fault]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [USER, ANSWER]}, record])
    with pytest.raises(DataError) as refused:
        read_checked(_config(tmp_path, path), str(path))
    assert f"{path}:2: {message}" in str(refused.value)
    assert (
        cli(f"data check {path} --kind chat model.name={MODEL}") == 2
    )  # the same error through the command line, as a user sees it
    assert f"{path}:2: {message}" in capsys.readouterr().err


def test_the_report_counts_what_trains_per_split_as_training_encodes_it(tmp_path):
    train_file, validation, test = _split_files(tmp_path)
    config = _config(tmp_path, train_file, validation, test, max_length=200)
    report, tasks = run_data_report(config)
    (found,) = report["tasks"].values()
    counts = found["lengths"]["conversations"]
    (task,) = tasks.trained.values()
    tokenizer = config_tokenizer(config)
    uncut = config.data.model_copy(update={"max_length": 10**6})
    trained, trained_uncut = (_trained_tokens(task.train, tokenizer, data) for data in (config.data, uncut))
    lengths = [len(mask_conversation(*_conversation(r), tokenizer, uncut).input_ids) for r in task.train]
    assert counts["conversations"] == 6 and counts["trained_by_role"] == {"assistant": trained}
    assert counts["truncated"] == found["lengths"]["truncated"] == sum(n > 200 for n in lengths) >= 1
    assert counts["lost_tokens"] == trained_uncut - trained > 0 and counts["losing"] >= 1
    assert counts["unclosed"] >= 1 and counts["assistant_turns"] > counts["unclosed"]
    turns = sorted(sum(m["role"] != "system" for m in _conversation(r)[0]) for r in task.train)
    assert (counts["turns"]["min"], counts["turns"]["max"]) == (turns[0], turns[-1])
    assert set(counts["tokens_by_role"]) == {"user", "assistant"}
    assert set(found["held_out_lengths"]) == {"validation", "test"}
    assert found["held_out_lengths"]["test"]["conversations"]["conversations"] == 6
    assert any("lose their closing token to truncation" in line for line in report["warnings"])
    shown = render_report(report)
    assert "- trained tokens per role (closing tokens included, after truncation): assistant" in shown
    assert "  - conversations: 6;" in shown  # the held-out splits, under their lengths


def _conversation(record):
    return conversation_of(record, "messages", "tools")


def _trained_tokens(records, tokenizer, data) -> int:
    """The tokens training's own encoding trains."""
    encoded = kind_named("chat").encode(records, tokenizer, data, "decoder", None, True).examples
    return sum(label != IGNORE_INDEX for example in encoded for label in example["labels"])


def test_distinct_conversations_do_not_overlap_and_a_copied_one_does(tmp_path):
    train_rows, test_rows = _rows(CHAT / "train.jsonl", 12), _rows(CHAT / "test.jsonl", 12)
    train_file = write_jsonl(tmp_path / "train.jsonl", train_rows)
    clean_test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    report, _ = run_data_report(_config(tmp_path, train_file, test=clean_test))
    (found,) = report["tasks"].values()
    assert found["overlap"]["test"]["overlapping"] == 0 and report["contamination"] == []
    assert found["exact_duplicates"]["groups"] == 0 and found["near_duplicates"]["groups"] == 0

    copied = write_jsonl(tmp_path / "copied.jsonl", [*test_rows[:11], train_rows[3]])
    report, _ = run_data_report(_config(tmp_path, train_file, test=copied))
    (found,) = report["tasks"].values()
    hit = found["overlap"]["test"]
    assert (hit["overlapping"], hit["exact"]) == (1, 1)
    assert hit["examples"][0]["train"] == f"{train_file}:4" and hit["examples"][0]["other"] == f"{copied}:12"
    assert len(report["contamination"]) == 1


def test_data_clean_removes_a_copied_conversation_and_keeps_the_rest(tmp_path):
    rows = _rows(CHAT / "train.jsonl", 8)
    path = write_jsonl(tmp_path / "train.jsonl", [*rows, rows[2]])
    output = tmp_path / "clean.jsonl"
    assert cli(f"data clean {path} --kind chat --output {output} model.name={MODEL}") == 0
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    assert kept == rows
    (removed,) = [json.loads(line) for line in (tmp_path / "clean.removed.jsonl").read_text().splitlines()]
    assert (removed["where"], removed["of"], removed["reason"]) == (f"{path}:9", f"{path}:3", "duplicate")


def test_show_masks_marks_the_trained_turns_with_their_closing_tokens(tmp_path, capsys):
    train_file, validation, test = _split_files(tmp_path, 3)
    config = write_yaml(tmp_path / "chat.yaml", _settings(tmp_path, train_file, validation, test))
    assert cli(f"data check {config} --show-masks 2") == 0
    shown = capsys.readouterr().out
    assert "## What trains: the first 2 training conversation(s)" in shown
    assert f"### {train_file}:1" in shown and f"### {train_file}:2" in shown and f"{train_file}:3\n" not in shown
    first = _rows(CHAT / "train.jsonl", 1)[0]["messages"]
    for message in first:
        if message["role"] == "assistant":
            assert f"[[{message['content']}<|im_end|>]]" in shown
        else:
            assert f"[[{message['content']}" not in shown
    assert "closing tokens: every trained assistant turn's closing token trains" in shown
    assert "- trained tokens per role: assistant" in shown


def test_a_run_saves_the_mask_view_and_its_card_and_run_page_show_it(tmp_path):
    train_file, validation, test = _split_files(tmp_path, 4)
    config = _config(tmp_path, train_file, validation, test)
    tasks = load_taskset(config)
    report, _ = run_data_report(config)
    run = RunDir.create(config)
    save_data_report(run, config, report, tasks, config_tokenizer(config))
    view = run.masks_path.read_text()
    assert view.count("### ") == MASKS_SAVED and "[[" in view
    card = render_card(config, {**run.state(), **CARD_STATE}, {"tasks": {}}, masks=view)
    assert view in card
    run.update_state(state="complete")
    page = TestClient(create_ui([tmp_path / "runs"])).get(f"/run/{run.path.as_posix()}")
    assert page.status_code == 200 and 'id="masks"' in page.text
    assert "[[" in page.text and "&lt;|im_end|&gt;]]" in page.text  # the template's markers shown as text


CARD_STATE = {
    "trainable": {"trainable_params": 1, "total_params": 2, "trainable_percent": 50.0},
    "precision": "fp32",
    "train_seconds": 1.0,
    "steps": 1,
    "examples": {"train": 4, "validation": 4, "test": 4},
}


@pytest.mark.parametrize(
    "setting", [{"max_length": 8}, {"train_roles": ["tool"]}], ids=["nothing-fits", "role-absent"]
)
def test_a_run_whose_conversations_train_nothing_stops_before_a_model_loads(setting, tmp_path):
    train_file, validation, test = _split_files(tmp_path, 3)
    config = _config(tmp_path, train_file, validation, test, **setting)
    with pytest.raises(DataError) as refused:
        train(config)
    assert f"3 conversation(s) train no token ({train_file}:1, {train_file}:2, {train_file}:3)" in str(refused.value)
    assert not (tmp_path / "runs").exists()  # refused before the run directory, so before any model loaded
