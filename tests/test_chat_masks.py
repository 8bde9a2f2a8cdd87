"""Which tokens of a conversation train, on three families of chat template: SmolLM2's own ChatML, the built-in
Gemma template (the system prompt folded into the first user turn) and the built-in Llama-3 template. Every mask is
checked the same way: the trained tokens decode to exactly the assistant contents, each followed by its closing
token, which trains; nothing else does. Then the settings (last turn, roles, prompt), tool calls, the templates
that are refused (no closing token, earlier turns rewritten, tool calls dropped) and what truncation reports."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig
from tunelab.kinds.chat_masks import ChatTemplateError, MaskedConversation, mask_conversation
from tunelab.kinds.chat_messages import read_conversation
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.loading import prepare

from helpers import SHARED_DATA

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Where is the Eiffel Tower?"},
    {"role": "assistant", "content": "It stands in Paris, on the Champ de Mars."},
    {"role": "user", "content": "How tall is it?"},
    {"role": "assistant", "content": "About 330 metres, antenna included."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]
ASSISTANT_TURNS = [2, 4, 6]

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
"""Llama 3's special tokens, added to SmolLM2's tokenizer to make a Llama-3-style one without downloading Llama."""


def smollm2(template: str | None = None):
    """SmolLM2's tokenizer with its own ChatML template, or with `template` (a built-in name or Jinja text)."""
    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    if template:
        tokenizer.chat_template = chat_template_text(template) if "{" not in template else template
    return tokenizer


def gemma():
    """The base gemma3-270m's tokenizer (no template of its own) with tunelab's Gemma template."""
    tokenizer = AutoTokenizer.from_pretrained(prepare("gemma3-270m"))
    tokenizer.chat_template = chat_template_text("gemma")
    return tokenizer


def llama3():
    """A Llama-3-style tokenizer: SmolLM2's vocabulary with Llama 3's header and end-of-turn tokens."""
    tokenizer = smollm2("llama3")
    tokenizer.add_special_tokens({"bos_token": LLAMA3_TOKENS[0], "additional_special_tokens": LLAMA3_TOKENS[1:]})
    return tokenizer


TEMPLATES = {"chatml": (smollm2, "<|im_end|>"), "gemma": (gemma, "<end_of_turn>"), "llama3": (llama3, "<|eot_id|>")}
"""Each template family: how its tokenizer is made, and the token that closes an assistant turn."""


def trained_runs(masked: MaskedConversation) -> list[list[int]]:
    """The ids of each run of consecutive trained tokens."""
    runs, previous = [], False
    for token, label in zip(masked.input_ids, masked.labels):
        trains = label != IGNORE_INDEX
        if trains:
            assert label == token  # a trained position's label is its own token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trains
    return runs


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_assistant_mask(masked: MaskedConversation, tokenizer, messages: list[dict], turns: list[int], closing: str):
    """The trained tokens are, run by run, exactly each of `turns`' contents followed by its closing token, and
    that token is trained (its label is its id); nothing else trains."""
    closing_id = tokenizer.convert_tokens_to_ids(closing)
    runs = trained_runs(masked)
    assert [decode(tokenizer, run) for run in runs] == [messages[turn]["content"] + closing for turn in turns]
    assert all(run[-1] == closing_id for run in runs)
    closing_positions = [i for i, token in enumerate(masked.input_ids) if token == closing_id]
    trained_closings = [i for i in closing_positions if masked.labels[i] == closing_id]
    assert len(trained_closings) == len(turns)
    assert {masked.roles[i] for i, label in enumerate(masked.labels) if label != IGNORE_INDEX} == {"assistant"}
    assert masked.trained == sum(len(run) for run in runs)


@pytest.mark.parametrize("family", TEMPLATES)
def test_every_assistant_turn_trains_with_its_closing_token_and_nothing_else(family):
    build, closing = TEMPLATES[family]
    tokenizer = build()
    masked = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", max_length=1024))
    assert masked.closing == closing
    check_assistant_mask(masked, tokenizer, CONVERSATION, ASSISTANT_TURNS, closing)
    assert not masked.truncated and masked.lost == 0 and masked.unclosed == []


def test_gemma_folds_the_system_prompt_into_the_first_user_turn_and_trains_neither():
    tokenizer = gemma()
    masked = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", max_length=1024))
    assert "<start_of_turn>user\nYou answer in one short sentence.\n\nWhere is the Eiffel Tower?" in masked.text
    assert "<start_of_turn>system" not in masked.text
    assert masked.input_ids[0] == tokenizer.bos_token_id and masked.labels[0] == IGNORE_INDEX
    trained = decode(tokenizer, [label for label in masked.labels if label != IGNORE_INDEX])
    assert CONVERSATION[0]["content"] not in trained and CONVERSATION[1]["content"] not in trained


@pytest.mark.parametrize("family", TEMPLATES)
def test_train_turns_last_trains_only_the_last_assistant_turn(family):
    build, closing = TEMPLATES[family]
    tokenizer = build()
    masked = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", train_turns="last"))
    check_assistant_mask(masked, tokenizer, CONVERSATION, ASSISTANT_TURNS[-1:], closing)


