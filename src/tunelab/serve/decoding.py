"""Continuous batching: the rows being generated on one decoder, decoded together one token per step, which new
rows join at the next step (after their own prefill) and finished rows leave at once.

Why it is built this way: transformers' continuous-batching manager takes no adapter per request, so the batch
is tunelab's, kept to the few operations it needs on a plain key/value cache. The batch's cache is left-padded
(every row's next token lands in the same column): a joining row's prompt is prefilled as its own sequence
(several joining rows packed into one row with attention per prompt, as eval's generation does), its states
left-padded to the batch's width and stacked under the others; a leaving row's states are dropped, and the
columns no row uses any more are cut. The attention mask hides the padding, and each row's positions are its
own, so a greedy row's answer is the one it gets alone. A prompt whose beginning was prefilled before starts
from those states (`PrefixCache`), only its rest computed.

Rows on one shared PEFT model may each turn on a different LoRA adapter (PEFT's per-row `adapter_names`,
`__base__` for none). While every row of the batch uses one adapter, the adapter is folded into the base's
weights (`AdapterFolding`) and the batch runs at the merged model's speed.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

from tunelab.eval.generate import (
    LayerStates,
    Row,
    RowProgress,
    answer_of,
    cache_argument,
    can_prefill_packed,
    padded_cache,
    prefill_states,
)

Setting = Callable[..., AbstractContextManager[bool]]
"""`setting(adapters, decoding=True)` sets the model up for a forward pass over rows using these adapters (a
decoding step, or with `decoding=False` a prefill); the context yields whether the rows' adapters must be passed
per row (`adapter_names`). See `AdapterFolding.using`."""


@dataclass
class Running:
    """One row in the batch: its request, how its answer is ending, and where it is."""

    row: Row
    adapter: str
    tokenizer: object
    """The row's own tokenizer (runs on one base may close their turns with different EOS tokens)."""
    sampling: dict | None
    done: Callable[[object], None]
    """Called with the row's `Answer` when it ends, or with the error that ended it."""
    generated: list[int] = field(default_factory=list)
    progress: RowProgress | None = None
    generator: torch.Generator | None = None
    next_input: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self.progress = RowProgress(self.row, self.tokenizer)
        self.next_input, self.position = self.row.prompt[-1], len(self.row.prompt) - 1
        if self.sampling:
            seed = self.sampling.get("seed")
            self.generator = torch.Generator().manual_seed(random.getrandbits(63) if seed is None else seed)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token: the most likely one, or, sampling, one drawn with the row's own seeded generator (so a
        seeded request reproduces whatever shares its batch)."""
        if not self.sampling:
            return int(logits.argmax())
        scores = logits.float().unsqueeze(0)
        scores = TemperatureLogitsWarper(self.sampling["temperature"])(None, scores)
        scores = TopPLogitsWarper(self.sampling.get("top_p", 1.0))(None, scores)
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))


@dataclass
class Prefilled:
    """A joining row's cached states (None: nothing to cache yet) and which of their tokens attention reads."""

    states: LayerStates | None
    mask: list[int]


