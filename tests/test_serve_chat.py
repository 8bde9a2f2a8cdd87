"""`tunelab serve` on chat runs (data.kind: chat): a multi-turn conversation, tool definitions and tool calls
included, is answered exactly as `tunelab predict` answers the same conversation's last assistant turn, for a run
that saved a LoRA adapter and for a fully tuned one; a request the run's chat template cannot render faithfully is
a 400 naming the field, and the server keeps serving."""

from __future__ import annotations

import json

import pytest

from tunelab import run_commands
from tunelab.kinds.chat import reply_prompt_ids
from tunelab.kinds.chat_messages import last_assistant
from tunelab.models.loading import load_tokenizer
from tunelab.serve.catalog import Catalog

from helpers import SHARED_DATA, write_jsonl
from serving import call, in_process

real = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
)

RUNS = {
    "lora": ("lora", "chat", {}),
    "full": ("full", "chat", {}),
    "tools": ("lora", "toolcall", {"chat_template": "chatml", "max_length": 512}),
}
"""Served chat runs: smollm2's own ChatML template (no tools) with LoRA and fully tuned, and tunelab's ChatML
template (tools and tool calls) on tool-calling conversations."""


@pytest.fixture(scope="module")
def served(chat_run):
    """Every run of RUNS on one in-process server, under its key: (base URL, {key: RunDir})."""
    runs = {key: chat_run(method, data, **settings) for key, (method, data, settings) in RUNS.items()}
    catalog = Catalog()
    for key, run in runs.items():
        catalog.add(f"{key}={run.path}")
    with in_process(catalog) as url:
        yield url, runs


def conversations(run, data: str, count: int = 2) -> list[dict]:
    """Held-out records whose last assistant turn is the one asked: the first three turns of `chat` conversations
    (user, assistant, user) with the fourth as the reference; tool-calling conversations as they are, those with a
    tool call and its result before the asked turn, whose prompt fits the run's input limit (predict would drop earlier turns to fit, a server refuses)."""
    tokenizer = load_tokenizer(str(run.model_dir))
    records = []
    for line in (SHARED_DATA / data / "test.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        messages = record["messages"][:4] if data == "chat" else record["messages"]
        history = messages[: last_assistant(messages)]
        if data == "chat" and [m["role"] for m in messages] != ["user", "assistant", "user", "assistant"]:
            continue
        if data == "toolcall" and not any(m.get("tool_calls") for m in history):
            continue
        if len(reply_prompt_ids(history, record.get("tools"), tokenizer, 1 << 30)) > 400:
            continue
        records.append({"messages": messages, **({"tools": record["tools"]} if record.get("tools") else {})})
        if len(records) == count:
            return records
    raise AssertionError(f"fewer than {count} usable conversations in {data}")


def asked(model: str, record: dict, max_tokens: int) -> dict:
    messages = record["messages"]
    history = [_wire(m) for m in messages[: last_assistant(messages)]]
    return {"model": model, "messages": history, "max_tokens": max_tokens, **{k: v for k, v in record.items() if k == "tools"}}  # fmt: skip


def _wire(message: dict) -> dict:
    """A message as an OpenAI client sends it: tool-call arguments as JSON strings."""
    if not message.get("tool_calls"):
        return message
    calls = [
        {**call, "function": {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}}
        if isinstance(call["function"]["arguments"], dict)
        else call
        for call in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


@real
@pytest.mark.parametrize("key", list(RUNS))
def test_serve_answers_a_conversation_exactly_as_predict_does(served, key, tmp_path):
    url, runs = served
    run = runs[key]
    records = conversations(run, RUNS[key][1])
    inputs = write_jsonl(tmp_path / "conversations.jsonl", records)
    run_commands.predict_run(run, str(inputs), str(tmp_path / "predicted.jsonl"))
    predicted = [json.loads(line)["prediction"] for line in (tmp_path / "predicted.jsonl").read_text().splitlines()]
    max_tokens = run.config().eval.max_new_tokens
    answers = []
    for record in records:
        status, body, _ = call(url, "/v1/chat/completions", asked(key, record, max_tokens))
        assert status == 200, body
        answers.append(body["choices"][0]["message"]["content"])
    assert answers == predicted
    assert any(answers)  # the tiny model says something, so equality compares generated text


USER = {"role": "user", "content": "Find me a hotel in Atlanta."}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "find_hotel", "arguments": '{"city": "Atlanta"}'}}],
}  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "find_hotel", "parameters": {"type": "object"}}}]


