"""Tokenising a run's validated records into model inputs, once, and collating them into batches.

Each kind of example encodes its own records and pads its own batches (`tunelab.kinds`); what is shared by every
decoder lives here: padding-free packing, the scored positions, and the collators that carry a task's name and
loss weight (multi-task) or task id (multi-head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.kinds import kind_named
from tunelab.kinds.base import Family
from tunelab.kinds.encoding import IGNORE_INDEX, Encoded
from tunelab.records import Record


def encode(
    kind: str,
    family: Family,
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    labels: list[str] | None = None,
    with_target: bool = True,
) -> Encoded:
    """Tokenise records as their `kind` of example (its name) encodes them for a model of `family` (read from the
    model where the run is resolved); `with_target=False` for prediction inputs."""
    return kind_named(kind).encode(records, tokenizer, data, family, labels, with_target)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose lengths sum to at most `capacity` (an item longer than it gets a bin of its own).

    Longest first, each into the first bin with room: few bins, so little padding is left at the rows' ends.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if target is None:
            bins.append([])
            room.append(capacity)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= lengths[index]
    return bins


@dataclass(frozen=True)
class Packing:
    """How padding-free decoder batches are laid out: rows of at most `row_tokens` tokens, or, with None, every
    example of the batch in one row (for attention that follows example boundaries, where a longer row costs
    nothing extra); each row padded to a multiple of `width_multiple` (bucketed shapes for a compiled model)."""

    row_tokens: int | None
    width_multiple: int = 1


@dataclass
class PackedCollator:
    """Padding-free decoder batches: examples laid end to end in rows (`Packing`).

    Position ids restart at 0 for each example and no attention mask is sent, so
    transformers reads the restarts as sequence boundaries; the batch also carries
    flash-attention's varlen arguments, which let attention run per example
    (`tunelab.models.attention`). Either way no example attends to another (tested
    against each example run alone). Only each row's tail is padding, itself a
    separate segment with IGNORE_INDEX labels. Each example's first label is
    IGNORE_INDEX, so the last token of one example is never trained to predict the
    next example. Under the dense-mask fallback attention over a row costs its
    length squared, so rows are then bounded; per-example attention takes the whole
    batch as one row, with no padding at all.
    """

    pad_token_id: int
    packing: Packing

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Rows of packed examples; an example's `loss_weights` becomes the weight of each of its tokens."""
        lengths = [len(f["input_ids"]) for f in features]
        capacity, multiple = self.packing.row_tokens, self.packing.width_multiple
        rows = first_fit_decreasing(lengths, capacity) if capacity else [list(range(len(features)))]
        longest = max(sum(lengths[i] for i in row) for row in rows)
        width = -(-longest // multiple) * multiple
        if capacity:  # a bucket never widens a row past its bound (nor narrows an over-long example's row)
            width = max(longest, min(width, capacity))
        weighted = any("loss_weights" in f for f in features)
        input_ids, labels, positions, weights = [], [], [], []
        segments = []  # each example's length, then each row's padded tail, in flattened order
        for row in rows:
            ids, gold, pos, weight = [], [], [], []
            for i in row:
                example = features[i]
                ids += example["input_ids"]
                gold += [IGNORE_INDEX] + list(example.get("labels", example["input_ids"]))[1:]
                pos += range(lengths[i])
                weight += [float(example.get("loss_weights", 1.0))] * lengths[i]
                segments.append(lengths[i])
            tail = width - len(ids)
            if tail:
                segments.append(tail)
            input_ids.append(ids + [self.pad_token_id] * tail)
            labels.append(gold + [IGNORE_INDEX] * tail)
            positions.append(pos + list(range(tail)))
            weights.append(weight + [0.0] * tail)
        batch = {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            **varlen_arguments(segments),
        }
        if weighted:
            batch["loss_weights"] = torch.tensor(weights)
        return batch


def varlen_arguments(segments: list[int]) -> dict:
    """Flash-attention's varlen arguments for segments laid end to end in the flattened batch: where each starts
    (and where the last ends), and the longest, as `DataCollatorWithFlattening(return_flash_attn_kwargs=True)`
    sends them. Computed here, on the host, so no attention kernel has to find them on the device."""
    bounds = torch.tensor([0, *segments], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    longest = max(segments)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


TASK_KEY = "task"
"""The field naming an example's task, which per-task adapters route each batch by."""


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices, into the batch's rows x tokens, of the positions whose next token is scored: what the
    completion loss projects onto the vocabulary. Found by the collator, on the host, so the training step never
    waits on the device to learn how many there are."""
    rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns


class TaskCollator:
    """A text collator (padded or packed) that also carries each example's `loss_weights` (its task's weight in
    the loss, per example; per token when packed), its task name for routing, and the scored positions."""

    def __init__(self, base):
        self.base = base
        self.packed = isinstance(base, PackedCollator)

    def __call__(self, features: list[dict]) -> dict:
        tasks = [f.get(TASK_KEY) for f in features]
        weights = torch.tensor([float(f.get("loss_weights", 1.0)) for f in features])
        dropped = (TASK_KEY,) if self.packed else (TASK_KEY, "loss_weights")
        batch = self.base([{k: v for k, v in f.items() if k not in dropped} for f in features])
        if not self.packed:
            batch["loss_weights"] = weights
        batch["scored_positions"] = scored_positions(batch["labels"])
        if tasks[0] is not None:
            batch[TASK_KEY] = tasks
        return batch


class HeadCollator:
    """Multi-head batches: pads the token fields and stacks task ids, labels and loss weights."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        extra = {key: [f[key] for f in features] for key in ("task_ids", "labels", "loss_weights")}
        batch = self.pad([{k: v for k, v in f.items() if k not in extra} for f in features])
        batch["task_ids"] = torch.tensor(extra["task_ids"])
        batch["labels"] = torch.tensor(extra["labels"])
        batch["loss_weights"] = torch.tensor(extra["loss_weights"], dtype=torch.float32)
        return batch


COMPILED_WIDTH_MULTIPLE = 64
"""Packed rows for a compiled model are padded to a multiple of this many tokens, so few shapes recur."""


def make_collator(kind: str, family: Family, tokenizer: PreTrainedTokenizerBase, packing: Packing | None = None):
    """The collator of a `kind` of example (its name) for a model of `family`: the kind's dynamic padding per
    batch, or, given `packing`, padding-free packing of a decoder's batches (PackedCollator)."""
    if packing and family == "decoder":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PackedCollator(pad, packing)
    return kind_named(kind).collator(tokenizer, family)
