"""Bottleneck adapters: where they go, that they start as the identity, train alone, and save/load exactly."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
)

from tunelab.config import build_config
from tunelab.methods import MethodError, adapter

from helpers import descend

FAMILIES = {
    "classification": (
        "tiny_encoder",
        lambda path: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
    ),
    "causal_lm": ("tiny_decoder", AutoModelForCausalLM.from_pretrained),
    "seq2seq": ("tiny_seq2seq", AutoModelForSeq2SeqLM.from_pretrained),
}

ADAPTED_PROJECTIONS = {
    # 2-layer models; T5 has 2 encoder blocks (self-attention, FFN) and 2 decoder blocks (self-, cross-attention, FFN)
    ("classification", "houlsby"): 4,
    ("classification", "pfeiffer"): 2,
    ("causal_lm", "houlsby"): 4,
    ("causal_lm", "pfeiffer"): 2,
    ("seq2seq", "houlsby"): 10,
    ("seq2seq", "pfeiffer"): 4,
}

ADAPTER_TENSORS = ("adapter.down.weight", "adapter.down.bias", "adapter.up.weight", "adapter.up.bias")


def adapter_config(task: str, model_dir: str, placement: str = "houlsby"):
    data = {"train": "unused.jsonl"}
    if task != "classification":
        data["prompt_template"] = "{question}"
    return build_config(
        {
            "task": task,
            "model": {"name": model_dir},
            "data": data,
            "method": {
                "name": "adapter",
                "adapter": {"placement": placement, "reduction_factor": 4, "activation": "gelu"},
            },
        }
    )


def load_base(request, task: str, seed: int = 0) -> tuple[nn.Module, str]:
    fixture, loader = FAMILIES[task]
    model_dir = request.getfixturevalue(fixture)
    torch.manual_seed(seed)  # a classifier's new head is initialised at random
    return loader(model_dir).eval(), model_dir  # eval: no dropout, so outputs compare exactly


def fixed_batch(task: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (4, 12), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if task == "classification":
        batch["labels"] = torch.tensor([0, 1, 0, 1])
    elif task == "causal_lm":
        batch["labels"] = input_ids
    else:
        batch["labels"] = torch.randint(1000, 2000, (4, 6), generator=generator)
    return batch


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("task", list(FAMILIES))
def test_apply_adapts_the_right_projections_trains_only_adapters_and_starts_as_the_base(request, task, placement):
    model, model_dir = load_base(request, task)
    batch = fixed_batch(task)
    base_logits = logits(model, batch)

    adapter.apply(model, adapter_config(task, model_dir, placement))

    adapted = [name for name, module in model.named_modules() if isinstance(module, adapter.BottleneckAdapterLinear)]
    assert len(adapted) == ADAPTED_PROJECTIONS[task, placement]
    if placement == "pfeiffer":
        assert not any("attn" in name.lower() or "attention" in name.lower() for name in adapted)
    expected = {f"{name}.{tensor}" for name in adapted for tensor in ADAPTER_TENSORS}
    if task == "classification":
        expected |= {"classifier.weight", "classifier.bias"}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    assert all(model.get_submodule(name).adapter.down.out_features == 32 // 4 for name in adapted)
    assert torch.allclose(logits(model, batch), base_logits, atol=1e-6)


@pytest.mark.parametrize("task", list(FAMILIES))
def test_training_lowers_the_loss_and_leaves_the_base_weights_untouched(request, task):
    model, model_dir = load_base(request, task)
    adapter.apply(model, adapter_config(task, model_dir))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}

    losses = descend(model, fixed_batch(task))

    assert losses[-1] < losses[0]
    parameters = dict(model.named_parameters())
    assert all(torch.equal(parameters[name], before) for name, before in frozen.items())
    assert any(p.abs().sum() > 0 for name, p in parameters.items() if name.endswith("adapter.up.weight"))


@pytest.mark.parametrize("task", list(FAMILIES))
def test_save_then_load_reproduces_the_tuned_model(request, task, tmp_path):
    model, model_dir = load_base(request, task)
    adapter.apply(model, adapter_config(task, model_dir))
    batch = fixed_batch(task)
    descend(model, batch, steps=3)  # non-zero adapters, so a failed load cannot pass as the base model
    tuned_logits = logits(model, batch)

    adapter.save(model, tmp_path)
    fresh, _ = load_base(request, task, seed=1)  # a different random head, which the saved one must replace
    reloaded = adapter.load(fresh, tmp_path)

    assert torch.equal(logits(reloaded, batch), tuned_logits)
    saved = load_file(tmp_path / adapter.ADAPTER_FILE)
    assert all(".adapter." in name or name.startswith("classifier.") for name in saved)
    assert sum(t.numel() for t in saved.values()) * 20 < sum(p.numel() for p in model.parameters())
    settings = json.loads((tmp_path / adapter.SETTINGS_FILE).read_text())
    assert settings == {
        "placement": "houlsby",
        "reduction_factor": 4,
        "activation": "gelu",
        "model_type": model.config.model_type,
        "head": "classifier" if task == "classification" else None,
    }
    adapter.save(reloaded, tmp_path / "again")  # a loaded model saves the same tensors, whatever requires_grad says
    assert load_file(tmp_path / "again" / adapter.ADAPTER_FILE).keys() == saved.keys()


def test_load_refuses_adapters_that_do_not_fit_the_base(request, tmp_path):
    model, model_dir = load_base(request, "causal_lm")
    adapter.save(adapter.apply(model, adapter_config("causal_lm", model_dir, "houlsby")), tmp_path)
    settings_path = tmp_path / adapter.SETTINGS_FILE
    settings_path.write_text(json.dumps(json.loads(settings_path.read_text()) | {"placement": "pfeiffer"}))
    fresh, _ = load_base(request, "causal_lm")
    with pytest.raises(MethodError, match="does not fit this base model.*self_attn"):
        adapter.load(fresh, tmp_path)


@pytest.mark.parametrize(
    "make_model, adapted",
    [
        (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2)), 4),  # Conv1D projections
        (
            lambda: BartForConditionalGeneration(
                BartConfig(
                    vocab_size=100,
                    d_model=32,
                    encoder_layers=2,
                    decoder_layers=2,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=64,
                    decoder_ffn_dim=64,
                )
            ),
            10,
        ),
    ],
)
def test_other_architectures_in_the_table_start_as_the_base_and_generate(make_model, adapted):
    model = make_model().eval()
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": input_ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = input_ids
    base_logits = logits(model, inputs)

    assert len(adapter.insert_adapters(model, "houlsby", 4, "relu")) == adapted

    assert torch.allclose(logits(model, inputs), base_logits, atol=1e-6)
    assert model.generate(input_ids, max_new_tokens=2, do_sample=False).shape[0] == 2


def test_merge_is_refused_with_what_to_use_instead(request):
    model, model_dir = load_base(request, "causal_lm")
    adapter.apply(model, adapter_config("causal_lm", model_dir))
    with pytest.raises(MethodError, match="cannot be merged.*tunelab predict.*lora"):
        adapter.merge(model)


def test_unknown_architecture_is_refused_with_the_supported_ones():
    model = nn.Linear(4, 4)
    model.config = SimpleNamespace(model_type="mamba")
    with pytest.raises(MethodError, match="'mamba'.*supported model types: .*bert.*llama.*t5"):
        adapter.apply(model, adapter_config("causal_lm", "mamba-model"))


def test_known_architecture_without_matching_layers_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    model.config = SimpleNamespace(model_type="llama")
    with pytest.raises(MethodError, match="no output projection"):
        adapter.insert_adapters(model, "houlsby", 4, "relu")
