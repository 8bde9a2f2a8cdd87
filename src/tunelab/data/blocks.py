"""Raw text as continued pre-training reads it: every text tokenised, ended with EOS, laid end to end and cut into
blocks of `data.max_length` tokens (the GPT-2 / Hugging Face `run_clm` recipe).

Nothing is truncated or dropped: a text longer than a block runs on into the next one, and the last block keeps the
remainder, shorter than the others. EOS marks where one text ends and the next begins, so the model learns the
boundary instead of reading two texts as one. Each block remembers the records it holds (file:line), so a data
problem found later still names its source.
"""

from __future__ import annotations

from tunelab.config import DataConfig
from tunelab.data.taskset import TaskSet
from tunelab.records import DataError, Record

BLOCK_FIELD = "input_ids"
"""The field of a block record holding its token ids."""


def _span(first: Record, last: Record) -> str:
    """'file:3' for a block inside one record, 'file:3 to file:7' for one spanning several."""
    return first.where if first is last else f"{first.where} to {last.where}"


def pack_blocks(records: list[Record], tokenizer, text_field: str, block_length: int) -> list[Record]:
    """The records' texts as consecutive blocks of `block_length` token ids (the last may be shorter), each a
    Record whose `where` spans the records it was cut from. A tokenizer without an EOS token cannot mark where a
    text ends and is refused."""
    if tokenizer.eos_token_id is None:
        raise DataError("language modelling ends every text with the tokenizer's EOS token; this tokenizer has none")
    blocks: list[Record] = []
    ids: list[int] = []
    sources: list[Record] = []
    for record in records:
        ids += tokenizer(str(record.fields[text_field]), add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
        sources.append(record)
        while len(ids) >= block_length:
            blocks.append(Record({BLOCK_FIELD: ids[:block_length]}, _span(sources[0], sources[-1])))
            ids = ids[block_length:]
            sources = [record] if ids else []
    if ids:
        blocks.append(Record({BLOCK_FIELD: ids}, _span(sources[0], sources[-1])))
    return blocks


def block_taskset(tasks: TaskSet, tokenizer, data: DataConfig) -> None:
    """Turn a language-modelling run's training and validation texts into blocks, in place, noting the counts; the
    test texts stay whole, as perplexity scores a text with windows over all of it."""
    for task in tasks.trained.values():
        for split in ("train", "validation"):
            texts = getattr(task, split)
            blocks = pack_blocks(texts, tokenizer, data.text_field, data.max_length)
            tokens = sum(len(block.fields[BLOCK_FIELD]) for block in blocks)
            tasks.notes.append(
                f"{split}: {len(texts)} texts ({tokens} tokens with an EOS after each) packed into {len(blocks)} "
                f"blocks of {data.max_length} tokens"
            )
            setattr(task, split, blocks)
