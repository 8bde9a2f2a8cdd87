"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE equivalent to the run's prompt format, the
stop tokens, the chat template's default system prompt, and the run's decoding (greedy, no repetition penalty,
its answer length), so Ollama answers as `tunelab predict` does rather than sampling at its defaults.

Ollama templates are Go templates, while a tokenizer's chat template is Jinja; no library translates one into
the other. Most chat templates wrap each message in a fixed prefix and suffix per role, though (ChatML,
Llama 3, Gemma), so the format is read off the Jinja template by rendering conversations with marker texts,
and the result is checked: the conversations rendered from the derived format must equal the tokenizer's own
rendering. A template that folds the system prompt into the first user turn (Gemma) is read as such: the system
message opens the user turn and the user message right after it continues it. A template that does more (tool
calls, tool definitions) gets no TEMPLATE rather than an approximate one.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.render import has_chat_template, render_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
_MARK = {role: f"\x02{role.upper()}-{i}\x03" for i, role in enumerate(ROLES)}


class TemplateNotTranslatable(TunelabError, ValueError):
    """A chat template that is not a fixed prefix and suffix per role, so no Ollama template equals it."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as fixed texts: `start`, then each message as prefix + content + suffix of its role,
    then `generation_prompt` after a last message that is not the assistant's. `default_system` is the system
    message the template adds when a conversation has none. `folded_system`: the system message is written inside
    the first user turn (Gemma), so a user message right after it has no prefix of its own."""

    start: str
    wraps: dict[str, tuple[str, str]]
    generation_prompt: str
    default_system: str | None
    folded_system: bool = False

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The text this format gives a conversation, the default system message included as Ollama does
        (it prepends the Modelfile's SYSTEM when the conversation has no system message)."""
        if self.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text, previous = self.start, None
        for message in messages:
            prefix, suffix = self.wraps[message["role"]]
            if self.folded_system and message["role"] == "user" and previous == "system":
                prefix = ""
            text += prefix + message["content"] + suffix
            previous = message["role"]
        if add_generation_prompt and messages[-1]["role"] != "assistant":
            text += self.generation_prompt
        return text


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation: bool = False) -> str:
    try:
        return render_chat(messages, tokenizer, add_generation_prompt=generation)
    except Exception as error:  # the template's own checks (e.g. no system role): not a per-role format
        raise TemplateNotTranslatable(f"the chat template refused a probe conversation: {error}") from None


def _between(text: str, before: str | None, after: str | None) -> str:
    start = 0 if before is None else text.index(before) + len(before)
    end = len(text) if after is None else text.index(after, start)
    return text[start:end]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise TemplateNotTranslatable(f"{what}: {text!r} does not end with {suffix!r}")
    return text[: len(text) - len(suffix)]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise TemplateNotTranslatable(f"{what}: {text!r} does not start with {prefix!r}")
    return text[len(prefix) :]


