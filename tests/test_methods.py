"""Every adaptation method on tiny models: what trains, what stays frozen, learning, save/load, merge, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertModel,
)

from tunelab import pipeline, run_commands
from tunelab.config import ConfigError, build_config
from tunelab.data.encode import encode, make_collator
from tunelab.data.splits import load_task_data
from tunelab.methods import MethodError, apply_method, check_method, method_module
from tunelab.models.family import task_type_of
from tunelab.runs import RunDir
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run

from helpers import descend, load_for_config, logged_losses, method_config

CLASSIFIER = "classifier."
"""Name fragment of the tiny BERT classifier's head (PEFT wraps it as ...classifier.modules_to_save...)."""

PROMISES = {
    "full": lambda name: True,
    "head": lambda name: name.startswith(CLASSIFIER),
    "bitfit": lambda name: name.endswith(".bias") or name.startswith(CLASSIFIER),
    "lora": lambda name: "lora_" in name or CLASSIFIER in name,
    "dora": lambda name: "lora_" in name or CLASSIFIER in name,
    "rslora": lambda name: "lora_" in name or CLASSIFIER in name,
    "ia3": lambda name: "ia3_" in name or CLASSIFIER in name,
    "prefix": lambda name: "prompt_encoder" in name or CLASSIFIER in name,
    "prompt": lambda name: "prompt_encoder" in name or CLASSIFIER in name,
    "adapter": lambda name: "adapter" in name or CLASSIFIER in name,
}
"""For each method, the parameters it promises to train (the rest must stay bit-identical)."""

ALL_FAMILIES = ["lora", "dora", "rslora", "ia3", "prefix", "prompt", "adapter", "full"]
MATRIX = (
    [("classification", m) for m in [*ALL_FAMILIES, "head", "bitfit"]]
    + [("causal_lm", m) for m in ALL_FAMILIES]
    + [("seq2seq", m) for m in ALL_FAMILIES]
)


@pytest.fixture
def model_and_data(request, tiny_encoder, tiny_decoder, tiny_seq2seq, sentiment_file, copy_task_file):
    def pick(task):
        model = {"classification": tiny_encoder, "causal_lm": tiny_decoder, "seq2seq": tiny_seq2seq}[task]
        return model, sentiment_file if task == "classification" else copy_task_file

    return pick


def fixed_batch(config, tokenizer, data):
    examples = encode(task_type_of(config), data.train[:16], tokenizer, config.data, data.labels).examples
    tokenizer.padding_side = "right"
    return make_collator(task_type_of(config), tokenizer)(examples)


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("task,method", MATRIX)
def test_method_trains_only_what_it_promises_and_reloads(task, method, model_and_data, tmp_path):
    model_dir, data_file = model_and_data(task)
    config = method_config(task, model_dir, data_file, tmp_path, method)
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, data.labels)
    model, report = apply_method(model, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(PROMISES[method](n) for n in trainable), sorted(
        n for n in trainable if not PROMISES[method](n)
    )
    assert (report.percent == 100.0) == (method == "full")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    batch = fixed_batch(config, tokenizer, data)
    losses = descend(model, batch, lr=1e-3 if method == "full" else 1e-2)
    assert losses[-1] < losses[0], losses
    for name, parameter in model.named_parameters():
        if name not in trainable:
            assert torch.equal(parameter.detach(), before[name]), f"frozen weight {name} changed"
    assert any(not torch.equal(model.get_parameter(n).detach(), before[n]) for n in trainable)

    run = RunDir.create(config)
    run.save_model(lambda directory: method_module(method).save(model, directory), tokenizer)
    run.update_state(state="complete", labels=data.labels)
    reloaded = load_run(run).model
    assert torch.allclose(outputs(model, batch), outputs(reloaded, batch), atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapter"])
def test_generation_methods_learn_through_the_trainer(method, tiny_decoder, copy_task_file, tmp_path):
    """Prompt-learning methods take the model's own loss path in the Trainer (virtual tokens), adapters the chunked one."""
    config = method_config(
        "causal_lm",
        tiny_decoder,
        copy_task_file,
        tmp_path,
        method,
        epochs=6,
        batch_size=16,
        learning_rate=1e-1 if method == "prompt" else 2e-2,
        warmup_ratio=0.0,
    )
    run = pipeline.train(config)
    losses = logged_losses(run)
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.03, losses
    assert run.state()["state"] == "complete" and (run.model_dir / "README.md").exists() is (method != "adapter")


@pytest.mark.parametrize("method", ["head", "bitfit"])
def test_head_and_bitfit_save_only_what_changed(method, classifier_run):
    run = classifier_run(method)
    from safetensors.torch import load_file

    saved = load_file(run.model_dir / "delta.safetensors")
    assert saved and all(PROMISES[method](name) for name in saved)
    total = json.loads(run.eval_path.read_text())["trainable"]
    assert sum(t.numel() for t in saved.values()) == total["trainable_params"]
    assert not (run.model_dir / "model.safetensors").exists()


def greedy(model, tokenizer, prompts):
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id).tolist()


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "ia3", "full"])
def test_merged_decoder_generates_what_the_unmerged_one_does(method, decoder_run, tmp_path):
    run = decoder_run(method)
    merged_dir = run_commands.merge_run(run, tmp_path / "merged")
    loaded = load_run(run)
    unmerged, tokenizer = loaded.model, loaded.tokenizer
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    prompts = ["repeat the word film", "repeat the word dull please"]
    assert greedy(merged, tokenizer, prompts) == greedy(unmerged, tokenizer, prompts)


