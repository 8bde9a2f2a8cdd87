"""Reading a conversation from a record: OpenAI `messages` as they are, ShareGPT `conversations` normalised to them,
and every message checked so a bad one is named by its index before anything trains.

OpenAI form: `{"role": "system" | "user" | "assistant" | "tool", "content": text}`, an assistant message may carry
`tool_calls` (`[{"id", "type": "function", "function": {"name", "arguments"}}]`, arguments a JSON string on the
wire) and a tool message answers one by `tool_call_id`. ShareGPT form: `{"from": "system" | "human" | "gpt" |
"function_call" | "observation", "value": text}`, a function call's value being `{"name", "arguments"}` as JSON.
Tool-call arguments are read into mappings, which is what Hugging Face chat templates expect.
"""

from __future__ import annotations

import json
from typing import Any

from tunelab.records import Record

ROLES = ("system", "user", "assistant", "tool")
"""The roles a message may have (OpenAI's)."""

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
"""ShareGPT's `from` values and the OpenAI role each is read as (LLaMA-Factory's names, and the common aliases)."""

SHAREGPT_FIELD = "conversations"
"""Where a ShareGPT record keeps its turns."""

Conversation = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]
"""A conversation's messages (OpenAI form, tool-call arguments as mappings) and its tool definitions, if any."""


class ConversationError(ValueError):
    """A conversation that cannot be read; the message names the message index and what is wrong, and `index` and
    `key` say where (the message, and its key at fault if one is), for a server's error to name the request field."""

    def __init__(self, message: str, index: int | None = None, key: str | None = None):
        super().__init__(message)
        self.index, self.key = index, key


def _arguments(value: Any, where: str) -> dict[str, Any]:
    """Tool-call arguments as a mapping: the JSON string of the wire form parsed, a mapping kept."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConversationError(f"{where}: arguments are not valid JSON ({exc.msg})") from None
        if isinstance(parsed, dict):
            return parsed
    raise ConversationError(f"{where}: arguments must be a JSON object (a mapping of argument names to values)")


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's tool calls, each with its function's arguments read into a mapping."""
    if not isinstance(calls, list) or not calls:
        raise ConversationError(f"message {index}: tool_calls must be a non-empty list of calls")
    read = []
    for number, call in enumerate(calls):
        where = f"message {index}: tool call {number}"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not str(function.get("name") or "").strip():
            raise ConversationError(f"{where} has no function name (expected {{'function': {{'name', 'arguments'}}}})")
        arguments = _arguments(function.get("arguments", {}), where)
        read.append({**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}})
    return read


def _openai_message(message: Any, index: int) -> dict[str, Any]:
    """One OpenAI message, checked: a known role, text content, content or tool calls for an assistant."""
    if not isinstance(message, dict):
        raise ConversationError(f"message {index} is a {type(message).__name__}, not a {{'role', 'content'}} mapping")
    role = message.get("role")
    if role not in ROLES:
        raise ConversationError(f"message {index}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    content = message.get("content")
    content = "" if content is None else content
    if not isinstance(content, str):
        raise ConversationError(f"message {index} ({role}): content is a {type(content).__name__}, not text")
    read = {**message, "content": content}
    if message.get("tool_calls"):
        if role != "assistant":
            raise ConversationError(
                f"message {index}: a {role} message carries tool_calls; only assistants call tools"
            )
        read["tool_calls"] = _tool_calls(message["tool_calls"], index)
    else:
        read.pop("tool_calls", None)
        if not content.strip():
            raise ConversationError(f"message {index} ({role}) has empty content")
    return read


def _sharegpt_message(turn: Any, index: int) -> dict[str, Any]:
    """One ShareGPT turn as an OpenAI message (a function call as an assistant message with one tool call)."""
    if not isinstance(turn, dict) or "from" not in turn:
        raise ConversationError(f"message {index} is not a ShareGPT turn {{'from', 'value'}}")
    source = turn["from"]
    if source not in SHAREGPT_ROLES:
        raise ConversationError(
            f"message {index}: unknown ShareGPT role {source!r}; expected one of {', '.join(SHAREGPT_ROLES)}"
        )
    value = turn.get("value")
    if source != "function_call":
        return {"role": SHAREGPT_ROLES[source], "content": value}
    try:
        call = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise ConversationError(f"message {index}: a function_call's value is not JSON ({exc.msg})") from None
    if not isinstance(call, dict):
        raise ConversationError(f"message {index}: a function_call's value must be {{'name', 'arguments'}}")
    function = {"name": call.get("name"), "arguments": call.get("arguments", {})}
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": function}]}


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """A record's tool definitions: a list of OpenAI tools, or its JSON string (ShareGPT exports keep them so)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversationError(f"tools are not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise ConversationError("tools must be a list of tool definitions ({'type': 'function', 'function': {...}})")
    return value


def check_tool_answers(messages: list[dict[str, Any]]) -> None:
    """Each tool message answers a call an earlier assistant message made (by its id, when both carry one):
    checked for data (`read_conversation`) and for a served request alike."""
    open_calls: list[str | None] = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            open_calls = [call.get("id") for call in message.get("tool_calls", [])]
        elif message["role"] == "tool":
            if not open_calls:
                raise ConversationError(
                    f"message {index} (tool) answers no tool call: no earlier assistant call", index
                )
            answered = message.get("tool_call_id")
            if answered is not None and answered not in open_calls and None not in open_calls:
                raise ConversationError(
                    f"message {index} (tool) answers tool_call_id {answered!r}, which the calls before it do not "
                    f"have ({', '.join(map(str, open_calls))})",
                    index,
                    "tool_call_id",
                )
        elif message["role"] == "user":
            open_calls = []


def read_conversation(fields: dict[str, Any], messages_field: str, tools_field: str) -> Conversation:
    """A record's conversation, OpenAI form, checked; ConversationError naming the message index and the fault
    (an unknown role, empty content, no assistant turn, a tool answer with no call)."""
    if messages_field in fields:
        turns, reader = fields[messages_field], _openai_message
    elif SHAREGPT_FIELD in fields:
        turns, reader = fields[SHAREGPT_FIELD], _sharegpt_message
    else:
        raise ConversationError(
            f"no field '{messages_field}' (data.messages_field) or '{SHAREGPT_FIELD}' (ShareGPT) holds a conversation"
        )
    if not isinstance(turns, list) or not turns:
        raise ConversationError("the conversation is not a non-empty list of messages")
    messages = [_openai_message(reader(turn, index), index) for index, turn in enumerate(turns)]
    if not any(message["role"] == "assistant" for message in messages):
        raise ConversationError("the conversation has no assistant turn, so nothing in it would train")
    check_tool_answers(messages)
    return messages, _tools(fields.get(tools_field))


def read_messages(turns: list[Any]) -> list[dict[str, Any]]:
    """A list of OpenAI messages (a part of a conversation: a preference pair's prompt or answer), each checked as
    a conversation's are; ConversationError naming the message index."""
    return [_openai_message(message, index) for index, message in enumerate(turns)]


def conversation_of(record: Record, messages_field: str, tools_field: str) -> Conversation:
    """`read_conversation` of a record already checked (`tunelab.kinds.chat.Chat.record_problem`)."""
    return read_conversation(record.fields, messages_field, tools_field)


def last_assistant(messages: list[dict[str, Any]]) -> int:
    """The index of a conversation's last assistant message: what evaluation asks the model to write."""
    return max(index for index, message in enumerate(messages) if message["role"] == "assistant")
