"""Batched generation for evaluation: the one place tunelab turns prompts into model answers.

Why it is fast: prompts are sorted by length so each batch pads as little as possible (results go back
in input order); decoders get left padding so every prompt ends where its answer starts and one KV-cached
`generate` call serves the whole batch; the prompts are prefilled as one packed row with attention per
prompt, so the padding that lines them up costs no prefill (on a CPU the prefill is most of the work);
rows that hit EOS or a stop string stop costing decode work as soon as the whole batch is done.
bench/eval_generation.py measures it against one prompt at a time and transformers' pipeline.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from tunelab.data.encode import VARLEN_KEYS, PackedCollator, Packing
from tunelab.eval.progress import progress
from tunelab.models.attention import SDPA_VARLEN


def batches_by_length(sequences: list[list[int]], batch_size: int):
    """Index batches of similar-length sequences, shortest first."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(
    examples: list[dict], pad_id: int, left: bool, device, multiple_of: int = 1, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask (and token_type_ids when present) padded to the batch's longest example, rounded
    up to `multiple_of` (never past `limit`, nor below the longest)."""
    longest = max(len(e["input_ids"]) for e in examples)
    width = max(longest, min(-(-longest // multiple_of) * multiple_of, limit or longest))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in examples[0]]
    fills = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    batch: dict[str, list] = {key: [] for key in keys}
    for example in examples:
        gap = width - len(example["input_ids"])
        for key in keys:
            padding = [fills[key]] * gap
            batch[key].append(padding + example[key] if left else example[key] + padding)
    return {key: torch.tensor(value, device=device) for key, value in batch.items()}


def cut_at_stop(text: str, stop: list[str], strip: bool = True) -> str:
    """The text before the first stop string (a batch keeps decoding after one row has stopped)."""
    for marker in stop:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text.strip() if strip else text


@dataclass
class Row:
    """One prompt of a batch and how its answer ends: its own token budget and stop strings, and, for streaming,
    `on_text` called with each new piece of its answer as it is generated, and `cancelled`, set from another thread
    when nobody waits for the answer any more (a server's client went away): the row then ends at the next token."""

    prompt: list[int]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class RowProgress:
    """One row's answer as it grows, token by token: whether it has ended (EOS, its token budget, its first stop
    string, or its client gone), and, when it streams, each new piece of its text sent as soon as it can no longer
    change (what could still turn into a stop string is held back). Shared by `generate`'s stopping criterion and
    the server's continuous batching, so a row ends and streams the same way on both."""

    def __init__(self, row: Row, tokenizer: PreTrainedTokenizerBase, eos_token_id: int | None = None):
        self.row, self.tokenizer = row, tokenizer
        self.eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.done, self.sent = False, 0

    def update(self, generated: list[int]) -> bool:
        """Whether the row has ended, given every token generated for it so far (streaming what is new)."""
        if self.done:
            return True
        row = self.row
        if row.cancelled.is_set():
            self.done = True
            return True
        ended = self.eos is not None and generated[-1:] == [self.eos]
        finished = ended or len(generated) >= row.max_new_tokens
        if row.stop or row.on_text:  # decoding each step costs time, so only rows that need the text pay it
            text = self.tokenizer.decode(generated[:-1] if ended else generated, skip_special_tokens=True)
            cut = cut_at_stop(text, row.stop, strip=False)
            finished = finished or cut != text
            self._emit(cut, finished)
        self.done = finished
        return finished

    def _emit(self, text: str, final: bool) -> None:
        """Send the row the part of its answer that can no longer change: what a streaming client receives adds up
        to the final answer exactly (leading and trailing whitespace dropped, as in the answer)."""
        row = self.row
        if row.on_text is None:
            return
        visible = text.lstrip()
        stable = visible.rstrip()  # trailing whitespace waits until text follows it, or is dropped at the end
        ready = len(stable)
        if not final:
            hold = max((len(s) - 1 for s in row.stop), default=0)  # could still become a stop string
            ready = min(ready, len(visible) - hold) - stable.endswith("\ufffd")  # or a character still being decoded
        if ready > self.sent:
            row.on_text(stable[self.sent : ready])
            self.sent = ready


class RowEnds(StoppingCriteria):
    """Ends each row of a `generate` batch on its own (see `RowProgress`).

    `generate` keeps decoding a finished row with padding until every row is done, so a row's answer is the
    same whatever else shares its batch; the stopping criterion only tells `generate` which rows are done.
    """

    def __init__(self, rows: list[Row], tokenizer: PreTrainedTokenizerBase, start: int):
        self.progress, self.start = [RowProgress(row, tokenizer) for row in rows], start

    def __deepcopy__(self, memo: dict) -> RowEnds:
        """Itself: PEFT's prompt-learning `generate` deep-copies its kwargs, but this criterion is live state (what
        each row has streamed, and the `cancelled` events a server sets from another thread, which cannot be
        copied), and a copy would stream to, and be cancelled from, nobody."""
        return self

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [progress.update(input_ids[i, self.start :].tolist()) for i, progress in enumerate(self.progress)]
        return torch.tensor(done, device=input_ids.device)


@dataclass
class Answer:
    text: str
    tokens: int
    """Generated tokens counted for the answer (up to EOS or the row's budget)."""
    finish: str
    """'stop' (EOS or a stop string) or 'length' (the row's token budget ran out)."""


@torch.inference_mode()
def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[Row],
    *,
    decoder_only: bool,
    num_beams: int = 1,
    sampling: dict | None = None,
) -> list[Answer]:
    """One `generate` call for a batch of prompts, each ending on its own (see `RowEnds`); the answers in row order.

    Greedy unless `sampling` gives `temperature` / `top_p` (and a `seed`, set on torch's generator first).
    Beam search keeps every row to the batch's longest budget and cuts afterwards.
    """
    model.eval()
    device = next(model.parameters()).device
    batch = pad_batch(
        [{"input_ids": r.prompt, "attention_mask": [1] * len(r.prompt)} for r in rows],
        tokenizer.pad_token_id,
        left=decoder_only,
        device=device,
    )
    start = (
        batch["input_ids"].shape[1] if decoder_only else 1
    )  # an encoder-decoder's output starts with its start token
    ends = RowEnds(rows, tokenizer, start)
    if decoder_only and num_beams == 1:
        cache = packed_prefill(model, [r.prompt for r in rows], batch["input_ids"].shape[1])
        if cache is not None:
            batch[cache_argument(model)] = cache
    options = {"do_sample": False}
    if sampling:
        if sampling.get("seed") is not None:
            torch.manual_seed(sampling["seed"])
        options = {"do_sample": True, "temperature": sampling["temperature"], "top_p": sampling.get("top_p", 1.0)}
    generated = model.generate(
        **batch,
        max_new_tokens=max(r.max_new_tokens for r in rows),
        num_beams=num_beams,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([ends]) if num_beams == 1 else None,
        **options,
    )
    return [answer_of(generated[i, start:].tolist(), row, tokenizer) for i, row in enumerate(rows)]


