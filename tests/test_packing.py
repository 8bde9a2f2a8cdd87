"""Padding-free packing: packed examples never see each other, and the training loss is the padded batch's loss."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tunelab.data.encode import IGNORE_INDEX, PackedCollator, first_fit_decreasing, make_collator
from tunelab.train.trainer import CompletionLossTrainer

VOCAB = 97


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )


def tiny_gemma3():
    """Gemma 3 alternates sliding-window and global layers; a 4-token window makes the sliding mask matter."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config)


def examples(lengths: list[int], prompt: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for length in lengths:
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        out.append(
            {"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}
        )
    return out


def rows_of(batch: dict, features: list[dict]):
    """(row, start) of every example in a packed batch, found from where its position ids restart."""
    found = {}
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(positions) if p == 0]
        for start in starts:
            for index, feature in enumerate(features):
                ids = feature["input_ids"]
                if index not in found and batch["input_ids"][row, start : start + len(ids)].tolist() == ids:
                    found[index] = (row, start)
                    break
    return found


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("row_tokens", [64, 20], ids=["one-row", "several-rows"])
def test_packed_logits_equal_each_example_alone(build, row_tokens):
    model = build().eval()
    features = examples([7, 12, 5, 9, 3])
    batch = PackedCollator(pad_token_id=0, row_tokens=row_tokens)(features)
    assert "attention_mask" not in batch
    if row_tokens == 20:
        assert batch["input_ids"].shape[0] > 1  # the rows are bounded, so several rows and some padding
    located = rows_of(batch, features)
    assert sorted(located) == list(range(len(features)))
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers ignores packed boundaries
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for index, feature in enumerate(features):
            alone = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0]
            row, start = located[index]
            assert torch.allclose(packed[row, start : start + len(feature["input_ids"])], alone, atol=1e-5), index


def test_packing_would_leak_without_position_restarts():
    """The check above can fail: the same row with continuous positions lets later examples see earlier ones."""
    model = tiny_llama().eval()
    features = examples([7, 12])
    batch = PackedCollator(pad_token_id=0, row_tokens=64)(features)
    continuous = torch.arange(batch["input_ids"].shape[1])[None]
    located = rows_of(batch, features)
    later = max(located, key=lambda i: located[i][1])
    row, start = located[later]
    with torch.no_grad():
        leaked = model(input_ids=batch["input_ids"], position_ids=continuous, use_cache=False).logits[
            row, start : start + len(features[later]["input_ids"])
        ]
        alone = model(input_ids=torch.tensor([features[later]["input_ids"]])).logits[0]
    assert not torch.allclose(leaked, alone, atol=1e-3)


def test_packed_labels_mask_each_examples_first_token_and_the_padding():
    features = examples([4, 6, 9], prompt=0)  # labels on every token, even the first
    batch = PackedCollator(pad_token_id=0, row_tokens=10)(features)
    located = rows_of(batch, features)
    for index, (row, start) in located.items():
        assert batch["labels"][row, start] == IGNORE_INDEX  # never predicted from the previous example's last token
        assert (
            batch["labels"][row, start + 1 : start + len(features[index]["input_ids"])].tolist()
            == features[index]["input_ids"][1:]
        )
    scored = int((batch["labels"] != IGNORE_INDEX).sum())
    assert scored == sum(len(f["input_ids"]) - 1 for f in features)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_completion_loss_of_a_packed_batch_equals_the_padded_batch(build, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    model = build().eval()
    features = examples([7, 12, 5, 9, 3, 11])
    padded = make_collator("causal_lm", tokenizer)(features)
    packed = make_collator("causal_lm", tokenizer, packed_row_tokens=24)(features)
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    with torch.no_grad():
        assert torch.allclose(
            trainer.compute_loss(model, dict(packed)), trainer.compute_loss(model, dict(padded)), atol=1e-5
        )
    assert packed["input_ids"].numel() < padded["input_ids"].numel()


def test_first_fit_decreasing_places_every_item_once_within_capacity():
    lengths = [9, 3, 7, 1, 4, 8, 2, 6, 5, 12]
    bins = first_fit_decreasing(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == 5  # 57 tokens need at least 5 bins of 12; first-fit decreasing finds 5
    assert first_fit_decreasing([30, 4], 10) == [[0], [1]]  # an over-long item gets its own bin
