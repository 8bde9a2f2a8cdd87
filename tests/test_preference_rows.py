"""The preference batch layout is exact: each answer's log-probability from one packed row, its prompt read once
(`PairRows(shares_prompt=True)`, the second answer blind to the first through `prompt_sharing`), equals the
log-probability with a copy of the prompt per answer (`shares_prompt=False`) and that of the prompt and the answer
run alone through the plain model; and the gradients of one step are the same.

Real pairs (../shared/data/preference_demo, some with multi-turn prompts) through smollm2's ChatML template, on a
tiny random Llama and a tiny Gemma 3 whose sliding window is shorter than a segment (so the second answer's band,
counted in positions that continue from the prompt's end, is what is checked).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tunelab.config import DataConfig
from tunelab.data.encode import encode
from tunelab.data.pair_rows import SIDES, PairRows
from tunelab.kinds import kind_named
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.attention import SDPA_VARLEN
from tunelab.models.loading import load_tokenizer
from tunelab.records import Record
from tunelab.train.preference_trainer import answer_logps

from helpers import SHARED_DATA, TINY_SHAPE

PAIRS = 5
WINDOW = 8
"""Gemma 3's sliding window here: shorter than every prompt and answer below, so each band is cut somewhere."""
DATA = DataConfig(kind="preference", max_length=160, max_target_length=40)


@pytest.fixture(scope="module")
def encoded_pairs(chat_decoder) -> list[dict]:
    """The first pairs of preference_demo encoded as a preference run encodes them (prompt ids, each answer's ids
    and labels), with smollm2's tokenizer and chat template."""
    tokenizer = load_tokenizer(chat_decoder)
    kind_named("preference").prepare_tokenizer(tokenizer, DATA)
    path = SHARED_DATA / "preference_demo" / "train.jsonl"
    with path.open(encoding="utf-8") as lines:
        records = [Record(json.loads(line), f"{path}:{n}") for n, line in zip(range(1, PAIRS + 1), lines)]
    examples = encode("preference", "decoder", records, tokenizer, DATA).examples
    assert all(min(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) > WINDOW for e in examples)
    return examples


def vocabulary_of(examples: list[dict]) -> int:
    """The smallest vocabulary holding every token of `examples`: the tiny models' LM head costs no more."""
    return 1 + max(max(e["prompt_ids"] + e["chosen_ids"] + e["rejected_ids"]) for e in examples)


def tiny_llama_for(vocabulary: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_SHAPE, "vocab_size": vocabulary, "max_position_embeddings": 256}))


def tiny_gemma3_for(vocabulary: int, window: int = WINDOW) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        **{**TINY_SHAPE, "vocab_size": vocabulary, "max_position_embeddings": 256},
        head_dim=8,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config)


MODELS = {"llama": tiny_llama_for, "gemma3-sliding": tiny_gemma3_for}


def per_example_attention(build, vocabulary: int) -> torch.nn.Module:
    model = build(vocabulary).eval()
    model.set_attn_implementation(SDPA_VARLEN)
    return model


def alone_logps(model: torch.nn.Module, example: dict, side: str) -> torch.Tensor:
    """An answer's summed log-probability with its prompt run alone through the model (one unpacked sequence, the
    model's own attention and mask): log-softmax of the logits at the position before each labelled token."""
    prompt, answer, labels = example["prompt_ids"], example[f"{side}_ids"], example[f"{side}_labels"]
    logits = model(input_ids=torch.tensor([prompt + answer]), use_cache=False).logits[0].float()
    token_logps = torch.log_softmax(logits, dim=-1)
    scored = [
        token_logps[len(prompt) + offset - 1, label] for offset, label in enumerate(labels) if label != IGNORE_INDEX
    ]
    return torch.stack(scored).sum()


def scored_tokens(example: dict, side: str) -> int:
    return sum(label != IGNORE_INDEX for label in example[f"{side}_labels"])


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_shared_prompt_logps_equal_copied_prompts_and_each_answer_alone(model_name, encoded_pairs):
    vocabulary = vocabulary_of(encoded_pairs)
    model = per_example_attention(MODELS[model_name], vocabulary)
    shared_batch, copied_batch = (
        PairRows(shares_prompt=True)(encoded_pairs),
        PairRows(shares_prompt=False)(encoded_pairs),
    )
    prompt_tokens = sum(len(e["prompt_ids"]) for e in encoded_pairs)
    assert copied_batch["input_ids"].shape[1] - shared_batch["input_ids"].shape[1] == prompt_tokens  # read once
    with torch.no_grad():
        shared, copied = answer_logps(model, shared_batch), answer_logps(model, copied_batch)
        model.set_attn_implementation("sdpa")
        alone = {side: torch.stack([alone_logps(model, e, side) for e in encoded_pairs]) for side in SIDES}
    for side in SIDES:
        expected = alone[side]
        tolerance = {"rtol": 1e-5, "atol": 1e-5}
        assert torch.allclose(getattr(shared, side), expected, **tolerance), (side, getattr(shared, side), expected)
        assert torch.allclose(getattr(copied, side), expected, **tolerance), (side, getattr(copied, side), expected)
        counts = torch.tensor([scored_tokens(e, side) for e in encoded_pairs], dtype=torch.float32)
        assert torch.equal(getattr(shared, f"{side}_tokens"), counts)
        assert torch.equal(getattr(copied, f"{side}_tokens"), counts)


def test_the_sliding_window_changes_what_is_checked(encoded_pairs):
    """The Gemma 3 case checks the window: the same weights with a window longer than any segment score the answers
    otherwise."""
    vocabulary = vocabulary_of(encoded_pairs)
    batch = PairRows(shares_prompt=True)(encoded_pairs)
    with torch.no_grad():
        windowed = answer_logps(per_example_attention(tiny_gemma3_for, vocabulary), batch)
        unbounded = answer_logps(per_example_attention(lambda v: tiny_gemma3_for(v, window=4096), vocabulary), batch)
    assert not torch.allclose(windowed.rejected, unbounded.rejected, rtol=1e-3)


def gradients(model: torch.nn.Module, logps) -> dict[str, torch.Tensor]:
    """The gradients of a DPO-like step (chosen minus rejected summed log-probabilities) on every parameter."""
    model.zero_grad()
    (logps.chosen - logps.rejected).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_shared_prompt_gradients_equal_copied_prompts(model_name, encoded_pairs):
    vocabulary = vocabulary_of(encoded_pairs)
    model = per_example_attention(MODELS[model_name], vocabulary)
    shared = gradients(model, answer_logps(model, PairRows(shares_prompt=True)(encoded_pairs)))
    copied = gradients(model, answer_logps(model, PairRows(shares_prompt=False)(encoded_pairs)))
    assert shared.keys() == copied.keys() and len(shared) == len(list(model.parameters()))
    for name, gradient in shared.items():
        scale = copied[name].abs().max().clamp(min=1e-6)
        assert torch.allclose(gradient, copied[name], rtol=1e-4, atol=1e-5 * scale), name
