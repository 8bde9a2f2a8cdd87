"""Padding-free packing: packed examples never see each other, and the training loss is the padded batch's loss."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunelab.data.encode import VARLEN_KEYS, PackedCollator, Packing, first_fit_decreasing, make_collator
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.models.attention import AttentionUnavailable, flash_attention_available, use_attention
from tunelab.train.trainer import CompletionLossTrainer

from helpers import SHARED_DATA, TINY_SHAPE, tiny_gemma3, tiny_llama
from helpers import TINY_VOCAB as VOCAB

needs_flash = pytest.mark.skipif(not flash_attention_available(), reason="flash-attention needs CUDA and flash-attn")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention trains on CUDA only")
ATTENTION = [
    "sdpa",
    "sdpa_varlen",
    pytest.param("flash_attention_2", marks=needs_flash),
]
FORWARD_ATTENTION = [*ATTENTION, "flex_attention"]  # FlexAttention's forward runs on a CPU, its backward does not
FLEX_CPU_ROWS = 20
"""The one row layout FlexAttention is checked on without CUDA: each shape compiles anew (a minute of CI each), and
several rows with padded tails holds the other layouts' cases."""


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


def on_device(model, batch: dict) -> tuple:
    """The model and the batch's tensors on the GPU when the attention path needs one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def packed_forward(model, batch: dict):
    """A packed batch as the completion loss sends it: position ids and varlen arguments, no KV cache (with a
    cache transformers ignores packed boundaries)."""
    varlen = {key: batch[key] for key in VARLEN_KEYS}
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **varlen)


@pytest.mark.parametrize("attention", FORWARD_ATTENTION)
@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("row_tokens", [64, 20, None], ids=["one-row", "several-rows", "unbounded"])
def test_packed_logits_equal_each_example_alone(build, row_tokens, attention):
    if attention == "flex_attention" and not torch.cuda.is_available() and row_tokens != FLEX_CPU_ROWS:
        pytest.skip("FlexAttention on a CPU is checked on the several-rows layout only (each shape compiles anew)")
    # PyTorch 2.13's CPU FlexAttention template emits C++ that does not compile once dynamo recompiles it for a
    # second shape with dynamic sizes; static shapes (one compile per shape) avoid that
    static = attention == "flex_attention" and not torch.cuda.is_available()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False) if static else contextlib.nullcontext():
        check_packed_logits(build, row_tokens, attention)


def check_packed_logits(build, row_tokens: int, attention: str) -> None:
    model = build().eval()
    model.set_attn_implementation(attention)
    features = examples([7, 12, 5, 9, 3])
    batch = PackedCollator(pad_token_id=0, packing=Packing(row_tokens))(features)
    assert "attention_mask" not in batch
    if row_tokens == 20:
        assert batch["input_ids"].shape[0] > 1  # the rows are bounded, so several rows and some padding
    located = rows_of(batch, features)
    assert sorted(located) == list(range(len(features)))
    model, batch = on_device(model, batch)
    with torch.no_grad():
        packed = packed_forward(model, batch).logits
        for index, feature in enumerate(features):
            alone = model(input_ids=torch.tensor([feature["input_ids"]], device=packed.device)).logits[0]
            row, start = located[index]
            assert torch.allclose(packed[row, start : start + len(feature["input_ids"])], alone, atol=1e-5), index


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rows_follow_the_attention_and_bucket_for_a_compiled_model(compiled, tmp_path):
    """Per-example attention takes the whole batch as one row (no padding); the dense mask keeps rows bounded;
    a compiled model gets widths in multiples of 64."""
    from tunelab.config import build_config
    from tunelab.train.objectives.text_to_text import packing_of

    config = build_config(
        {
            "name": "rows",
            "task": "causal_lm",
            "output_dir": str(tmp_path),
            "model": {"name": "smollm2-135m-instruct"},
            "data": {"train": "train.jsonl", "prompt_template": "{q}", "response_field": "a", "max_length": 48},
            "training": {"compile": compiled},
        }
    )
    multiple = 64 if compiled else 1
    model = tiny_llama()
    model.set_attn_implementation("sdpa_varlen")
    assert packing_of(model, config) == Packing(None, multiple)
    model.set_attn_implementation("sdpa")
    assert packing_of(model, config) == Packing(48, multiple)
    features = examples([7, 12, 5, 9, 3])
    whole = PackedCollator(pad_token_id=0, packing=Packing(None))(features)
    assert whole["input_ids"].shape == (1, 36)  # every token, not one of padding
    bucketed = PackedCollator(pad_token_id=0, packing=Packing(None, 64))(features)
    assert bucketed["input_ids"].shape == (1, 64) and bucketed["cu_seq_lens_q"].tolist()[-2:] == [36, 64]
    assert PackedCollator(pad_token_id=0, packing=Packing(20, 64))(features)["input_ids"].shape[1] == 20


def test_varlen_arguments_mark_every_example_and_each_rows_padded_tail():
    features = examples([7, 12, 5, 9, 3])
    batch = PackedCollator(pad_token_id=0, packing=Packing(20))(features)
    rows, width = batch["input_ids"].shape
    bounds = batch["cu_seq_lens_q"].tolist()
    flat_positions = batch["position_ids"].reshape(-1).tolist()
    assert bounds[0] == 0 and bounds[-1] == rows * width
    assert [i for i, p in enumerate(flat_positions) if p == 0] == bounds[:-1]  # a segment starts at every restart
    assert batch["max_length_q"] == max(b - a for a, b in zip(bounds, bounds[1:])) == 12
    assert torch.equal(batch["cu_seq_lens_k"], batch["cu_seq_lens_q"])
    assert batch["cu_seq_lens_q"].dtype == torch.int32  # what flash-attention's varlen kernel takes


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_per_example_attention_has_the_dense_masks_gradients(build):
    """sdpa_varlen trains the same model: the packed batch's gradients equal those under the dense mask."""
    features = examples([7, 12, 5, 9, 3, 11])
    batch = PackedCollator(pad_token_id=0, packing=Packing(24))(features)
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    gradients = {}
    for attention in ("sdpa", "sdpa_varlen"):
        model = build()
        model.set_attn_implementation(attention)
        trainer.compute_loss(model, dict(batch)).backward()
        gradients[attention] = [p.grad for p in model.parameters()]
    for dense, varlen in zip(gradients["sdpa"], gradients["sdpa_varlen"]):
        assert torch.allclose(dense, varlen, atol=1e-6)