def test_train_roles_with_user_trains_each_user_turn_whole_without_the_newline_before_it_and_not_the_system_prompt():
    tokenizer = smollm2()
    data = DataConfig(kind="chat", train_roles=["user", "assistant"], max_length=1024)
    masked = mask_conversation(CONVERSATION, None, tokenizer, data)
    by_turn = {span.message: decode(tokenizer, _span_ids(masked, span)) for span in masked.spans}
    assert sorted(by_turn) == [1, 2, 3, 4, 5, 6]
    for index in (1, 3, 5):
        assert by_turn[index] == f"<|im_start|>user\n{CONVERSATION[index]['content']}<|im_end|>"
    for index in ASSISTANT_TURNS:
        assert by_turn[index] == CONVERSATION[index]["content"] + "<|im_end|>"
    trained = decode(tokenizer, [label for label in masked.labels if label != IGNORE_INDEX])
    assert CONVERSATION[0]["content"] not in trained and "system" not in trained
    assert set(masked.trained_by_role()) == {"user", "assistant"}


def _span_ids(masked: MaskedConversation, span) -> list[int]:
    """The trained ids whose characters fall in `span`."""
    return [
        token
        for token, label, (start, end) in zip(masked.input_ids, masked.labels, masked.offsets)
        if label != IGNORE_INDEX and start < span.end and end > span.start
    ]


@pytest.mark.parametrize("family", TEMPLATES)
def test_train_on_prompt_trains_every_token(family):
    build, _ = TEMPLATES[family]
    tokenizer = build()
    masked = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", train_on_prompt=True))
    assert masked.labels == masked.input_ids
    assistant_only = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat"))
    assert masked.trained_by_role() == {
        "assistant": assistant_only.trained,
        "prompt": len(masked.input_ids) - assistant_only.trained,
    }


def toolcall_conversation() -> tuple[list[dict], list[dict]]:
    """The first conversation of the shared tool-calling data that calls a tool: a call, its result, an answer."""
    with (SHARED_DATA / "toolcall" / "train.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            messages, tools = read_conversation(json.loads(line), "messages", "tools")
            if tools and any(message.get("tool_calls") for message in messages):
                return messages, tools
    raise AssertionError("no conversation with a tool call in the shared toolcall data")


def test_a_tool_call_trains_and_the_tool_result_does_not():
    messages, tools = toolcall_conversation()
    tokenizer = smollm2("chatml")
    masked = mask_conversation(messages, tools, tokenizer, DataConfig(kind="chat", max_length=4096))
    runs = [decode(tokenizer, run) for run in trained_runs(masked)]
    assistants = [message for message in messages if message["role"] == "assistant"]
    assert len(runs) == len(assistants)
    for run, message in zip(runs, assistants):
        assert run.endswith("<|im_end|>") and message["content"] in run
        for call in message.get("tool_calls", []):
            name, arguments = call["function"]["name"], json.dumps(call["function"]["arguments"])
            assert f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>' in run
    trained = "".join(runs)
    for message in messages:
        if message["role"] == "tool":
            assert message["content"] in masked.text and message["content"] not in trained
    assert "<tools>" in masked.text and "<tools>" not in trained  # the tool definitions are prompt


def test_a_template_that_drops_tool_calls_is_refused_saying_to_use_chatml():
    messages, tools = toolcall_conversation()
    tokenizer = smollm2()  # SmolLM2's own template writes only `content`: the call would vanish
    caller = next(i for i, message in enumerate(messages) if message.get("tool_calls"))
    with pytest.raises(ChatTemplateError, match=rf"message {caller}: .*drops the assistant's tool call.*chatml"):
        mask_conversation(messages, tools, tokenizer, DataConfig(kind="chat", max_length=4096))


UNCLOSED_TEMPLATE = "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
"""A template that writes nothing after an assistant's content but a newline: no token says the turn is over."""


def test_a_template_that_never_closes_an_assistant_turn_is_refused():
    tokenizer = smollm2(UNCLOSED_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="writes nothing after an assistant turn.*never learn to stop"):
        mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat"))


REASONING_STRIPPED_TEMPLATE = (
    "{% set last_user = namespace(index=0) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set last_user.index = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and loop.index0 < last_user.index %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML that, as Qwen3's template does, strips the reasoning of assistant turns before the last user message: a
conversation's earlier turns render differently once later turns follow them."""


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_the_turn():
    tokenizer = smollm2(REASONING_STRIPPED_TEMPLATE)
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<think>Two and two make four.</think>4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "<think>Three and three.</think>6"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "Two and two" not in rendered and "Three and three" in rendered
    with pytest.raises(ChatTemplateError, match=r"message 1: .*rewrites earlier turns.*chatml"):
        mask_conversation(messages, None, tokenizer, DataConfig(kind="chat"))


def test_truncation_counts_the_trained_tokens_lost_and_the_turns_left_unclosed():
    tokenizer = smollm2()
    whole = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", max_length=1024))
    closing_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    second_turn_closing = [
        i for i, label in enumerate(whole.labels) if label == closing_id and whole.roles[i] == "assistant"
    ][1]
    limit = second_turn_closing  # keeps turn 4's content, cuts its closing token and everything after
    cut = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", max_length=limit))
    assert cut.truncated and len(cut.input_ids) == limit
    assert cut.input_ids == whole.input_ids[:limit] and cut.labels == whole.labels[:limit]
    assert cut.lost == whole.trained - cut.trained == sum(label != IGNORE_INDEX for label in whole.labels[limit:])
    assert cut.lost == 1 + len(tokenizer(CONVERSATION[6]["content"] + "<|im_end|>")["input_ids"])
    assert cut.unclosed == [4, 6]
    closed = mask_conversation(CONVERSATION, None, tokenizer, DataConfig(kind="chat", max_length=limit + 1))
    assert closed.unclosed == [6] and closed.lost == cut.lost - 1