def derive_chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """Read the per-role texts off the tokenizer's chat template, and check them on several conversations.

    Conversations of marker texts are rendered and cut at the markers: the text after the last answer is the
    assistant suffix; the generation prompt is what `add_generation_prompt` appends (and the assistant prefix);
    the user prefix sits between an answer's suffix and the next user message; the system prefix is the user
    prefix with the role name swapped (how role-tagged formats write it), or, where no user prefix follows the
    system message, the user prefix itself, the system message folded into the first user turn (`_check` catches
    any other layout)."""
    s, u, a = _MARK["system"], _MARK["user"], _MARK["assistant"]
    user = {"role": "user", "content": u}
    full = _render(tokenizer, [{"role": "system", "content": s}, user, *_turn(a)])
    if any(mark not in full for mark in (s, u, a)):
        raise TemplateNotTranslatable("the chat template drops or rewrites message contents")
    assistant_suffix = _between(full, a, None)
    prompt_only = _render(tokenizer, [user], generation=False)
    generation_prompt = _strip_prefix(_render(tokenizer, [user], generation=True), prompt_only, "generation prompt")
    user_suffix = _strip_suffix(_between(full, u, a), generation_prompt, "between a user message and the answer")
    two_turns = _render(tokenizer, [user, *_turn(a), {"role": "user", "content": s}])
    user_prefix = _strip_prefix(
        _between(two_turns, a, s), assistant_suffix, "between an answer and the next user turn"
    )
    between_system_and_user = _between(full, s, u)
    folded = not between_system_and_user.endswith(user_prefix)
    if folded:  # the first user message continues the turn the system message opened
        system_prefix, system_suffix = user_prefix, between_system_and_user
    else:
        system_prefix = user_prefix.replace("user", "system")
        system_suffix = between_system_and_user[: len(between_system_and_user) - len(user_prefix)]
    start = _strip_suffix(_between(full, None, s), system_prefix, "before the system message")
    wraps = {
        "system": (system_prefix, system_suffix),
        "user": (user_prefix, user_suffix),
        "assistant": (generation_prompt, assistant_suffix),
    }
    default_system = _default_system(_between(prompt_only, None, u), wraps, start)
    chat = ChatFormat(start, wraps, generation_prompt, default_system, folded)
    _check(chat, tokenizer)
    return chat


def _default_system(head: str, wraps: dict[str, tuple[str, str]], start: str) -> str | None:
    """The system message a template writes before a conversation that has none (`head`: the text before the
    first user message of such a conversation), or None."""
    (system_prefix, system_suffix), user_prefix = wraps["system"], wraps["user"][0]
    if head == start + user_prefix:
        return None
    what = "the text a conversation without a system message starts with"
    block = _strip_suffix(_strip_prefix(head, start, what), user_prefix, what)
    return _strip_suffix(_strip_prefix(block, system_prefix, what), system_suffix, what)


def _turn(answer: str) -> list[dict]:
    return [{"role": "assistant", "content": answer}]


PROBES = [
    [{"role": "user", "content": "Hello there."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another,\nplease."},
    ],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "De rien"},
    ],
]
"""Conversations on which a derived format must render exactly as the chat template does."""


def _check(chat: ChatFormat, tokenizer: PreTrainedTokenizerBase) -> None:
    for messages in PROBES:
        for generation in (True, False):
            expected = _render(tokenizer, messages, generation)
            if messages[-1]["role"] == "assistant" and generation:
                continue  # a generation prompt after an answer is not a conversation anyone sends
            if chat.render(messages, generation) != expected:
                raise TemplateNotTranslatable(
                    f"a per-role format read off the chat template renders {messages} differently from it"
                )