def test_per_example_attention_runs_one_causal_kernel_per_example_without_a_mask(monkeypatch):
    """The check above could pass by falling back to the dense mask; this one sees the per-example calls."""
    import tunelab.models.attention as attention

    calls = []
    real = attention.F.scaled_dot_product_attention

    def counting(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append((query.shape[-2], attn_mask is None, is_causal))
        return real(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    model = tiny_llama().eval()
    model.set_attn_implementation("sdpa_varlen")
    features = examples([7, 12, 5])
    batch = PackedCollator(pad_token_id=0, packing=Packing(64))(features)
    with torch.no_grad():
        packed_forward(model, batch)
    layers = model.config.num_hidden_layers
    assert calls == [(7, True, True), (12, True, True), (5, True, True)] * layers or sorted(calls) == sorted(
        [(length, True, True) for length in batch["cu_seq_lens_q"].diff().tolist()] * layers
    )


def test_attention_that_cannot_train_here_is_refused_before_training():
    model = tiny_llama()
    if not torch.cuda.is_available():
        with pytest.raises(AttentionUnavailable, match="flex_attention cannot train on a CPU"):
            use_attention(model, "flex_attention")
    if not flash_attention_available():
        with pytest.raises(AttentionUnavailable, match="flash-attn"):
            use_attention(model, "flash_attention_2")
    expected = (
        "flash_attention_2" if flash_attention_available() else "sdpa" if torch.cuda.is_available() else "sdpa_varlen"
    )
    assert use_attention(model, "auto") == expected
    assert model.config._attn_implementation == expected


def test_packing_would_leak_without_position_restarts():
    """The check above can fail: the same row with continuous positions lets later examples see earlier ones."""
    model = tiny_llama().eval()
    features = examples([7, 12])
    batch = PackedCollator(pad_token_id=0, packing=Packing(64))(features)
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
    batch = PackedCollator(pad_token_id=0, packing=Packing(10))(features)
    located = rows_of(batch, features)
    for index, (row, start) in located.items():
        assert batch["labels"][row, start] == IGNORE_INDEX  # never predicted from the previous example's last token
        assert (
            batch["labels"][row, start + 1 : start + len(features[index]["input_ids"])].tolist()
            == features[index]["input_ids"][1:]
        )
    scored = int((batch["labels"] != IGNORE_INDEX).sum())
    assert scored == sum(len(f["input_ids"]) - 1 for f in features)


@pytest.mark.parametrize("attention", [*ATTENTION, pytest.param("flex_attention", marks=needs_cuda)])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_completion_loss_of_a_packed_batch_equals_the_padded_batch(build, attention, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    model = build().eval()
    model.set_attn_implementation(attention)
    features = examples([7, 12, 5, 9, 3, 11])
    padded = make_collator("generation", "decoder", tokenizer)(features)
    packed = make_collator("generation", "decoder", tokenizer, Packing(24))(features)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    model, packed = on_device(model, packed)
    model, padded = on_device(model, padded)
    with torch.no_grad():
        assert torch.allclose(trainer.compute_loss(model, packed), trainer.compute_loss(model, padded), atol=1e-5)


CHAT_CONVERSATIONS = 8
"""Real conversations from the shared chat data: several assistant turns each, of uneven lengths."""


def chat_examples(tokenizer) -> list[dict]:
    """The first conversations of the shared chat data, encoded by the chat kind (each assistant turn and its
    closing token trained, nothing else)."""
    from tunelab.config import DataConfig
    from tunelab.data.encode import encode
    from tunelab.records import Record

    path = SHARED_DATA / "chat" / "train.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()[:CHAT_CONVERSATIONS]
    records = [Record(json.loads(line), f"{path}:{number}") for number, line in enumerate(lines, 1)]
    return encode("chat", "decoder", records, tokenizer, DataConfig(kind="chat", max_length=512)).examples


@pytest.mark.parametrize(
    ("attention", "row_tokens"), [("sdpa_varlen", None), ("sdpa", 1024)], ids=["one-row", "bounded-rows"]
)
def test_packing_keeps_every_conversations_mask_and_its_loss(attention, row_tokens):
    """Packed conversations train the same tokens, with the same loss, as the padded batch: packing drops no mask."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.models.loading import prepare

    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    tokenizer.padding_side = "right"
    features = chat_examples(tokenizer)
    torch.manual_seed(0)
    shape = {**TINY_SHAPE, "vocab_size": len(tokenizer), "max_position_embeddings": 512}
    model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
    model.set_attn_implementation(attention)
    padded = make_collator("chat", "decoder", tokenizer)(features)
    packed = make_collator("chat", "decoder", tokenizer, Packing(row_tokens))(features)
    if row_tokens:
        assert packed["input_ids"].shape[0] > 1  # several rows: the bound is felt
    else:
        assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].numel() < padded["input_ids"].numel()
    trained = sum(sum(label != IGNORE_INDEX for label in f["labels"][1:]) for f in features)
    assert trained > 0 and all(f["labels"][0] == IGNORE_INDEX for f in features)
    assert int((padded["labels"] != IGNORE_INDEX).sum()) == int((packed["labels"] != IGNORE_INDEX).sum()) == trained
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    with torch.no_grad():
        assert torch.allclose(trainer.compute_loss(model, packed), trainer.compute_loss(model, padded), atol=1e-5)


def test_first_fit_decreasing_places_every_item_once_within_capacity():
    lengths = [9, 3, 7, 1, 4, 8, 2, 6, 5, 12]
    bins = first_fit_decreasing(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == 5  # 57 tokens need at least 5 bins of 12; first-fit decreasing finds 5
    assert first_fit_decreasing([30, 4], 10) == [[0], [1]]  # an over-long item gets its own bin


class HostSyncs(TorchDispatchMode):
    """Counts the operations that make the host wait for the device: reading a scalar (`.item()`, `int()`, `if t`)
    and finding nonzero entries (boolean indexing), whose output size only the device knows."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.SYNCING
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_the_completion_loss_adds_no_host_sync_to_the_forward(weighted, tokenizer_dir):
    """On a GPU every sync stalls the step; the collator finds the scored positions on the host, so the loss adds
    none to those transformers' own forward makes (counted here on the CPU, where the same ops would sync)."""
    from transformers import AutoTokenizer

    from tunelab.data.encode import TaskCollator

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_llama()
    model.set_attn_implementation("sdpa_varlen")
    features = [{**e, "loss_weights": 2.0} if weighted else e for e in examples([7, 12, 5, 9, 3, 11])]
    batch = TaskCollator(make_collator("generation", "decoder", tokenizer, Packing(24)))(features)
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    with HostSyncs() as forward_only:
        model(
            input_ids=batch["input_ids"],
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
            position_ids=batch["position_ids"],
            **{key: batch[key] for key in VARLEN_KEYS},
        )
    with HostSyncs() as with_loss:
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    assert with_loss.count == forward_only.count
    without_positions = {k: v for k, v in batch.items() if k != "scored_positions"}
    with HostSyncs() as found_in_the_loss:  # the check can fail: finding the positions in the loss syncs
        assert torch.allclose(trainer.compute_loss(model, without_positions), loss)
    assert found_in_the_loss.count > forward_only.count
