"""Attention over packed rows that follows the examples' boundaries instead of paying for the whole row.

A packed row holds several examples end to end (`tunelab.data.encode.PackedCollator`). Under plain `sdpa`,
transformers reads the position-id restarts and builds one dense T x T block-diagonal mask per row: correct,
but every position is scored against every other, and a mask stops SDPA from taking its causal kernel. The
collator therefore also sends flash-attention's varlen arguments (`cu_seq_lens_q/k`, `max_length_q/k`: where
each example starts in the flattened rows), and a run picks how attention uses them (`training.attention`):

- `flash_attention_2`: flash-attention's varlen kernel reads the boundaries directly (CUDA, `flash_attn`
  installed);
- `sdpa_varlen`: SDPA once per example with its causal kernel (no mask), so a row costs the sum of its
  examples' squared lengths, not the row's; written here, as no library offers varlen SDPA;
- `flex_attention`: transformers' document mask from the position ids, compiled into a block-sparse kernel;
- `sdpa`: the dense block-diagonal mask, the fallback every model supports.

Each is tested for equality with every example run alone (tests/test_packing.py).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from tunelab.config import ConfigError

SDPA_VARLEN = "sdpa_varlen"
IMPLEMENTATIONS = ("sdpa", SDPA_VARLEN, "flex_attention", "flash_attention_2")


def sdpa_varlen_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    prompt_sharing: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA per example of a packed batch, from the varlen boundaries; any other batch (padded,
    generation with a cache) goes to transformers' own SDPA with the mask it built.

    `prompt_sharing` (one row per segment: prompt length, first answer length; `tunelab.data.pair_rows`) marks
    segments holding a prompt and two answers, whose second answer must not see the first.

    query/key/value are (batch, heads, tokens, head_dim); the boundaries index the batch's rows flattened into
    one stream, as flash-attention's varlen kernel reads them (a row's padded tail is a segment of its own). The
    boundaries are read on the host, once per layer: free on a CPU, a sync on a GPU, which is why `auto` takes
    flash-attention there.
    """
    packed = cu_seq_lens_q is not None and cu_seq_lens_k is not None and query.shape[2] == key.shape[2]
    if not packed or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, tokens, _ = query.shape
    grouped = key.shape[1] != heads  # grouped-query attention: SDPA shares each key/value head, no copies
    pieces = []
    bounds = cu_seq_lens_q.tolist()
    shared = prompt_sharing.tolist() if prompt_sharing is not None else [[0, 0]] * (len(bounds) - 1)
    for start, end, (prompt, first_answer) in zip(bounds[:-1], bounds[1:], shared):
        row, first, last = start // tokens, start % tokens, start % tokens + end - start  # a segment stays in a row
        q, k, v = (t[row : row + 1, :, first:last] for t in (query, key, value))  # 4-D views: SDPA's fused kernel
        if first_answer:
            window = _second_answer_blind(end - start, prompt, first_answer, sliding_window, q.device)
        else:
            window = _sliding_mask(end - start, sliding_window, q.device)
        pieces.append(
            F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=window,
                dropout_p=dropout,
                scale=scaling,
                is_causal=window is None,
                enable_gqa=grouped,
            )
        )
    output = torch.cat(pieces, dim=2).view(heads, batch, tokens, value.shape[-1])
    return output.permute(1, 2, 0, 3).contiguous(), None  # (batch, tokens, heads, head_dim), as transformers wants


def _sliding_mask(length: int, window: int | None, device) -> torch.Tensor | None:
    """A sliding-window layer's causal band for one example, or None when the example fits in the window (plain
    causal attention, which SDPA runs without a mask). Keys within `window` positions back are seen, as
    transformers' `sliding_window_causal` has it."""
    if window is None or length <= window:
        return None
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < window)


def _second_answer_blind(length: int, prompt: int, first_answer: int, window: int | None, device) -> torch.Tensor:
    """The causal mask of a segment holding a prompt and two answers, the second answer's rows blind to the first
    answer's columns; a sliding layer's band counts the distance in positions (the second answer's continue from
    the prompt's end, as the first answer's do)."""
    index = torch.arange(length, device=device)
    in_second = index >= prompt + first_answer
    position = torch.where(in_second, index - first_answer, index)
    in_first = (index >= prompt) & (index < prompt + first_answer)
    allowed = (index[:, None] >= index[None, :]) & ~(in_second[:, None] & in_first[None, :])
    if window is not None:
        allowed &= position[:, None] - position[None, :] < window
    return allowed


AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(SDPA_VARLEN, sdpa_mask)  # padded batches and generation need SDPA's mask


PER_EXAMPLE = (SDPA_VARLEN, "flex_attention", "flash_attention_2")
"""Attention whose cost follows the examples in a row, not the row's length."""


def follows_example_boundaries(model: torch.nn.Module) -> bool:
    """Whether the model's attention costs each packed example its own length squared (so rows need no bound)."""
    return getattr(model.config, "_attn_implementation", None) in PER_EXAMPLE


class AttentionUnavailable(ConfigError):
    """The configured attention cannot train on this machine."""


def flash_attention_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str, compiled: bool = False) -> str:
    """Resolve 'auto': flash-attention's varlen kernel on a GPU that has it, else SDPA: on a CPU per example
    (BENCHMARKS.md, "Performance II"), and the dense mask on a GPU, where the per-example loop would
    sync the host every layer, or under torch.compile, where the loop would break the graph at every layer."""
    if requested != "auto":
        return requested
    if flash_attention_available():
        return "flash_attention_2"
    return "sdpa" if torch.cuda.is_available() or compiled else SDPA_VARLEN


def use_attention(model: torch.nn.Module, requested: str, compiled: bool = False) -> str:
    """Switch a decoder to the attention `training.attention` resolves to on this machine, and return its name;
    one that cannot train here is refused before training starts, saying what to choose instead."""
    choice = choose_attention(requested, compiled)
    if choice == "flash_attention_2" and not flash_attention_available():
        raise AttentionUnavailable(
            "training.attention: flash_attention_2 needs a CUDA GPU and the flash-attn package; "
            "use auto, sdpa_varlen or sdpa here"
        )
    if choice == "flex_attention" and not torch.cuda.is_available():
        raise AttentionUnavailable(
            f"training.attention: flex_attention cannot train on a CPU (PyTorch {torch.__version__} has no "
            "FlexAttention backward there); use auto, sdpa_varlen or sdpa"
        )
    model.set_attn_implementation(choice)
    return choice