def can_prefill_packed(model: PreTrainedModel, prompts: list[list[int]]) -> bool:
    """Packed prefill needs every cache layer to keep all its tokens (a sliding-window layer keeps only the last
    window of the packed row), the model's own key/value cache (prompt learning brings its own), and two tokens
    per prompt (one to prefill, one for `generate`)."""
    config = model.config.get_text_config(decoder=True)
    windowed = any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ())
    windowed = windowed or getattr(config, "sliding_window", None) is not None
    peft_config = getattr(model, "active_peft_config", None)
    prompt_learning = peft_config is not None and peft_config.is_prompt_learning
    return not windowed and not prompt_learning and min(len(p) for p in prompts) >= 2


def cache_argument(model: PreTrainedModel) -> str:
    """What the model's forward and `generate` call a ready key/value cache: `cache` from transformers 5.24, whose
    old name `past_key_values` still works but warns that it will go; `past_key_values` on earlier releases."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes it on
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def packed_prefill(model: PreTrainedModel, prompts: list[list[int]], width: int) -> DynamicCache | None:
    """The key/value cache of a left-padded batch of `width`-token prompts, all but each prompt's last token,
    computed as one packed row with attention per prompt: the prefill pays for the prompts' tokens, not the
    padding that lines them up (with prompts of mixed lengths, most of a padded batch's prefill). `generate` then
    runs the last tokens and decodes the batch together. None where the cache cannot be built this way."""
    if not can_prefill_packed(model, prompts):
        return None
    return padded_cache(prefill_states(model, [p[:-1] for p in prompts]), width - 1)


LayerStates = list[tuple[torch.Tensor, torch.Tensor]]
"""One sequence's cached keys and values, a (keys, values) pair per layer, each [1, heads, tokens, head_dim]."""


def prefill_states(model: PreTrainedModel, sequences: list[list[int]], **forward_options) -> list[LayerStates]:
    """Each sequence's key/value states, computed in one forward pass over the sequences packed into one row with
    attention per sequence (so no padding is computed); `forward_options` go to the model's forward (a PEFT
    model's `adapter_names`). Every sequence needs a token (see `can_prefill_packed`)."""
    packed = PackedCollator(0, Packing(None))([{"input_ids": ids} for ids in sequences])  # one row: nothing padded
    cache = DynamicCache()
    previous = model.config._attn_implementation
    model.set_attn_implementation(SDPA_VARLEN)
    try:
        model(
            input_ids=packed["input_ids"].to(model.device),
            position_ids=packed["position_ids"].to(model.device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(model): cache},
            **{key: packed[key] for key in VARLEN_KEYS},
            **forward_options,
        )
    finally:
        model.set_attn_implementation(previous)
    bounds = packed["cu_seq_lens_q"].tolist()
    return [
        [(layer.keys[:, :, start:end], layer.values[:, :, start:end]) for layer in cache.layers]
        for start, end in zip(bounds, bounds[1:])
    ]


def padded_cache(states: list[LayerStates], width: int) -> DynamicCache:
    """A batch's cache from each row's states, left-padded (with zeros, which the attention mask hides) to `width`
    tokens."""
    cache = DynamicCache()
    for index in range(len(states[0])):
        keys, values = (
            torch.cat([F.pad(row[index][part], (0, 0, width - row[index][part].shape[2], 0)) for row in states])
            for part in (0, 1)
        )
        cache.update(keys, values, index)
    return cache


def answer_of(ids: list[int], row: Row, tokenizer: PreTrainedTokenizerBase) -> Answer:
    """A row's answer from the tokens generated for it: cut at EOS, its budget and its first stop string."""
    eos = tokenizer.eos_token_id
    ended = eos is not None and eos in ids[: row.max_new_tokens]
    ids = ids[: ids.index(eos)] if ended else ids[: row.max_new_tokens]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    answer = cut_at_stop(text, row.stop)
    stopped = ended or answer != text.strip()
    return Answer(answer, len(ids), "stop" if stopped or len(ids) < row.max_new_tokens else "length")


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    decoder_only: bool,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    stop: list[str] = (),
) -> list[Answer]:
    """Greedy (or beam) answers to tokenised prompts, in input order, cut at EOS and at the first stop string, each
    with how it ended (what `stop_rate` counts); a progress bar counts the answers (`tunelab.eval.progress`)."""
    stop = [s for s in stop if s]
    answers: list[Answer] = [Answer("", 0, "length")] * len(prompts)
    with progress(len(prompts), "generating") as bar:
        for indices in batches_by_length(prompts, batch_size):
            rows = [Row(prompts[i], max_new_tokens, stop) for i in indices]
            batch = generate_rows(model, tokenizer, rows, decoder_only=decoder_only, num_beams=num_beams)
            for i, answer in zip(indices, batch):
                answers[i] = answer
            bar.update(len(indices))
    return answers


def generate_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], **options
) -> list[str]:
    """The texts of `generate_answers` (same keyword options)."""
    return [answer.text for answer in generate_answers(model, tokenizer, prompts, **options)]
