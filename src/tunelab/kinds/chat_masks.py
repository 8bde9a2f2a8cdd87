"""Which tokens of a conversation train, found from the tokenizer's own chat template without generation markers.

Stock templates (SmolLM2's ChatML, Llama 3, Gemma 3, Qwen3) carry no `{% generation %}` markers, so asking the
template for an assistant mask gives zeros (TRL #4201). Instead, as Axolotl does, each turn's span is found by
rendering the conversation up to the turn and diffing: an assistant turn starts where the template's generation
prompt for it ends and runs to the end of the turn's rendering, its closing tokens (`<|im_end|>`, `<end_of_turn>`,
`<|eot_id|>`) included and the whitespace after them not. The whole conversation is tokenised once, and a token
trains when its characters fall in a trained span; a round trip then checks that the trained tokens of every turn
decode to exactly that turn's rendered text, so a template that renders prefixes inconsistently, or a tokenizer
whose tokens straddle a turn's edge, is an error, not a silent mask.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.config import DataConfig
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.render import has_chat_template

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

PROBE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
"""A two-turn conversation rendered to read how the template closes an assistant turn."""


class ChatTemplateError(ValueError):
    """A chat template that cannot be masked reliably (or a conversation it refuses); says what to change."""


@dataclass
class Span:
    """One trained turn: its message index and role, and its characters in the rendered conversation."""

    message: int
    role: str
    start: int
    end: int


@dataclass
class MaskedConversation:
    """A conversation as the model reads it, with the tokens that train, and what training will see of it."""

    text: str
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX where the token does not train, else the token id."""
    roles: list[str | None]
    """The role of the turn each token belongs to when it trains, else None."""
    offsets: list[tuple[int, int]]
    """Each token's characters in `text`."""
    spans: list[Span]
    closing: str
    """The text that closes an assistant turn in this template (stripped of whitespace after it)."""
    unclosed: list[int] = field(default_factory=list)
    """Trained assistant turns whose closing tokens do not train (cut by truncation)."""
    truncated: bool = False
    lost: int = 0
    """Trained tokens cut off by truncation."""

    @property
    def trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def trained_by_role(self) -> Counter:
        return Counter(role for role in self.roles if role is not None)


def render(
    messages: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> str:
    """The conversation as the tokenizer's chat template lays it out (tools passed where there are any)."""
    extra = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )
    except Exception as exc:  # jinja2's TemplateError, and raise_exception() of templates that check roles
        raise ChatTemplateError(f"the chat template refuses this conversation: {exc}") from None


def closing_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the template writes after an assistant turn's content to close it ('<|im_end|>'), without trailing
    whitespace; ChatTemplateError when it writes nothing, since a model trained on it would never learn to stop."""
    text = render(PROBE, tokenizer, None, add_generation_prompt=False)
    end = text.rfind(PROBE[-1]["content"])
    closing = text[end + len(PROBE[-1]["content"]) :].rstrip()
    if not closing:
        raise ChatTemplateError(
            "the chat template writes nothing after an assistant turn (no end-of-turn token such as <|im_end|>), "
            "so a tuned model would never learn to stop; set data.chat_template: chatml (or gemma, llama3, or a "
            "Jinja file that closes each turn)"
        )
    return closing


def _prefix(
    messages: list[dict[str, Any]], upto: int, text: str, tokenizer, tools, add_generation_prompt: bool, ends: bool
) -> int:
    """Where, in the whole conversation's `text`, the rendering of its first `upto` messages ends (`ends`: before
    the whitespace after the last turn's closing text, which is not part of that turn; else after it, where the
    next turn starts): checked to be a prefix of it, else the template renders a turn differently depending on
    what follows it."""
    if upto == 0 and not add_generation_prompt:
        return 0
    prefix = render(messages[:upto], tokenizer, tools, add_generation_prompt)
    if not text.startswith(prefix):
        raise ChatTemplateError(  # named by the last message the prefix holds: the turn rewritten once others follow
            f"message {max(upto - 1, 0)}: the chat template renders the conversation up to this message differently "
            "from the whole conversation (it rewrites earlier turns), so the turn's tokens cannot be located; set "
            "data.chat_template to a template that renders each turn the same whatever follows (e.g. chatml)"
        )
    return len(prefix.rstrip()) if ends else len(prefix)


def turn_spans(
    messages: list[dict[str, Any]], tokenizer, tools, data: DataConfig, text: str, closing: str
) -> list[Span]:
    """The character spans of the turns `data` trains (`train_roles`, `train_turns`). An assistant turn starts
    after its generation prompt and ends after its closing text; other roles span their whole rendered turn."""
    chosen = [index for index, message in enumerate(messages) if message["role"] in data.train_roles]
    if data.train_turns == "last":
        chosen = chosen[-1:]
    spans = []
    for index in chosen:
        role = messages[index]["role"]
        start = _prefix(messages, index, text, tokenizer, tools, add_generation_prompt=role == "assistant", ends=False)
        end = _prefix(messages, index + 1, text, tokenizer, tools, add_generation_prompt=False, ends=True)
        if role == "assistant":
            _check_assistant_turn(messages[index], index, text[start:end], closing)
        if end > start:
            spans.append(Span(index, role, start, end))
    return spans


def _check_assistant_turn(message: dict[str, Any], index: int, rendered: str, closing: str) -> None:
    """An assistant turn's span holds its content, its tool calls and its closing text: a template that drops one
    (tool calls in a template without tools) would train the model to answer nothing."""
    if message["content"].strip() and message["content"].strip() not in rendered:
        raise ChatTemplateError(f"message {index}: the chat template does not render the assistant's content")
    for call in message.get("tool_calls", []):
        if call["function"]["name"] not in rendered:
            raise ChatTemplateError(
                f"message {index}: the chat template drops the assistant's tool call "
                f"{call['function']['name']!r} (it does not render tool_calls); set data.chat_template: chatml, "
                "which writes tool calls and tools"
            )
    if not rendered.endswith(closing):
        raise ChatTemplateError(
            f"message {index}: the assistant turn does not end with the template's closing text {closing!r}, so "
            "the model would not learn to stop after it"
        )


def _token_roles(offsets: list[tuple[int, int]], spans: list[Span]) -> list[str | None]:
    """The trained span each token's characters fall in (its role), None for a token outside every span."""
    roles: list[str | None] = []
    for start, end in offsets:
        span = next((s for s in spans if start < s.end and end > s.start), None)
        roles.append(span.role if span and end > start else None)
    return roles


