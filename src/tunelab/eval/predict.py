"""Batched inference for evaluation and `tunelab predict`.

Examples are sorted by length before batching so each batch pads as little as
possible, then results are put back in input order. Decoders generate from
left-padded batches (so every prompt ends where generation starts) with the KV
cache, stopping at EOS.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.encode import encode
from tunelab.data.readers import Record


def _batches_by_length(examples: list[dict], batch_size: int):
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _pad(examples: list[dict], pad_id: int, left: bool, device) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
    has_types = "token_type_ids" in examples[0]
    if has_types:
        batch["token_type_ids"] = []
    for example in examples:
        gap = width - len(example["input_ids"])
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in batch:
                padding = [fill] * gap
                batch[key].append(padding + example[key] if left else example[key] + padding)
    return {key: torch.tensor(value, device=device) for key, value in batch.items()}


@torch.inference_mode()
def classify(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig,
             labels: list[str]) -> list[dict]:
    """For each record: the predicted label and the probability of every label."""
    model.eval()
    examples = encode("classification", records, tokenizer, config.data, with_target=False).examples
    device = next(model.parameters()).device
    results: list[dict] = [{}] * len(examples)
    for indices in _batches_by_length(examples, config.training.eval_batch_size):
        batch = _pad([examples[i] for i in indices], tokenizer.pad_token_id, left=False, device=device)
        probabilities = model(**batch).logits.float().softmax(-1).cpu()
        for i, row in zip(indices, probabilities):
            results[i] = {"label": labels[int(row.argmax())], "scores": {l: round(float(p), 6) for l, p in zip(labels, row)}}
    return results


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig) -> list[str]:
    """Greedy (or beam) completions for each record's prompt, stopping at EOS."""
    model.eval()
    examples = encode(config.task, records, tokenizer, config.data, with_target=False).examples
    device = next(model.parameters()).device
    decoder_only = config.task == "causal_lm"
    outputs: list[str] = [""] * len(examples)
    for indices in _batches_by_length(examples, config.training.eval_batch_size):
        batch = _pad([examples[i] for i in indices], tokenizer.pad_token_id, left=decoder_only, device=device)
        generated = model.generate(
            **batch,
            max_new_tokens=config.eval.max_new_tokens,
            num_beams=config.eval.num_beams,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if decoder_only:
            generated = generated[:, batch["input_ids"].shape[1] :]
        for i, ids in zip(indices, generated):
            outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return outputs
