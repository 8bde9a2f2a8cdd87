"""Continuous batching: the rows being generated on one decoder, decoded together one token per step, which new
rows join at the next step (after their own prefill) and finished rows leave at once.

Why it is built this way: transformers' continuous-batching manager takes no adapter per request, so the batch
is tunelab's, kept to the few operations it needs on a plain key/value cache. The batch's cache is left-padded
(every row's next token lands in the same column): a joining row's prompt is prefilled as its own sequence
(several joining rows packed into one row with attention per prompt, as eval's generation does), its states
left-padded to the batch's width and stacked under the others; a leaving row's states are dropped, and the
columns no row uses any more are cut. The attention mask hides the padding, and each row's positions are its
own, so a greedy row's answer is the one it gets alone.

Rows on one shared PEFT model may each turn on a different LoRA adapter (PEFT's per-row `adapter_names`,
`__base__` for none). While every row of the batch uses one adapter, the adapter is folded into the base's
weights (`AdapterFolding`) and the batch runs at the merged model's speed.
"""

from __future__ import annotations

import random
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

Setting = Callable[[set[str]], AbstractContextManager[bool]]
"""Sets the model up for a forward pass over rows using these adapters; the context yields whether the rows'
adapters must be passed per row (`adapter_names`). See `AdapterFolding.using`."""


@dataclass
class Running:
    """One row in the batch: its request, how its answer is ending, and where it is."""

    row: Row
    adapter: str
    tokenizer: object
    """The row's own tokenizer (runs on one base may close their turns with different EOS tokens)."""
    sampling: dict | None
    done: object
    """Called with the row's `Answer` when it ends."""
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


class DecodeBatch:
    """The rows decoding together on one decoder model, set up for each forward pass by `setting`."""

    def __init__(self, model, setting: Setting):
        self.model, self.setting = model, setting
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
        states: list[LayerStates | None] = [None] * len(joining)
        for adapter in dict.fromkeys(running.adapter for running in joining):
            indices = [i for i, running in enumerate(joining) if running.adapter == adapter]
            for i, row_states in zip(indices, self._prefill([joining[i].row.prompt[:-1] for i in indices], adapter)):
                states[i] = row_states
        lengths = [len(running.row.prompt) - 1 for running in joining]
        self._stack(states, lengths)
        self.rows.extend(joining)

    def _prefill(self, sequences: list[list[int]], adapter: str) -> list[LayerStates | None]:
        """The states of sequences that use one adapter: packed into one forward pass where the model allows it,
        else one sequence at a time. A one-token prompt has nothing to prefill (None)."""
        wanted = [i for i, ids in enumerate(sequences) if ids]
        states: list[LayerStates | None] = [None] * len(sequences)
        if not wanted:
            return states
        with self.setting({adapter}) as per_row:
            options = {"adapter_names": [adapter]} if per_row else {}
            if can_prefill_packed(self.model, [[0, *sequences[i]] for i in wanted]):
                for i, row_states in zip(
                    wanted, prefill_states(self.model, [sequences[i] for i in wanted], **options)
                ):
                    states[i] = row_states
            else:
                for i in wanted:
                    cache = DynamicCache()
                    ids = torch.tensor([sequences[i]], device=self.device)
                    cached = {cache_argument(self.model): cache}
                    self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **cached, **options)
                    states[i] = [(layer.keys, layer.values) for layer in cache.layers]
        return states

    def _stack(self, states: list[LayerStates | None], lengths: list[int]) -> None:
        """Add the joining rows' states under the batch's, every row left-padded to the widest."""
        width = max([*lengths, 0 if self.mask is None else self.mask.shape[1]])
        if width == 0:  # nothing cached yet, nor for the joining rows: the first step starts the cache
            self.mask = torch.zeros(len(self.rows) + len(states), 0, dtype=torch.long, device=self.device)
            return
        template = next((s for s in states if s is not None), None) or self._layer_states(0)
        empty = [(k[:, :, :0], v[:, :, :0]) for k, v in template]
        joined = padded_cache([s if s is not None else empty for s in states], width)
        masks = [
            torch.cat([torch.zeros(width - n, dtype=torch.long), torch.ones(n, dtype=torch.long)]) for n in lengths
        ]
        joined_mask = torch.stack(masks).to(self.device)
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
