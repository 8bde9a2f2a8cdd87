"""What `tunelab data check` and a preference run's data report say about preference data, per split: what its
records hold (pairs, unpaired good and bad answers, prompt turns), the pairs that teach no preference (chosen
equal to rejected), how often the chosen answer is simply the longer one, and how long the examples are against
the limits that cut them.

Everything is measured on the tokens training reads: each example is encoded uncut exactly as training encodes
it (`tunelab.kinds.preference.encoded_preference`), so two answers that differ only where the chat template
does not reach count as equal, and lengths are the run's tokenizer's. Length bias matters because a preference
loss can learn "longer is better" from data whose chosen answers are mostly the longer ones (DPO's known
verbosity drift); the report says how often that holds before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.data.distribution import length_summary, spread
from tunelab.kinds.chat_masks import closing_text
from tunelab.kinds.preference import encoded_preference, preference_of
from tunelab.records import Record

SHOWN = 5
"""Records named per finding; the counts are always complete."""
UNCUT = 10**9
"""A limit no example reaches: each is measured whole, then cut as training cuts it."""


@dataclass
class Measured:
    """One example in tokens, uncut, as training encodes it."""

    where: str
    prompt: int
    """The tokens both answers share: the prompt's turns and the generation prompt."""
    chosen: int | None
    """The preferred answer's tokens (closing token included); None for an unpaired bad answer."""
    rejected: int | None
    same_answers: bool
    """Whether a pair's two answers are the same tokens: nothing tells them apart."""
    turns: int
    """The prompt's messages other than the system prompt."""

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    @property
    def answers(self) -> list[int]:
        return [length for length in (self.chosen, self.rejected) if length is not None]

    def cuts(self, data: DataConfig) -> tuple[bool, bool]:
        """Whether training cuts an answer (to `data.max_target_length`, or `data.max_length` - 1 when that is
        shorter) and whether the prompt loses its earliest tokens so that it and the longest answer kept fit
        `data.max_length`: the rule `encoded_preference` cuts by."""
        room = min(data.max_target_length, data.max_length - 1)
        longest_kept = max(min(length, room) for length in self.answers)
        return max(self.answers) > room, self.prompt > data.max_length - longest_kept


def measure(record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig, closing: str) -> Measured:
    """A valid record's example measured uncut."""
    pair = preference_of(record, data)
    uncut = data.model_copy(update={"max_length": UNCUT, "max_target_length": UNCUT})
    example, _ = encoded_preference(record, tokenizer, uncut, closing)
    chosen, rejected = example.get("chosen_ids"), example.get("rejected_ids")
    return Measured(
        where=record.where,
        prompt=len(example["prompt_ids"]),
        chosen=None if chosen is None else len(chosen),
        rejected=None if rejected is None else len(rejected),
        same_answers=chosen == rejected,
        turns=sum(message["role"] != "system" for message in pair.prompt),
    )


def preference_lengths(records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> dict:
    """The token lengths of a split's examples (each prompt with its longer answer, and every answer), uncut, how
    many examples training cuts (`data.max_length`, `data.max_target_length`), and what its records hold
    (`preferences`, `preference_summary`)."""
    closing = closing_text(tokenizer)
    measured = [measure(record, tokenizer, data, closing) for record in records]
    return {
        "input": length_summary([m.prompt + max(m.answers) for m in measured], data.max_length),
        "answer": length_summary([length for m in measured for length in m.answers], data.max_target_length),
        "truncated": sum(any(m.cuts(data)) for m in measured),
        "preferences": preference_summary(measured, data),
    }


def _mean(lengths: list[int]) -> float | None:
    return round(fmean(lengths), 1) if lengths else None


def length_bias(pairs: list[Measured]) -> dict | None:
    """How often a pair's chosen answer is longer than its rejected one, in tokens, and both sides' mean length;
    None without pairs."""
    if not pairs:
        return None
    longer = sum(m.chosen > m.rejected for m in pairs)
    shorter = sum(m.chosen < m.rejected for m in pairs)
    return {
        "pairs": len(pairs),
        "chosen_longer": longer,
        "chosen_shorter": shorter,
        "same_length": len(pairs) - longer - shorter,
        "chosen_longer_share": round(longer / len(pairs), 4),
        "chosen_mean": _mean([m.chosen for m in pairs]),
        "rejected_mean": _mean([m.rejected for m in pairs]),
    }


def preference_summary(measured: list[Measured], data: DataConfig) -> dict[str, Any]:
    """The counts the data report gives for a split of preference examples."""
    pairs = [m for m in measured if m.paired]
    good = [m.chosen for m in measured if not m.paired and m.chosen is not None]
    bad = [m.rejected for m in measured if not m.paired and m.rejected is not None]
    equal = [m.where for m in pairs if m.same_answers]
    cuts = [m.cuts(data) for m in measured]
    return {
        "pairs": len(pairs),
        "unpaired": {"good": len(good), "bad": len(bad), "good_mean": _mean(good), "bad_mean": _mean(bad)},
        "prompt_turns": spread([m.turns for m in measured]),
        "equal": len(equal),
        "equal_examples": equal[:SHOWN],
        "length_bias": length_bias(pairs),
        "answers_cut": sum(answer for answer, _ in cuts),
        "prompts_cut": sum(prompt for _, prompt in cuts),
        "max_length": data.max_length,
        "max_target_length": data.max_target_length,
    }


def _shown(items: list[str], count: int) -> str:
    return ", ".join(items) + (" ..." if count > len(items) else "")


def _equal_pairs(found: dict[str, Any]) -> str:
    return (
        f"{found['equal']} pair(s) ({_shown(found['equal_examples'], found['equal'])}): they carry no preference; "
        "drop them or fix one answer"
    )


def preference_lines(found: dict[str, Any]) -> list[str]:
    """The summary as the report's Markdown lines."""
    unpaired, turns = found["unpaired"], found["prompt_turns"]
    counted = f"- pairs: {found['pairs']}; unpaired examples: "
    if unpaired["good"] or unpaired["bad"]:
        counted += f"{unpaired['good']} good, {unpaired['bad']} bad (mean answer tokens: good "
        counted += f"{unpaired['good_mean'] or '-'}, bad {unpaired['bad_mean'] or '-'})"
    else:
        counted += "none"
    lines = [
        counted,
        f"- prompt turns per example (system prompt not counted): min {turns['min']}, median {turns['median']}, "
        f"max {turns['max']}",
        f"- chosen equal to rejected: {_equal_pairs(found) if found['equal'] else 'none'}",
    ]
    bias = found["length_bias"]
    if bias:
        lines.append(
            f"- length bias: chosen longer than rejected in {bias['chosen_longer']} of {bias['pairs']} pair(s) "
            f"({100 * bias['chosen_longer_share']:.1f}%), shorter in {bias['chosen_shorter']}, as long in "
            f"{bias['same_length']}; mean answer tokens: chosen {bias['chosen_mean']}, rejected {bias['rejected_mean']}"
        )
    lines.append(
        f"- truncation: {found['answers_cut']} example(s) with an answer cut to "
        f"data.max_target_length={found['max_target_length']}, {found['prompts_cut']} whose prompt loses its "
        f"earliest tokens to data.max_length={found['max_length']}"
    )
    return lines


def preference_warnings(task: str, found: dict[str, Any]) -> list[str]:
    """The report's warnings on a split of preference examples: pairs that teach nothing."""
    return [f"{task}: chosen equal to rejected in {_equal_pairs(found)}"] if found["equal"] else []
