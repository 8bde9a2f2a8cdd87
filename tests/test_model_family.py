"""The model family is read from the model (registry entry, run directory, local folder, hub config), not declared."""

from __future__ import annotations

import json

import pytest

from tunelab.config import ConfigError, ModelConfig
from tunelab.models.family import family_of_config, model_family


@pytest.mark.parametrize(
    ("config", "family"),
    [
        (
            {"model_type": "t5", "is_encoder_decoder": True, "architectures": ["T5ForConditionalGeneration"]},
            "encoder-decoder",
        ),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "decoder"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "decoder"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "encoder"),
        ({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}, "encoder"),
        ({"model_type": "llama"}, "decoder"),  # no architectures: a causal-LM-only model type
        ({"model_type": "bert"}, "encoder"),  # BERT also has a causal head, but is a masked LM first
    ],
)
def test_a_config_is_read_as_its_family(config, family):
    assert family_of_config(config) == family


def test_registry_models_have_their_entries_family():
    assert model_family(ModelConfig(name="minilm-l6")) == "encoder"
    assert model_family(ModelConfig(name="smollm2-135m-instruct")) == "decoder"


def test_a_local_folder_and_a_run_directory_read_the_folders_config(tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    assert model_family(ModelConfig(name=str(folder))) == "encoder-decoder"
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text(f"model:\n  name: {folder}\n")
    assert model_family(ModelConfig(name=str(run))) == "encoder-decoder"


def test_an_unreachable_model_says_why_its_family_is_unknown(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="no-such-org/no-such-model.*family"):
        model_family(ModelConfig(name="no-such-org/no-such-model"))
