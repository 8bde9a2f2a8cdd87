"""A reward model's scores: the one number its scalar head gives each sequence (a prompt and an answer), read in
length-sorted batches padded on the right, so a decoder's head reads each sequence's own last token.

What is scored of a record is its kind's (`Kind.scored_ids`: a pair's two answers, or a prompt's one answer);
evaluation compares a pair's two scores (`pairwise_accuracy`), `predict` and `serve` report them, and the judge
(`tunelab.eval.judge`) scores other models' answers with them.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.eval.generate import batches_by_length, pad_batch
from tunelab.eval.predict import PAD_MULTIPLE
from tunelab.eval.targets import Target
from tunelab.kinds.reward import PAIR_KEYS, UNPAIRED
from tunelab.records import DataError, Record
from tunelab.tasks import TaskSpec


@torch.inference_mode()
def reward_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]], batch_size: int
) -> list[float]:
    """Each sequence's score (its head's one output), in the order given. Batches are padded to a multiple of
    PAD_MULTIPLE tokens (within the model's position table), as a classifier's are, so a long test set runs a
    bounded number of input shapes."""
    model.eval()
    device = next(model.parameters()).device
    positions = getattr(model.config, "max_position_embeddings", None)
    scores = [0.0] * len(sequences)
    for indices in batches_by_length(sequences, batch_size):
        examples = [{"input_ids": sequences[i], "attention_mask": [1] * len(sequences[i])} for i in indices]
        batch = pad_batch(examples, tokenizer.pad_token_id, False, device, PAD_MULTIPLE, positions)
        for i, score in zip(indices, model(**batch).logits[:, 0].float().cpu()):
            scores[i] = float(score)
    return scores


def scored_records(target: Target, spec: TaskSpec, records: list[Record], limit: int) -> list[dict[str, float]]:
    """Each record's scores by the key its kind reports them under (`score_chosen` and `score_rejected` for a pair,
    `score` for a prompt with one answer), its sequences cut to `limit` tokens."""
    return _scored(target, [spec.handler.scored_ids(spec, r, target.tokenizer, limit) for r in records])


def pair_scores(target: Target, spec: TaskSpec, records: list[Record], limit: int) -> list[tuple[float, float]]:
    """Each pair's (chosen, rejected) scores; DataError naming the first record that is no pair."""
    sequences = [spec.handler.scored_ids(spec, r, target.tokenizer, limit) for r in records]
    single = next((record for record, scored in zip(records, sequences) if set(scored) != set(PAIR_KEYS)), None)
    if single is not None:
        raise DataError(f"{single.where}: {UNPAIRED}")
    return [(scores[PAIR_KEYS[0]], scores[PAIR_KEYS[1]]) for scores in _scored(target, sequences)]


def _scored(target: Target, sequences: list[dict[str, list[int]]]) -> list[dict[str, float]]:
    """The scores of every record's sequences, computed together and handed back per record."""
    flat = [ids for scored in sequences for ids in scored.values()]
    scores = iter(reward_scores(target.model, target.tokenizer, flat, target.batch_size))
    return [{key: next(scores) for key in scored} for scored in sequences]
