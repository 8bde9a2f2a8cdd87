"""A text's likelihood as lm-evaluation-harness 0.4.x scores it (`HFLM.loglikelihood_rolling`), so that the
perplexities users compare with lm-eval's come out the same here.

tunelab's own `perplexity` scores tokens 2..n of a text with no prefix and a half-overlapping sliding window.
lm-eval differs in three ways, each reproduced here: it puts a prefix token before the text (the tokenizer's BOS,
else its EOS), so every token is scored, the first given only that prefix; it cuts a long text into windows of
its `max_length` (the model's context length) that each predict the next `max_length` tokens with one token of
context (`get_rolling_token_windows(context_len=1)` made disjoint), so every token is scored exactly once; and it
divides the summed NLL by tokens, words or UTF-8 bytes (`word_perplexity`, `byte_perplexity`, `bits_per_byte`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from tunelab.eval.metrics import MetricError, TextLikelihood
from tunelab.eval.progress import progress
from tunelab.eval.targets import Target
from tunelab.records import Record
from tunelab.tasks import TaskSpec

LM_EVAL_DEFAULT_LENGTH = 2048
"""lm-eval's window when the model's config names no context length (`HFLM._DEFAULT_MAX_LENGTH`)."""


def prefix_token(tokenizer) -> int:
    """lm-eval's `HFLM.prefix_token_id`: what the first token of a text is predicted from."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise MetricError(
            "lm-eval's perplexities predict a text's first token after the tokenizer's BOS or EOS token; this "
            "tokenizer has neither. Score the task with `perplexity`, which needs no prefix"
        )
    return prefix


def lm_eval_length(target: Target, spec: TaskSpec) -> int:
    """lm-eval's window (`HFLM.max_length`): the task's `max_length` when set (lm-eval's `max_length=` model
    argument), else the model's context length from its config, not tunelab's input limit, so a long text is cut
    where lm-eval cuts it."""
    config = getattr(target.model.config, "text_config", None) or target.model.config
    lengths = (getattr(config, name, None) for name in ("n_positions", "max_position_embeddings", "n_ctx"))
    return spec.max_length or next((int(n) for n in lengths if n is not None), LM_EVAL_DEFAULT_LENGTH)


def text_ids(tokenizer, text: str, prefix: int) -> list[int]:
    """The text's tokens as lm-eval 0.4.13's `tok_encode` gives them: the tokenizer's own special tokens (none for
    GPT-2-style tokenizers, a BOS for Llama's), unless the text already starts with the prefix token."""
    return tokenizer(text, add_special_tokens=not text.startswith(tokenizer.decode(prefix)))["input_ids"]


def rolling_windows(ids: list[int], prefix: int, length: int) -> Iterator[tuple[list[int], list[int]]]:
    """(model input, tokens it predicts) pairs covering every token of `ids` once: lm-eval's
    `get_rolling_token_windows(ids, prefix, length, context_len=1)` passed through `make_disjoint_window`.

    The first window is the prefix and the first length - 1 tokens, predicting the first `length` tokens; each
    later window predicts the next `length` tokens from the `length` tokens before each (so its first prediction
    has one token of context), and the last, shorter one keeps a full window of context. The predictions are the
    input's last logits.
    """
    tokens = [prefix, *ids]
    for start in range(0, len(ids), length):
        end = min(start + length, len(ids))
        yield tokens[max(0, end - length) : end], tokens[start + 1 : end + 1]


@torch.inference_mode()
def _rolling_nll(target: Target, ids: list[int], prefix: int, length: int) -> float:
    """Summed NLL of every token of `ids`, one forward per window, projecting only the logits that are scored."""
    device = next(target.model.parameters()).device
    total = 0.0
    for inputs, predicted in rolling_windows(ids, prefix, length):
        logits = target.model(
            input_ids=torch.tensor([inputs], device=device), logits_to_keep=len(predicted), use_cache=False
        ).logits[0, -len(predicted) :]
        gold = torch.tensor(predicted, device=device).unsqueeze(-1)
        total -= float(logits.float().log_softmax(-1).gather(-1, gold).sum())
    return total


def text_likelihood(target: Target, text: str, prefix: int, length: int) -> TextLikelihood:
    """One text's summed NLL under lm-eval's convention, with the token, word and byte counts its perplexities
    divide by (words and bytes counted as lm-eval's `Task.count_words` and `count_bytes` do)."""
    ids = text_ids(target.tokenizer, text, prefix)
    words = len(re.split(r"\s+", text))
    return TextLikelihood(_rolling_nll(target, ids, prefix, length), len(ids), words, len(text.encode("utf-8")))


def rolling_nll(target: Target, spec: TaskSpec, records: list[Record]) -> list[TextLikelihood]:
    """Each record's text (`spec.text_field`) scored as lm-eval's `loglikelihood_rolling` scores it."""
    if spec.handler.prompted:
        raise MetricError(
            f"lm-eval's perplexities score a text; task {spec.name} is a {spec.kind} task. "
            "Use them with a language_modeling task"
        )
    target.model.eval()
    prefix, length = prefix_token(target.tokenizer), lm_eval_length(target, spec)
    texts = [str(r.fields[spec.text_field]) for r in records]
    return [
        text_likelihood(target, text, prefix, length) for text in progress(len(texts), "rolling perplexity", texts)
    ]
