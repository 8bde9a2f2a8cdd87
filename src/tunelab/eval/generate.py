"""Batched generation for evaluation: the one place tunelab turns prompts into model answers.

Why it is fast: prompts are sorted by length so each batch pads as little as possible (results go back
in input order); decoders get left padding so every prompt ends where its answer starts and one KV-cached
`generate` call serves the whole batch; rows that hit EOS or a stop string stop costing decode work as
soon as the whole batch is done. bench/eval_generation.py measures it against one prompt at a time.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList, StopStringCriteria


def batches_by_length(sequences: list[list[int]], batch_size: int):
    """Index batches of similar-length sequences, shortest first."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(examples: list[dict], pad_id: int, left: bool, device) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask (and token_type_ids when present) padded to the batch's longest example."""
    width = max(len(e["input_ids"]) for e in examples)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in examples[0]]
    fills = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    batch: dict[str, list] = {key: [] for key in keys}
    for example in examples:
        gap = width - len(example["input_ids"])
        for key in keys:
            padding = [fills[key]] * gap
            batch[key].append(padding + example[key] if left else example[key] + padding)
    return {key: torch.tensor(value, device=device) for key, value in batch.items()}


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string (a batch keeps decoding after one row has stopped)."""
    for marker in stop:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text.strip()


def _stop_criteria(tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> dict:
    """`generate` arguments that end a row at a stop string; none when the tokenizer cannot express one
    (a WordPiece vocabulary has no newline token), in which case answers are only cut after decoding."""
    if not stop:
        return {}
    try:
        criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=stop)
    except ValueError:
        return {}
    return {"stopping_criteria": StoppingCriteriaList([criteria])}


@torch.inference_mode()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    decoder_only: bool,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    stop: list[str] = (),
) -> list[str]:
    """Greedy (or beam) answers to tokenised prompts, in input order, cut at EOS and at the first stop string."""
    model.eval()
    device = next(model.parameters()).device
    stop = [s for s in stop if s]
    extra = _stop_criteria(tokenizer, stop)
    outputs = [""] * len(prompts)
    for indices in batches_by_length(prompts, batch_size):
        examples = [{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in indices]
        batch = pad_batch(examples, tokenizer.pad_token_id, left=decoder_only, device=device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
        if decoder_only:
            generated = generated[:, batch["input_ids"].shape[1] :]
        for i, ids in zip(indices, generated):
            outputs[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
    return outputs