def _round_trip(masked: MaskedConversation, tokenizer) -> None:
    """Each trained span's tokens decode to exactly the span's text: the mask covers the turn, all of it and nothing
    else. ChatTemplateError naming the message otherwise."""
    for span in masked.spans:
        ids = [i for i, (s, e) in zip(masked.input_ids, masked.offsets) if s < span.end and e > span.start and e > s]
        decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        expected = masked.text[span.start : span.end]
        if decoded != expected:
            raise ChatTemplateError(
                f"message {span.message}: the trained tokens decode to {decoded[:80]!r}, not the turn's text "
                f"{expected[:80]!r}: the tokenizer's tokens straddle the turn's edge; use another chat template"
            )


def mask_conversation(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    closing: str | None = None,
) -> MaskedConversation:
    """The conversation's token ids and labels as `data` trains it (every token with `train_on_prompt`), cut to
    `data.max_length` from the end, with the round trip checked before the cut."""
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            "the model has no chat template; set data.chat_template: chatml (or gemma, llama3, or a Jinja file)"
        )
    closing = closing or closing_text(tokenizer)
    text = render(messages, tokenizer, tools, add_generation_prompt=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], [tuple(o) for o in encoding["offset_mapping"]]
    spans = turn_spans(messages, tokenizer, tools, data, text, closing)
    if data.train_on_prompt:
        roles: list[str | None] = ["prompt"] * len(ids)
        for index, role in enumerate(_token_roles(offsets, spans)):
            roles[index] = role or "prompt"
    else:
        roles = _token_roles(offsets, spans)
    labels = [i if r is not None else IGNORE_INDEX for i, r in zip(ids, roles)]
    masked = MaskedConversation(text, ids, labels, roles, offsets, spans, closing)
    _round_trip(masked, tokenizer)
    return truncated_to(masked, data.max_length)


def truncated_to(masked: MaskedConversation, limit: int) -> MaskedConversation:
    """The conversation cut to its first `limit` tokens, counting the trained tokens lost and the assistant turns
    whose closing text no longer trains."""
    if len(masked.input_ids) <= limit:
        return masked
    kept_to = masked.offsets[limit - 1][1]
    masked.truncated = True
    masked.lost = sum(label != IGNORE_INDEX for label in masked.labels[limit:])
    masked.unclosed = [s.message for s in masked.spans if s.role == "assistant" and s.end > kept_to]
    masked.input_ids, masked.labels = masked.input_ids[:limit], masked.labels[:limit]
    masked.roles, masked.offsets = masked.roles[:limit], masked.offsets[:limit]
    return masked


def marked_text(masked: MaskedConversation, start: str = "[[", end: str = "]]") -> str:
    """The conversation as trained, each run of trained tokens between `start` and `end` (what `--show-masks`
    prints and the card shows); the text past a truncation is left out."""
    pieces, inside, written = [], False, 0
    for (first, last), label in zip(masked.offsets, masked.labels):
        trains = label != IGNORE_INDEX
        if trains != inside:
            pieces.append(start if trains else end)
            inside = trains
        pieces.append(masked.text[max(first, written) : last])
        written = max(written, last)
    if inside:
        pieces.append(end)
    return "".join(pieces)
