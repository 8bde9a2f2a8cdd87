"""A generation request's prompt as token ids, read as the model was trained to read it: a `record` through the
run's prompt template and the training format, `messages` through the chat template (`render.render_chat`, the one
message renderer), a completion `prompt` as it is. Every request the model cannot read this way is a 400 naming
its field."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.kinds.encoding import decoder_prompt_ids
from tunelab.records import Record
from tunelab.render import has_chat_template, render_chat, template_fields
from tunelab.serve.catalog import Served
from tunelab.serve.protocol import ApiError, Generation


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
            chat = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
            try:
                rendered = render_chat(chat, tokenizer, add_generation_prompt=True)
            # The template's own checks (roles must alternate, ...) fail on the client's messages: a 400.
            except Exception as error:
                raise ApiError(
                    400,
                    f"the chat template of model '{entry.id}' refused these messages: {error}",
                    param="messages",
                ) from None
            return tokenizer(rendered, add_special_tokens=False)["input_ids"]
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
