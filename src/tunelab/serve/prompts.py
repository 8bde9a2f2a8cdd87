"""A generation request's prompt as token ids, read as the model was trained to read it: a `record` through the
run's prompt template and the training format, `messages` (with `tools`) through the chat template by the renderer
training uses (`tunelab.kinds.chat_masks.render`), a completion `prompt` as it is. Every request the model cannot
read this way is a 400 naming its field."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.kinds.chat import reply_prompt_ids
from tunelab.kinds.chat_masks import ChatTemplateError, render
from tunelab.kinds.chat_messages import ConversationError, check_tool_answers
from tunelab.kinds.encoding import decoder_prompt_ids
from tunelab.records import Record
from tunelab.render import has_chat_template, template_fields
from tunelab.serve.catalog import Served
from tunelab.serve.protocol import ApiError, ChatRequest, Generation


def record_prompt(entry: Served, body: Generation) -> str:
    """The prompt text of a request's `record`: the template of the task it names (or the run's one task)."""
    try:
        spec = entry.task(body.task)
    except TunelabError as error:
        raise ApiError(400, str(error), param="task") from None
    if not spec.templates:
        raise ApiError(
            400, f"model '{entry.id}' has no prompt template to fill; send messages or a prompt", param="record"
        )
    missing = [name for name in template_fields(spec.templates[0]) if name not in body.record]
    if missing:
        raise ApiError(
            400,
            f"record lacks field(s) {', '.join(missing)} that the template of task {spec.name} "
            f"reads: {spec.templates[0]!r}",
            param="record",
        )
    return spec.prompt(Record(dict(body.record), "request"))


def chat_prompt_ids(entry: Served, body: ChatRequest) -> list[int]:
    """A chat request's messages (and tools) as the model answers them: through the renderer training used
    (`tunelab.kinds.chat_masks.render`) with the run's saved chat template, ending with its generation prompt, as
    `tunelab predict` asks a conversation's last assistant turn (`tunelab.kinds.chat.reply_prompt_ids`). A request
    the template cannot render faithfully (tools it drops, tool calls it drops, roles it refuses) is a 400 naming
    the field, never an answer to a conversation the model did not see."""
    tokenizer = entry.tokenizer
    conversation = [message.as_template() for message in body.messages]
    tools = body.template_tools()
    _check_tool_answers(conversation)
    try:
        text = render(conversation, tokenizer, tools, add_generation_prompt=True)
        if tools and text == render(conversation, tokenizer, None, add_generation_prompt=True):
            raise ApiError(
                400,
                f"the chat template of model '{entry.id}' does not render tool definitions, so the model would "
                "never see them: send the request without tools, or serve a run trained with a template that "
                "writes them (data.chat_template: chatml)",
                param="tools",
            )
        _check_tool_calls_rendered(entry, body, text)
        return reply_prompt_ids(conversation, tools, tokenizer, budget=UNCUT)
    except ChatTemplateError as error:
        raise ApiError(400, f"model '{entry.id}': {error}", param="messages") from None


UNCUT = 1 << 30
"""No prompt is cut to fit: one over the server's --max-prompt-tokens is refused (context_length_exceeded)."""


def _check_tool_answers(conversation: list[dict]) -> None:
    """Each tool message answers a call of an assistant message before it, checked as training data is
    (`tunelab.kinds.chat_messages.check_tool_answers`): a 400 naming the message, or its `tool_call_id`."""
    try:
        check_tool_answers(conversation)
    except ConversationError as error:
        field = f"messages[{error.index}]" + (f".{error.key}" if error.key else "")
        raise ApiError(400, f"{field}: {error}", param=field) from None


def _check_tool_calls_rendered(entry: Served, body: ChatRequest, text: str) -> None:
    """A template without tool support (SmolLM2's own) renders an assistant's tool calls as nothing."""
    for index, message in enumerate(body.messages):
        for number, call in enumerate(message.tool_calls or []):
            if call.function.name not in text:
                raise ApiError(
                    400,
                    f"the chat template of model '{entry.id}' does not render tool calls, so this one "
                    f"({call.function.name!r}) would be dropped from the conversation",
                    param=f"messages[{index}].tool_calls[{number}]",
                )


def prompt_ids(entry: Served, body: Generation, text: str | None, messages: list | None) -> list[int]:
    """The request's prompt as the model was trained to read it: a record through the run's template and the
    training format, messages through the chat template, a completion prompt as it is."""
    tokenizer = entry.tokenizer
    if body.record is not None:
        text = record_prompt(entry, body)
    elif messages is not None:
        if not messages:
            raise ApiError(400, "messages is empty: send at least one message, or a record", param="messages")
        if has_chat_template(tokenizer):
            return chat_prompt_ids(entry, body)
        if isinstance(body, ChatRequest) and body.tools:
            raise ApiError(400, f"model '{entry.id}' has no chat template to pass tools to", param="tools")
        if len(messages) > 1 or messages[0].role != "user":
            raise ApiError(
                400,
                f"model '{entry.id}' has no chat template, so it takes one user message (or use /v1/completions)",
                param="messages",
            )
        text = messages[0].text()
    elif text is None:
        raise ApiError(400, "send a prompt, or a record of the run's fields", param="prompt")
    else:
        return tokenizer(text)["input_ids"]
    if entry.decoder_only:  # a user turn, formatted as in training (chat template, or the prompt and a newline)
        return decoder_prompt_ids(text, tokenizer, budget=1 << 30)[0]
    return tokenizer(text)["input_ids"]