class PrefixCache:
    """The key/value states of prompt beginnings seen before, per adapter, reused by later prompts that begin the
    same way (vLLM's automatic prefix caching, in whole blocks of `BLOCK` tokens): a chat server's prompts open
    with the same system prompt and template tokens, and on a CPU their prefill is most of a short request's
    cost. Least recently used beginnings are dropped past `capacity` cached tokens."""

    BLOCK = 8

    def __init__(self, capacity: int):
        self.capacity, self.tokens = capacity, 0
        self.entries: OrderedDict[tuple, LayerStates] = OrderedDict()

    def longest(self, adapter: str, ids: list[int]) -> tuple[int, LayerStates | None]:
        """The longest cached beginning of `ids` (its length and states), or (0, None)."""
        for length in range(len(ids) // self.BLOCK * self.BLOCK, 0, -self.BLOCK):
            key = (adapter, tuple(ids[:length]))
            if key in self.entries:
                self.entries.move_to_end(key)
                return length, self.entries[key]
        return 0, None

    def keep(self, adapter: str, ids: list[int], states: LayerStates) -> None:
        """Cache every whole-block beginning of `ids` (views of one copy of its states)."""
        longest = len(ids) // self.BLOCK * self.BLOCK
        if not longest or (adapter, tuple(ids[:longest])) in self.entries:
            return
        copied = [(keys[:, :, :longest].clone(), values[:, :, :longest].clone()) for keys, values in states]
        for length in range(self.BLOCK, longest + 1, self.BLOCK):
            key = (adapter, tuple(ids[:length]))
            if key not in self.entries:
                self.entries[key] = [(keys[:, :, :length], values[:, :, :length]) for keys, values in copied]
                self.tokens += length
        while self.tokens > self.capacity and self.entries:
            (_, dropped), _ = self.entries.popitem(last=False)
            self.tokens -= len(dropped)

    def forget(self, adapter: str) -> None:
        """Drop an adapter's beginnings (it is being unloaded: a new adapter of its name must not reuse them)."""
        for key in [key for key in self.entries if key[0] == adapter]:
            self.tokens -= len(key[1])
            del self.entries[key]


class DecodeBatch:
    """The rows decoding together on one decoder model, set up for each forward pass by `setting`, reusing the
    states of prompt beginnings in `prefixes`."""

    def __init__(self, model, setting: Setting, prefixes: PrefixCache | None = None):
        self.model, self.setting, self.prefixes = model, setting, prefixes
        self.rows: list[Running] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.device = next(model.parameters()).device

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, joining: list[Running]) -> None:
        """Prefill the joining rows (all but each prompt's last token, which the next step runs) and add them to
        the batch."""
        prefilled: list[Prefilled] = [Prefilled(None, [])] * len(joining)
        for adapter in dict.fromkeys(running.adapter for running in joining):
            indices = [i for i, running in enumerate(joining) if running.adapter == adapter]
            for i, row in zip(indices, self._prefill([joining[i].row.prompt[:-1] for i in indices], adapter)):
                prefilled[i] = row
        self._stack(prefilled)
        self.rows.extend(joining)

    def _prefill(self, sequences: list[list[int]], adapter: str) -> list[Prefilled]:
        """The states of sequences that use one adapter. A sequence whose beginning is in the prefix cache has only
        the rest computed (those sharing a cached beginning in one forward pass); the others are packed into one
        forward pass where the model allows it, else computed one at a time, and their beginnings cached. A
        one-token prompt has nothing to prefill."""
        prefilled = [Prefilled(None, [])] * len(sequences)
        packable = can_prefill_packed(self.model, [[0, 0]])
        cached = {}
        if packable and self.prefixes is not None:
            for i, ids in enumerate(sequences):
                length, states = self.prefixes.longest(adapter, ids)
                if length:
                    cached.setdefault((length, tuple(ids[:length])), (states, []))[1].append(i)
        fresh = [i for i, ids in enumerate(sequences) if ids and not any(i in group for _, group in cached.values())]
        with self.setting({adapter}, decoding=False) as per_row:
            for (length, _), (states, group) in cached.items():
                for i, row in zip(
                    group, self._continue_from(states, length, [sequences[i] for i in group], adapter, per_row)
                ):
                    prefilled[i] = row
            if not fresh:
                return prefilled
            options = {"adapter_names": [adapter]} if per_row else {}
            if packable:
                computed = prefill_states(self.model, [sequences[i] for i in fresh], **options)
            else:
                computed = [self._alone(sequences[i], options) for i in fresh]
        for i, states in zip(fresh, computed):
            prefilled[i] = Prefilled(states, [1] * len(sequences[i]))
            if packable and self.prefixes is not None:
                self.prefixes.keep(adapter, sequences[i], states)
        return prefilled

    def _alone(self, ids: list[int], options: dict) -> LayerStates:
        """One sequence's states, computed by itself (a model whose attention a packed row would break)."""
        cache = DynamicCache()
        self.model(
            input_ids=torch.tensor([ids], device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(self.model): cache},
            **options,
        )
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _continue_from(
        self, prefix: LayerStates, length: int, sequences: list[list[int]], adapter: str, per_row: bool
    ) -> list[Prefilled]:
        """The states of sequences that all begin with the same cached `length` tokens: the rest of each computed in
        one forward pass over the cached states, the rests left-padded, so each row's states are the prefix, a gap
        the mask hides, and its rest (positions continue from the prefix, so the gap changes nothing)."""
        rests = [ids[length:] for ids in sequences]
        width = max(map(len, rests))
        if width == 0:
            return [Prefilled(prefix, [1] * length) for _ in sequences]
        count = len(sequences)
        cache = DynamicCache()
        for index, (keys, values) in enumerate(prefix):
            cache.update(
                keys.expand(count, -1, -1, -1).contiguous(), values.expand(count, -1, -1, -1).contiguous(), index
            )
        masks = [[1] * length + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
        ids = [[0] * (width - len(rest)) + rest for rest in rests]
        positions = [[length] * (width - len(rest)) + list(range(length, length + len(rest))) for rest in rests]
        self.model(
            input_ids=torch.tensor(ids, device=self.device),
            attention_mask=torch.tensor(masks, device=self.device),
            position_ids=torch.tensor(positions, device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(self.model): cache},
            **({"adapter_names": [adapter] * count} if per_row else {}),
        )
        return [
            Prefilled([(layer.keys[i : i + 1], layer.values[i : i + 1]) for layer in cache.layers], masks[i])
            for i in range(count)
        ]

    def _stack(self, prefilled: list[Prefilled]) -> None:
        """Add the joining rows' states under the batch's, every row left-padded to the widest."""
        width = max([*(len(row.mask) for row in prefilled), 0 if self.mask is None else self.mask.shape[1]])
        if width == 0:  # nothing cached yet, nor for the joining rows: the first step starts the cache
            self.mask = torch.zeros(len(self.rows) + len(prefilled), 0, dtype=torch.long, device=self.device)
            return
        template = next((row.states for row in prefilled if row.states is not None), None) or self._layer_states(0)
        empty = [(k[:, :, :0], v[:, :, :0]) for k, v in template]
        joined = padded_cache([row.states if row.states is not None else empty for row in prefilled], width)
        joined_mask = torch.tensor(
            [[0] * (width - len(row.mask)) + row.mask for row in prefilled], dtype=torch.long, device=self.device
        )
        if self.rows:
            current = self._widened(width)
            joined = _concatenated(current, joined)
            joined_mask = torch.cat([torch.nn.functional.pad(self.mask, (width - self.mask.shape[1], 0)), joined_mask])
        self.cache, self.mask = joined, joined_mask

    def _layer_states(self, row: int) -> LayerStates:
        return [(layer.keys[row : row + 1], layer.values[row : row + 1]) for layer in self.cache.layers]

    def _widened(self, width: int) -> DynamicCache:
        """The batch's cache left-padded to `width` tokens (rows are admitted only between steps, so a batch with
        rows has a cache)."""
        return padded_cache([self._layer_states(i) for i in range(len(self.rows))], width)

    @torch.inference_mode()
    def step(self) -> list[Running]:
        """One token for every row; the rows that ended (answered through their `done`) leave the batch."""
        ids = torch.tensor([[r.next_input] for r in self.rows], device=self.device)
        positions = torch.tensor([[r.position] for r in self.rows], device=self.device)
        mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=self.device)], dim=1)
        cache = self.cache if self.cache is not None else DynamicCache()
        with self.setting({r.adapter for r in self.rows}) as per_row:
            options = {"adapter_names": [r.adapter for r in self.rows]} if per_row else {}
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(self.model): cache},
                **options,
            ).logits[:, -1]
        self.cache, self.mask = cache, mask
        ended = []
        for i, running in enumerate(self.rows):
            token = running.choose(logits[i])
            running.generated.append(token)
            running.next_input, running.position = token, running.position + 1
            if running.progress.update(running.generated):
                ended.append(i)
        return self._leave(ended)

    def _leave(self, ended: list[int]) -> list[Running]:
        """Drop the ended rows' states and the columns no remaining row uses; answer the ended rows."""
        if not ended:
            return []
        gone = [self.rows[i] for i in ended]
        keep = [i for i in range(len(self.rows)) if i not in set(ended)]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
        else:
            index = torch.tensor(keep, device=self.device)
            self.mask = self.mask[index]
            first = int(self.mask.any(dim=0).nonzero()[0]) if self.mask.any() else self.mask.shape[1]
            self.mask = self.mask[:, first:]
            trimmed = DynamicCache()
            for layer_index, layer in enumerate(self.cache.layers):
                trimmed.update(layer.keys[index, :, first:], layer.values[index, :, first:], layer_index)
            self.cache = trimmed
        for running in gone:
            running.done(answer_of(running.generated, running.row, running.tokenizer))
        return gone


def _concatenated(first: DynamicCache, second: DynamicCache) -> DynamicCache:
    """Two batches' caches of one width, stacked along the batch."""
    joined = DynamicCache()
    for index, (a, b) in enumerate(zip(first.layers, second.layers)):
        joined.update(torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values]), index)
    return joined
