"""Tagging (named entities): each word token of a record carries an IOB2 tag.

A generating model is trained and scored through text: the tags become 'Nadim Ladki (PER); Japan (LOC)'
(`format_entities`), its answer is read back into tags over the tokens (`parse_entities`), and seqeval scores
those. Training encodes that text as generation does.
"""

from __future__ import annotations

from typing import Any

from tunelab.kinds.generation import Generation
from tunelab.records import Record


class Tagging(Generation):
    name = "tagging"
    needs = ("templates",)
    primary_metric = "entity_f1"
    inline_metrics = ("entity_f1", "entity_precision", "entity_recall")
    reference_answers = False
    checked_as_run_data = False
    perturbed = False

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return [spec.tokens_field] + ([spec.tags_field] if with_target else [])

    def missing_answer(self, spec: Any, record: Record) -> str | None:
        return None

    def target(self, spec: Any, record: Record) -> str:
        return format_entities(record.fields[spec.tokens_field], record.fields[spec.tags_field])

    def references(self, spec: Any, records: list[Record]) -> list:
        return [list(map(str, r.fields[spec.tags_field])) for r in records]

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return [parse_entities(o, list(map(str, r.fields[spec.tokens_field]))) for o, r in zip(outputs, records)]

    def task_answer_field(self, spec: Any) -> str | None:
        return spec.tags_field


def format_entities(tokens: list[str], tags: list[str]) -> str:
    """IOB2 tags as the text a model is asked to produce: 'Nadim Ladki (PER); Japan (LOC)', or 'none'."""
    entities, current, kind = [], [], None
    for token, tag in zip(tokens, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and tag[2:] != kind):
            if current:
                entities.append(f"{' '.join(current)} ({kind})")
            current, kind = [token], tag[2:]
        elif tag.startswith("I-"):
            current.append(token)
        else:
            if current:
                entities.append(f"{' '.join(current)} ({kind})")
            current, kind = [], None
    if current:
        entities.append(f"{' '.join(current)} ({kind})")
    return "; ".join(entities) or "none"


def parse_entities(text: str, tokens: list[str]) -> list[str]:
    """Generated 'span (TYPE); ...' text back to IOB2 tags over `tokens`, so seqeval can score it.

    Each span is placed at its first not-yet-tagged occurrence in the tokens; spans that do not occur,
    or lack a '(TYPE)', are ignored (they can only be wrong, and seqeval counts the missed gold entities).
    """
    tags = ["O"] * len(tokens)
    for part in text.split(";"):
        part = part.strip()
        if not part.endswith(")") or "(" not in part:
            continue
        span, _, kind = part[:-1].rpartition("(")
        words, kind = span.split(), kind.strip().upper()
        if not words or not kind:
            continue
        for start in range(len(tokens) - len(words) + 1):
            window = range(start, start + len(words))
            if tokens[start : start + len(words)] == words and all(tags[i] == "O" for i in window):
                tags[start] = f"B-{kind}"
                for i in window[1:]:
                    tags[i] = f"I-{kind}"
                break
    return tags