def _go(text: str) -> str:
    """A Go template action printing `text` verbatim (JSON string escapes are valid Go string escapes), so
    the template's own whitespace trimming never touches the texts."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def ollama_template(chat: ChatFormat) -> str:
    """The Go template Ollama renders a conversation (.Messages) with, equal to `chat`; a folded system message
    is tracked with `$previous`, the role of the message before."""
    branches = "\n".join(
        ("{{- if" if i == 0 else "{{- else if")
        + f' eq .Role "{role}" }}}}{_prefix_action(chat, role, prefix)}{{{{ .Content }}}}{_go(suffix)}'
        for i, (role, (prefix, suffix)) in enumerate(chat.wraps.items())
    )
    lines = [
        _go(chat.start)
        + ('{{- $previous := "" }}' if chat.folded_system else "")
        + "{{- range $i, $message := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        branches,
        "{{- end }}",
        '{{- if and $last (ne .Role "assistant") }}' + _go(chat.generation_prompt),
        "{{- end }}",
        *(["{{- $previous = .Role }}"] if chat.folded_system else []),
        "{{- end }}",
    ]
    return "\n".join(lines)


def _prefix_action(chat: ChatFormat, role: str, prefix: str) -> str:
    """A role's prefix; a user message's left out right after a folded system message, which opened its turn."""
    if chat.folded_system and role == "user" and prefix:
        return '{{- if ne $previous "system" }}' + _go(prefix) + "{{- end }}"
    return _go(prefix)


def prompt_template(config: RunConfig) -> str:
    """The Go template of a base model (no chat template): the prompt, or the run's prompt template around
    it when that has one field, followed by the newline the model learnt to answer after."""
    data = config.data
    template = data.prompt_template if data is not None else None
    if template:
        before, field, after = _one_field(template)
        if field is not None:
            return _go(before) + "{{ .Prompt }}" + _go(after + "\n")
    return "{{ .Prompt }}" + _go("\n")


def _one_field(template: str) -> tuple[str, str | None, str]:
    """('Summarise:\\n', 'dialogue', '') for 'Summarise:\\n{dialogue}'; (..., None, ...) unless exactly one field."""
    parts = list(string.Formatter().parse(template))
    fields = [name for _, name, _, _ in parts if name]
    if len(fields) != 1:
        return "", None, ""
    text = template.replace("{{", "{").replace("}}", "}")
    marker = "{" + fields[0] + "}"
    before, _, after = text.partition(marker)
    return before, fields[0], after


def stop_tokens(tokenizer: PreTrainedTokenizerBase, generation_eos: list[int], chat: ChatFormat | None) -> list[str]:
    """Every text that ends an answer: the EOS token(s) and the special token closing an assistant turn."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in generation_eos]
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    if chat is not None:
        closing = chat.wraps["assistant"][1].strip()
        if closing and closing in tokenizer.get_vocab():
            stops.append(closing)
    return list(dict.fromkeys(stop for stop in stops if stop))


def decoding_parameters(config: RunConfig) -> list[str]:
    """The Modelfile lines that make Ollama decode as tunelab's eval and predict do: greedily (Ollama samples at
    temperature 0.8 by default), without the repetition penalty Ollama applies by default (1.1; transformers'
    generate has none), and up to the run's `eval.max_new_tokens`. Beam search has no Ollama equivalent: greedy is
    the nearest, and a comment says so."""
    lines = [
        f"# decoding as the run's eval and predict: greedy, no repetition penalty, at most eval.max_new_tokens"
        f" = {config.eval.max_new_tokens} tokens (raise num_predict for longer answers)",
        "PARAMETER temperature 0",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_predict {config.eval.max_new_tokens}",
    ]
    if config.eval.num_beams > 1:
        lines.insert(1, f"# the run used beam search (eval.num_beams={config.eval.num_beams}); Ollama has none")
    return lines


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateNotTranslatable('the text holds """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def render_modelfile(
    gguf_name: str, tokenizer: PreTrainedTokenizerBase, config: RunConfig, generation_eos: list[int]
) -> str:
    """The Modelfile beside `gguf_name`: FROM, TEMPLATE, SYSTEM (the chat template's default), the run's
    decoding parameters and stops.

    A chat template with no per-role equivalent gets no TEMPLATE line but a comment saying why: Ollama then
    falls back on the chat template the GGUF carries, which it matches against the templates it knows."""
    chat, untranslatable = None, None
    if has_chat_template(tokenizer):
        try:
            chat = derive_chat_format(tokenizer)
        except TemplateNotTranslatable as error:
            untranslatable = " ".join(str(error).split())
    lines = [f"FROM ./{gguf_name}"]
    if untranslatable is not None:
        lines.append(f"# TEMPLATE left out, the chat template has no Go equivalent here ({untranslatable})")
    else:
        lines.append(f"TEMPLATE {_quoted(ollama_template(chat) if chat is not None else prompt_template(config))}")
    if chat is not None and chat.default_system is not None:
        lines.append(f"SYSTEM {_quoted(chat.default_system)}")
    lines += decoding_parameters(config)
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stop_tokens(tokenizer, generation_eos, chat)]
    return "\n".join(lines) + "\n"