@pytest.mark.parametrize("method", ["lora", "bitfit", "head", "ia3"])
def test_merged_classifier_scores_what_the_unmerged_one_does(method, classifier_run, tmp_path):
    run = classifier_run(method)
    merged_dir = run_commands.merge_run(run, tmp_path / "merged")
    loaded = load_run(run)
    unmerged, tokenizer, labels = loaded.model, loaded.tokenizer, loaded.labels
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert [merged.config.id2label[i] for i in range(len(labels))] == labels
    batch = tokenizer(["the film was great", "the cast was dull"], return_tensors="pt", padding=True)
    assert torch.allclose(outputs(merged, batch), outputs(unmerged, batch), atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapter"])
def test_unmergeable_methods_refuse_to_merge_and_write_nothing(method, classifier_run, tmp_path):
    run = classifier_run(method)
    with pytest.raises(MethodError, match="cannot be"):
        run_commands.merge_run(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_never_overwrites_an_existing_folder(classifier_run, tmp_path):
    run = classifier_run("lora")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    from tunelab.runs import RunError

    with pytest.raises(RunError, match="not empty"):
        run_commands.merge_run(run, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_adapters_switch_on_one_base_model(classifier_run, tiny_encoder, sentiment_file, tmp_path, monkeypatch):
    other = method_config("classification", tiny_encoder, sentiment_file, tmp_path / "b", "lora", max_steps=8, seed=2)
    runs = [classifier_run("lora"), pipeline.train(other)]  # two LoRA adapters of one base, trained apart
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ("the film was great", "the score was dull", "a dreadful end"))
    )
    alone = []
    for i, run in enumerate(runs):
        run_commands.predict_run(run, str(inputs), str(tmp_path / f"alone{i}.jsonl"))
        alone.append([json.loads(line) for line in (tmp_path / f"alone{i}.jsonl").read_text().splitlines()])

    loads = []
    original = run_commands.load_base
    monkeypatch.setattr(run_commands, "load_base", lambda *a, **k: loads.append(a) or original(*a, **k))
    assert (
        run_commands.predict_with_adapters({"a": runs[0], "b": runs[1]}, str(inputs), str(tmp_path / "both.jsonl"))
        == 3
    )
    assert len(loads) == 1  # one base model for both adapters
    rows = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    for i, name in enumerate("ab"):
        assert [row["predictions"][name]["scores"] for row in rows] == [a["scores"] for a in alone[i]]
    assert [r["predictions"]["a"]["scores"] for r in rows] != [r["predictions"]["b"]["scores"] for r in rows]


def test_adapter_switching_refuses_runs_without_a_peft_adapter(classifier_run, sentiment_file, tmp_path):
    lora, bitfit = classifier_run("lora"), classifier_run("bitfit")
    with pytest.raises(MethodError, match="saved no single PEFT adapter"):
        run_commands.predict_with_adapters(
            {"lora": lora, "bitfit": bitfit}, str(sentiment_file), str(tmp_path / "out.jsonl")
        )
    assert not (tmp_path / "out.jsonl").exists()


def test_head_is_refused_for_generation_at_config_time(tiny_decoder, copy_task_file, tmp_path):
    with pytest.raises(ConfigError, match="method 'head' is defined only for data.kind classification"):
        method_config("causal_lm", tiny_decoder, copy_task_file, tmp_path, "head")


def test_bitfit_is_refused_for_bias_free_models(tiny_decoder, copy_task_file, tmp_path):
    registry = method_config("causal_lm", "smollm2-135m-instruct", copy_task_file, tmp_path, "bitfit")
    with pytest.raises(MethodError, match="has none"):
        check_method(registry)  # known from the registry: nothing loads
    local = method_config("causal_lm", tiny_decoder, copy_task_file, tmp_path, "bitfit")
    with pytest.raises(MethodError, match="has none"):
        pipeline.train(local)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_without_cuda_is_a_clear_error_before_anything_loads(tiny_decoder, copy_task_file, tmp_path):
    config = method_config("causal_lm", tiny_decoder, copy_task_file, tmp_path, "qlora")
    with pytest.raises(MethodError, match="needs a CUDA GPU.*method.name=lora"):
        pipeline.train(config)
    assert not list(tmp_path.glob("tiny-*"))  # refused before a run directory was made


@pytest.mark.parametrize(
    "method,bad,message",
    [
        ("prompt", {"prompt": {"init": "text"}}, "prompt.init_text is empty"),
        ("ia3", {"ia3": {"target_modules": ["value"]}}, "feedforward_modules"),
        ("adapter", {"adapter": {"placement": "sideways"}}, "houlsby"),
    ],
)
def test_method_settings_are_validated(method, bad, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_config({"task": "classification", "method": {"name": method, **bad}})


def test_learning_rate_defaults_depend_on_method_and_task():
    def rate(method, task="classification"):
        config = build_config({"task": task, "method": {"name": method}, "data": {"prompt_field": "p"}})
        return objective_of(config).learning_rate(config)

    assert rate("full") == 5e-5
    assert rate("lora") == 2e-3 and rate("lora", "causal_lm") == 2e-4
    assert rate("prompt") > rate("lora") > rate("full")


@pytest.mark.parametrize(
    "task,setting,expected",
    [
        ("classification", None, False),
        ("causal_lm", None, True),
        ("classification", True, True),
        ("causal_lm", False, False),
    ],
)
def test_prefix_reparameterisation_defaults_by_task_and_obeys_the_config(task, setting, expected):
    from tunelab.methods import prefix

    config = build_config(
        {
            "task": task,
            "data": {"prompt_field": "p"},
            "method": {"name": "prefix", "prefix": {"reparameterize": setting}},
        }
    )
    assert prefix.peft_config(config).prefix_projection is expected


def test_prefix_classifier_returns_to_its_best_checkpoint(tiny_encoder, sentiment_file, tmp_path):
    """Without the reparameterisation MLP, PEFT reloads prefix checkpoints, so the best epoch is kept as for other methods."""
    run = pipeline.train(method_config("classification", tiny_encoder, sentiment_file, tmp_path, "prefix", epochs=2))
    assert run.state()["best_step"] is not None
    assert run.state()["state"] == "complete"


@pytest.mark.parametrize(
    "method, task, stored",
    [
        ("lora", "causal_lm", torch.bfloat16),
        ("ia3", "causal_lm", torch.bfloat16),
        ("full", "causal_lm", torch.float32),  # trained weights keep fp32 master copies
        ("prefix", "causal_lm", torch.float32),
        ("lora", "classification", torch.float32),  # the classifier head trains in the base's dtype
    ],
)
def test_a_frozen_generative_base_is_stored_in_bf16_only_for_bf16_runs(
    tiny_decoder, tiny_encoder, copy_task_file, sentiment_file, method, task, stored
):
    data = (
        {"train": str(copy_task_file), "prompt_template": "{question}", "response_field": "answer"}
        if task == "causal_lm"
        else {"train": str(sentiment_file)}
    )
    config = build_config(
        {
            "name": "dtype",
            "task": task,
            "model": {"name": tiny_decoder if task == "causal_lm" else tiny_encoder},
            "data": data,
            "method": {"name": method},
        }
    )
    labels = None if task == "causal_lm" else ["negative", "positive"]
    model, _ = load_for_config(config, labels, "bf16")
    assert model.get_input_embeddings().weight.dtype == stored
    fp32_model, _ = load_for_config(config, labels, "fp32")
    assert fp32_model.get_input_embeddings().weight.dtype == torch.float32
    if stored == torch.bfloat16:
        adapted, _ = apply_method(model, config)
        trainable = [p for p in adapted.parameters() if p.requires_grad]
        assert trainable and all(p.dtype == torch.float32 for p in trainable)  # the optimiser sees fp32 adapters


def _perturb_trainable(model, seed: int = 0) -> None:
    """Large random prompt/prefix weights, so what they add shows in every answer (an untrained prompt barely does)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def _token_by_token(model, prompt_ids: list[int], task: str, start_id: int, steps: int) -> list[int]:
    """Greedy answer through the model's training forward, one token at a time, no cache, no padding."""
    ids = torch.tensor([prompt_ids])
    answer = []
    with torch.no_grad():
        for _ in range(steps):
            if task == "causal_lm":
                logits = model(input_ids=torch.tensor([prompt_ids + answer])).logits
            else:
                logits = model(input_ids=ids, decoder_input_ids=torch.tensor([[start_id] + answer])).logits
            answer.append(int(logits[0, -1].argmax()))
    return answer


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_learning_generates_what_its_forward_computes(method, task, model_and_data, tmp_path):
    """Batched, left-padded, cached generation (what eval and predict run) equals a token-by-token greedy decode
    through the forward that training optimised, before and after save/load. transformers 5.24 renamed the
    generation cache, and PEFT alone then generated without the prefix, or re-inserted the soft prompt every step."""
    from tunelab.eval.generate import generate_texts

    model_dir, data_file = model_and_data(task)
    config = method_config(task, model_dir, data_file, tmp_path, method)
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, data.labels)
    prompts = [
        tokenizer(text)["input_ids"] for text in ("repeat the word film", "say a word", "the score was a dull one")
    ]
    start = model.config.decoder_start_token_id if task == "seq2seq" else None

    def as_text(ids: list[int]) -> str:  # what generation returns: the answer up to EOS, special tokens dropped
        end = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
        return tokenizer.decode(ids[:end], skip_special_tokens=True)

    model.eval()
    base_answers = [_token_by_token(model, p, task, start, 5) for p in prompts]
    model, _ = apply_method(model, config)
    _perturb_trainable(model)
    run = RunDir.create(config)
    run.save_model(lambda directory: method_module(method).save(model, directory), tokenizer)
    run.update_state(state="complete", labels=data.labels)
    reloaded = load_run(run).model
    for tuned in (model.eval(), reloaded):
        expected = [_token_by_token(tuned, p, task, start, 5) for p in prompts]
        assert expected != base_answers  # the prompt changes the answers, so generating without it would show
        generated = generate_texts(
            tuned, tokenizer, prompts, decoder_only=task == "causal_lm", batch_size=3, max_new_tokens=5
        )
        assert generated == [as_text(ids) for ids in expected]
        assert any(generated)


def test_a_prefix_classifier_reads_its_prefix(tiny_encoder, sentiment_file, tmp_path):
    """The classifier's answer depends on the prefix (transformers 5.24 renamed the cache argument PEFT passes it in)."""
    config = method_config("classification", tiny_encoder, sentiment_file, tmp_path, "prefix")
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, data.labels)
    model, _ = apply_method(model, config)
    batch = fixed_batch(config, tokenizer, data)
    before = outputs(model, batch)
    _perturb_trainable(model.prompt_encoder)
    assert not torch.allclose(before, outputs(model, batch), atol=1e-4)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, tokenizer_dir) -> str:
    """A BERT-style encoder whose forward takes no attention cache."""
    config = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128
    )
    model = DistilBertModel(config)
    path = tmp_path_factory.mktemp("tiny-distilbert")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "case,message",
    [
        ("no_cache", "takes no attention cache.*method.name=prompt"),
        ("positions", "needs 132 positions.*data.max_length=108"),
    ],
)
def test_prefix_classifiers_that_cannot_work_are_refused_before_anything_loads(
    case, message, tiny_distilbert, tiny_encoder, sentiment_file, tmp_path
):
    model = tiny_distilbert if case == "no_cache" else tiny_encoder
    config = method_config("classification", model, sentiment_file, tmp_path, "prefix")
    if case == "positions":  # the tiny encoder has 128 positions; 20 prefixes + 112 tokens do not fit
        config = build_config(
            {
                **config.model_dump(),
                "data": {**config.data.model_dump(), "max_length": 112},
                "method": {"name": "prefix", "prefix": {"num_virtual_tokens": 20}},
            }
        )
    with pytest.raises(MethodError, match=message):
        pipeline.train(config)
    assert not list(tmp_path.glob("tiny-*"))  # refused before a run directory was made