@real
@pytest.mark.parametrize(
    "model, messages, extra, param",
    [
        ("lora", [USER, {"role": "robot", "content": "beep"}], {}, "messages[1].role"),
        ("lora", [], {}, "messages"),
        ("lora", [USER, {"role": "assistant"}], {}, "messages[1]"),
        ("lora", [{**USER, "tool_calls": CALL["tool_calls"]}], {}, "messages[0].tool_calls"),
        ("tools", [USER, {**CALL, "tool_calls": []}], {}, "messages[1].tool_calls"),
        ("tools", [USER, {**CALL, "tool_calls": [{"type": "function"}]}], {}, "messages[1].tool_calls[0].function"),
        (
            "tools",
            [USER, {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {"name": "f", "arguments": "{x"}}]}],
            {},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ("tools", [USER, {"role": "tool", "content": "3 hotels", "tool_call_id": "c1"}], {}, "messages[1]"),
        (
            "tools",
            [USER, CALL, {"role": "tool", "content": "3", "tool_call_id": "c9"}],
            {},
            "messages[2].tool_call_id",
        ),
        ("tools", [USER], {"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ("tools", [USER], {"tool_choice": "auto"}, "tool_choice"),
        ("lora", [USER], {"tools": TOOLS}, "tools"),
        ("lora", [USER, CALL], {}, "messages[1].tool_calls[0]"),
    ],
)
def test_a_conversation_the_template_cannot_render_is_a_400_naming_the_field(served, model, messages, extra, param):
    url, _ = served
    status, error, _ = call(
        url, "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2, **extra}
    )
    assert status == 400, error
    assert error["error"]["param"] == param, error
    assert call(url, "/v1/chat/completions", {"model": model, "messages": [USER], "max_tokens": 2})[0] == 200


@real
def test_tools_and_tool_calls_reach_a_template_that_renders_them(served):
    url, _ = served
    result = {"role": "tool", "content": "Hotel Ac, 4 stars", "tool_call_id": "c1"}
    status, body, _ = call(
        url,
        "/v1/chat/completions",
        {"model": "tools", "messages": [USER, CALL, result], "tools": TOOLS, "max_tokens": 2},
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] > 60  # the tool definitions are in the prompt


@real
@pytest.mark.parametrize("key", ["lora", "full"])
def test_the_merged_export_keeps_the_chat_template_and_stops_at_the_closing_token(served, key, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from tunelab.export.transformers import export

    _, runs = served
    folder = export(runs[key], tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    closing = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        tokenizer.eos_token == "<|im_end|>"
        and tokenizer.chat_template == load_tokenizer(str(runs[key].model_dir)).chat_template
    )
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    assert (eos if isinstance(eos, int) else eos[0]) == closing


def test_a_conversation_cut_to_fit_still_opens_with_a_user_turn(tokenizer_dir):
    """Gemma's template refuses a conversation that opens with the assistant: dropping the earliest turns to fit a
    budget drops them up to the next user turn (what predict asks a long conversation with)."""
    from transformers import AutoTokenizer

    from tunelab.chat_templates import chat_template_text

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = chat_template_text("gemma")
    turns = [
        {"role": role, "content": f"turn {i} " + "word " * 10} for i, role in enumerate(["user", "assistant"] * 3)
    ]
    history = [{"role": "system", "content": "Be brief."}, *turns[:-1]]
    whole = len(reply_prompt_ids(history, None, tokenizer, 1 << 30))
    cut = reply_prompt_ids(history, None, tokenizer, whole - 5)
    assert cut == reply_prompt_ids([history[0], *history[3:]], None, tokenizer, 1 << 30)
