"""How long a run's examples are in tokens, against the lengths training cuts them to.

Counted with the run's tokenizer on the uncut text the model reads, formatted as training formats it, so the
report says before training how many examples `data.max_length` and `data.max_target_length` will truncate.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.data.conversations import conversation_summary, count_conversations
from tunelab.data.distribution import length_summary
from tunelab.data.preferences import preference_lengths
from tunelab.kinds import kind_named
from tunelab.kinds.base import Family
from tunelab.kinds.encoding import formatted_prompt_ids
from tunelab.kinds.generation import render_prompt
from tunelab.records import Record


def _answers(records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig, decoder: bool) -> list[int]:
    """Answer lengths as training tokenises answers: a decoder's without special tokens (EOS is added after the
    cut), an encoder-decoder's as decoder targets."""
    texts = [str(record.fields[data.response_field]) for record in records]
    encoded = tokenizer(texts, add_special_tokens=False) if decoder else tokenizer(text_target=texts)
    return [len(ids) for ids in encoded["input_ids"]]


def token_lengths(
    kind: str, family: Family, records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig
) -> dict | None:
    """The token-length distribution of `records` of a `kind` of example (its name) as a model of `family` reads
    them, and how many examples training truncates (None for language modelling, which packs text into blocks and
    cuts nothing).

    What counts as an example's length follows what its limit bounds: a classifier's text (and pair) with its
    special tokens; a decoder's formatted prompt plus answer and EOS, which share `data.max_length`; an
    encoder-decoder's prompt; a conversation as its chat template lays it out, with what of it trains
    (`conversations`). Generation answers are measured against `data.max_target_length` beside it.
    """
    if not records:
        return None
    own = kind_named(kind).input_lengths(records, tokenizer, data)
    if own is not None:  # a kind that reads its records its own way (a reward model's whole answers)
        return {"input": length_summary(own, data.max_length), "truncated": sum(n > data.max_length for n in own)}
    if family == "encoder":
        texts = [str(record.fields[data.text_field]) for record in records]
        pairs = [str(record.fields[data.text_pair_field]) for record in records] if data.text_pair_field else None
        lengths = [len(ids) for ids in tokenizer(texts, pairs)["input_ids"]]
        return {
            "input": length_summary(lengths, data.max_length),
            "truncated": sum(n > data.max_length for n in lengths),
        }
    if kind_named(kind).conversational:
        counted = count_conversations(records, tokenizer, data)
        found = conversation_summary(counted, tokenizer, data)
        return {
            "input": length_summary([c.length for c in counted], data.max_length),
            "truncated": found["truncated"],
            "conversations": found,
        }
    if kind_named(kind).paired:
        return preference_lengths(records, tokenizer, data)
    if not kind_named(kind).prompted:  # raw text
        lengths = [len(ids) for ids in tokenizer([str(r.fields[data.text_field]) for r in records])["input_ids"]]
        return {"input": length_summary(lengths, data.max_length), "truncated": None}
    if family == "decoder":
        answers = _answers(records, tokenizer, data, decoder=True)
        prompts = [len(formatted_prompt_ids(render_prompt(record.fields, data), tokenizer)) for record in records]
        lengths = [prompt + answer + 1 for prompt, answer in zip(prompts, answers)]  # + EOS
        kept = [prompt + min(answer, data.max_target_length) + 1 for prompt, answer in zip(prompts, answers)]
    else:
        answers = _answers(records, tokenizer, data, decoder=False)
        lengths = [len(ids) for ids in tokenizer([render_prompt(r.fields, data) for r in records])["input_ids"]]
        kept = lengths
    truncated = sum(
        answer > data.max_target_length or length > data.max_length for answer, length in zip(answers, kept)
    )
    return {
        "input": length_summary(lengths, data.max_length),
        "answer": length_summary(answers, data.max_target_length),
        "truncated": truncated,
    }
