"""Predictions of a run's model on records shaped by its config: labels with scores, or generated text.

Batching (length-sorted, left-padded for decoders) lives in `tunelab.eval.generate`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import DataConfig, RunConfig
from tunelab.data.encode import encode
from tunelab.eval.generate import batches_by_length, generate_texts, pad_batch
from tunelab.models.family import task_type_of
from tunelab.records import Record

PAD_MULTIPLE = 32
"""Classifier batches are padded to a multiple of this many tokens, so a long test set runs a bounded number of
input shapes."""


@torch.inference_mode()
def classify(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[Record],
    config: RunConfig,
    labels: list[str],
) -> list[dict]:
    """For each record: the predicted label and the probability of every label."""
    model.eval()
    device = next(model.parameters()).device
    return classify_with(
        lambda batch: model(**batch).logits,
        tokenizer,
        records,
        config.data,
        config.training.eval_batch_size,
        labels,
        device,
    )


@torch.inference_mode()
def classify_with(
    logits: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    records: list[Record],
    data: DataConfig,
    batch_size: int,
    labels: list[str],
    device: torch.device | str = "cpu",
) -> list[dict]:
    """`classify` for any engine that turns a padded batch into logits (PyTorch, or onnxruntime on an export):
    the same encoding, length-sorted batches and scores, so every engine writes the same rows.

    Batches are padded to a multiple of `PAD_MULTIPLE` tokens: every distinct input shape costs the CPU's bf16
    kernels (oneDNN) a cached primitive with its own buffers, and a 25,000-review test set in length-sorted batches
    has hundreds of distinct lengths (IMDB's grew one process past 21 GB)."""
    examples = encode("classification", records, tokenizer, data, with_target=False).examples
    results: list[dict] = [{}] * len(examples)
    for indices in batches_by_length([e["input_ids"] for e in examples], batch_size):
        batch = pad_batch(
            [examples[i] for i in indices], tokenizer.pad_token_id, False, device, PAD_MULTIPLE, data.max_length
        )
        probabilities = logits(batch).float().softmax(-1).cpu()
        for i, row in zip(indices, probabilities):
            results[i] = {
                "label": labels[int(row.argmax())],
                "scores": {label: round(float(p), 6) for label, p in zip(labels, row)},
            }
    return results


def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig
) -> list[str]:
    """Greedy (or beam) completions for each record's prompt, stopping at EOS."""
    examples = encode(task_type_of(config), records, tokenizer, config.data, with_target=False).examples
    return generate_texts(
        model,
        tokenizer,
        [e["input_ids"] for e in examples],
        decoder_only=task_type_of(config) == "causal_lm",
        batch_size=config.training.eval_batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        num_beams=config.eval.num_beams,
    )
