"""Preference runs train end to end (data.kind: preference): a tiny Llama with smollm2's tokenizer learns a few
self-written pairs by DPO (its loss starting at ln 2), every loss of `training.preference` trains, each loss
refuses the other form of data, the reference costs no second copy of the model under LoRA and is precomputed
from the untuned model under full fine-tuning, the rewards reach metrics.jsonl, TensorBoard and the run page's
curves, and what cannot train preferences is refused before a model loads. Resume after kill -9 is in
test_resume.py, two processes in test_distributed.py."""

from __future__ import annotations

import gc
import json
import math
import shutil
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, PreTrainedModel, TrainerCallback

from tunelab import pipeline
from tunelab.config import ConfigError, PreferenceConfig
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.records import DataError
from tunelab.train.preference_losses import AnswerLogProbs, preference_losses
from tunelab.train.preference_trainer import PreferenceTrainer, answer_logps, reference_logps
from tunelab.ui.app import create_ui
from tunelab.ui.index import scan

from helpers import SUBJECTS, preference_run_config, subject_pairs, unpaired_subject_examples, write_jsonl

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def _entries(run) -> tuple[list[dict], list[dict]]:
    """A run's training log lines and its validation lines, in order."""
    entries = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    return [e for e in entries if "loss" in e], [e for e in entries if "eval_loss" in e]


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict[str, str]:
    """Eight training pairs, and other subjects' pairs for validation and test."""
    folder = tmp_path_factory.mktemp("pairs")
    splits = {"train": SUBJECTS[:8], "validation": SUBJECTS[8:10], "test": SUBJECTS[10:]}
    return {
        split: str(write_jsonl(folder / f"{split}.jsonl", subject_pairs(names))) for split, names in splits.items()
    }


@pytest.fixture(scope="module")
def dpo_run(chat_decoder, pair_files, tmp_path_factory):
    """DPO with LoRA overfitting the eight training pairs (16 steps of 4), validated once an epoch (2 steps),
    reporting to TensorBoard; shared by the tests that read it."""
    config = preference_run_config(
        chat_decoder,
        pair_files["train"],
        tmp_path_factory.mktemp("dpo-run"),
        data={"validation": pair_files["validation"], "test": pair_files["test"]},
        max_steps=16,
        learning_rate=3e-2,
        warmup_ratio=0.0,
        preference={"beta": 0.5},  # DPO's 0.1 moves this tiny model's rewards too slowly for 16 steps
        report_to=["tensorboard"],
    )
    return pipeline.train(config)


def test_dpo_starts_at_ln2_and_overfits_its_pairs(dpo_run):
    train, validation = _entries(dpo_run)
    assert [e["step"] for e in train] == list(range(1, 17))
    first, last = train[0], train[-1]
    # the policy starts as its reference: every reward 0, the loss -log sigmoid(0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert [first[name] for name in REWARDS] == [0.0, 0.0, 0.0, 0.0]
    assert last["loss"] < 0.5 * math.log(2)
    assert last["rewards/accuracies"] == 1.0 and last["rewards/margins"] > 0.5
    assert last["rewards/chosen"] > last["rewards/rejected"]
    assert all(math.isfinite(e[name]) for e in train for name in (*REWARDS, "logps/chosen", "logps/rejected"))
    assert [e["step"] for e in validation] == list(range(2, 17, 2))
    assert all(f"eval_{name}" in e for e in validation for name in REWARDS)
    assert validation[-1]["eval_rewards/margins"] > validation[0]["eval_rewards/margins"]


def test_a_preference_run_directory_is_complete(dpo_run):
    state = dpo_run.state()
    assert state["state"] == "complete" and state["kind"] == "preference" and state["steps"] == 16
    assert (dpo_run.model_dir / "adapter_model.safetensors").exists()
    assert dpo_run.eval_path.exists() and dpo_run.card_path.exists() and dpo_run.config_path.exists()
    assert (dpo_run.data_dir / "report.json").exists()
    assert not dpo_run.checkpoints.exists()
    assert not (dpo_run.data_dir / "reference_logps.json").exists()  # LoRA's reference is the model itself


def test_the_rewards_reach_tensorboard(dpo_run):
    train, validation = _entries(dpo_run)
    events = EventAccumulator(str(dpo_run.tensorboard_dir))
    events.Reload()
    for name in REWARDS:
        logged = {event.step: event.value for event in events.Scalars(f"train/{name}")}
        assert logged == pytest.approx({e["step"]: e[name] for e in train}, rel=1e-6)
        logged = {event.step: event.value for event in events.Scalars(f"eval/{name}")}
        assert logged == pytest.approx({e["step"]: e[f"eval_{name}"] for e in validation}, rel=1e-6)


def test_the_run_page_plots_the_rewards(dpo_run):
    client = TestClient(create_ui([dpo_run.path.parent]))
    (run_id,) = scan([dpo_run.path.parent]).runs
    assert client.get(f"/run/{run_id}").status_code == 200
    curves = client.get(f"/api/run/{run_id}").json()["curves"]
    train, validation = _entries(dpo_run)
    for name in REWARDS:
        assert curves[name] == [[e["step"], pytest.approx(e[name])] for e in train]
        assert curves[f"eval_{name}"] == [[e["step"], pytest.approx(e[f"eval_{name}"])] for e in validation]
    assert "loss" in curves and "eval_loss" in curves and "eval_runtime" not in curves and "epoch" not in curves


@pytest.fixture(scope="module")
def unpaired_file(tmp_path_factory) -> str:
    return str(
        write_jsonl(tmp_path_factory.mktemp("unpaired") / "unpaired.jsonl", unpaired_subject_examples(SUBJECTS))
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "dpo"},
        {"loss": "ipo"},
        {"loss": "hinge"},
        {"loss": "simpo"},
        {"loss": "orpo"},
        {"loss": "kto"},
        {"loss": "dpo", "sft_weight": 1.0},
    ],
    ids=["dpo", "ipo", "hinge", "simpo", "orpo", "kto", "dpo+sft"],
)
def test_each_loss_trains_end_to_end(settings, chat_decoder, pair_files, unpaired_file, tmp_path):
    data = unpaired_file if settings["loss"] == "kto" else pair_files["train"]
    run = pipeline.train(preference_run_config(chat_decoder, data, tmp_path, max_steps=2, preference=settings))
    assert run.state()["state"] == "complete"
    train, _ = _entries(run)
    assert [e["step"] for e in train] == [1, 2]
    logged = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
    assert all(math.isfinite(e["loss"]) and all(math.isfinite(e[name]) for name in logged) for e in train)
    # a pair's accuracy compares its own two answers; kto's second answer is another prompt's (its KL sample)
    assert all(("rewards/accuracies" in e) == (settings["loss"] != "kto") for e in train)


@pytest.mark.parametrize(
    "loss, form, wrong", [("kto", "unpaired examples", "pairs"), ("dpo", "pairs", "unpaired")], ids=["kto", "dpo"]
)
def test_a_loss_refuses_the_other_form_of_data_naming_the_records(
    loss, form, wrong, chat_decoder, pair_files, unpaired_file, tmp_path
):
    data = pair_files["train"] if wrong == "pairs" else unpaired_file
    config = preference_run_config(chat_decoder, data, tmp_path, max_steps=2, preference={"loss": loss})
    with pytest.raises(DataError, match=f"loss {loss} trains {form}") as refused:
        pipeline.train(config)
    assert f"{data.rsplit('/', 1)[1]}:1" in str(refused.value)  # the first record, by file and line
    assert "Use loss" in str(refused.value)


class OneOfTwoProcesses:
    """The accelerator of one of two processes whose batches hold the same values: records what it gathers."""

    def __init__(self):
        self.gathered = []

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.gathered.append(tuple(tensor.shape))
        return torch.cat([tensor, tensor])


def test_every_process_gathers_the_same_rewards_whatever_its_kto_batch_holds():
    """A KTO batch may hold only good or only bad answers: each process still gathers one tensor of one shape per
    batch, so no process waits for a gather another skipped; logps/ are the good and the bad answers'."""
    accelerator = OneOfTwoProcesses()
    trainer = SimpleNamespace(accelerator=accelerator, _stored={"train": defaultdict(list)})
    settings = PreferenceConfig(loss="kto", beta=0.5)
    policy = AnswerLogProbs(torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -6.0]), torch.ones(2), torch.ones(2))
    reference = AnswerLogProbs(torch.tensor([-4.0, -4.0]), torch.tensor([-4.0, -6.0]), torch.ones(2), torch.ones(2))
    for labels in ([1, 1], [1, 0], [0, 0]):
        desirable = torch.tensor(labels)
        terms = preference_losses(settings, policy, reference, desirable)
        PreferenceTrainer._store(trainer, policy, terms, desirable, "train")
    assert len(accelerator.gathered) == 3 and len(set(accelerator.gathered)) == 1
    logged = trainer._stored["train"]
    assert logged["rewards/chosen"] == [0.0, 0.5]  # beta * log-ratio of the good answers: (0.5 + -0.5) / 2, then 0.5
    assert logged["rewards/rejected"] == [-0.5, 0.0]
    assert logged["rewards/margins"] == [1.0]  # only where the batches held both
    assert logged["logps/chosen"] == [-4.0, -3.0] and logged["logps/rejected"] == [-5.0, -4.0]
    assert "rewards/accuracies" not in logged


def _one_by_one(model, example: dict) -> list[float]:
    """An example's chosen and rejected answers' summed log-probabilities, each answer after its own copy of the
    prompt in a row of its own under the model's default attention: the plain computation that the packed rows,
    with their shared prompt, must reproduce."""
    sums = []
    for side in ("chosen", "rejected"):
        ids = example["prompt_ids"] + example[f"{side}_ids"]
        labels = torch.tensor([IGNORE_INDEX] * len(example["prompt_ids"]) + example[f"{side}_labels"])[1:]
        with torch.no_grad():
            logps = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
        scored = labels != IGNORE_INDEX
        sums.append(float(logps[scored].gather(1, labels[scored, None]).sum()))
    return sums


class Census(TrainerCallback):
    """What a run holds while it trains (counted after the first optimiser step, when a reference model, had one
    been made, would be alive) and, after the last step, the trained model's reference and policy log-probabilities
    on a batch of the run's own."""

    def __init__(self, source: str):
        self.source = source

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        gc.collect()
        loaded = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and o.name_or_path == self.source]
        inner = {id(module) for o in loaded for module in list(o.modules())[1:]}
        self.whole_models = [o for o in loaded if id(o) not in inner]  # not their inner models (model.model)
        self.only_the_trained_base = self.whole_models == [model.get_base_model()]
        storages = {p.data_ptr(): p.numel() for o in loaded for p in o.parameters()}
        self.storages_are_the_models = storages.keys() == {p.data_ptr() for p in model.parameters()}
        self.parameters = sum(storages.values())

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.examples = list(train_dataloader.dataset)[:4]
        batch = train_dataloader.collate_fn(self.examples)
        model.eval()
        with torch.no_grad():
            self.reference = reference_logps(model, batch)
            self.policy = answer_logps(model, batch)


def test_the_lora_reference_is_the_model_with_its_adapters_off_and_no_second_copy(chat_decoder, pair_files, tmp_path):
    source = str(shutil.copytree(chat_decoder, tmp_path / "model"))  # a path no other test's model was loaded from
    base_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(source).parameters())
    census = Census(source)
    run = pipeline.train(
        preference_run_config(source, pair_files["train"], tmp_path / "runs", max_steps=4, learning_rate=3e-2),
        callbacks=[census],
    )
    adapters = run.state()["trainable"]["trainable_params"]
    assert census.only_the_trained_base, census.whole_models  # the base inside the PEFT model, and no other
    assert census.storages_are_the_models  # no weights loaded from the base outside the trained model
    assert census.parameters == base_parameters + adapters  # one copy of the weights, plus the adapters

    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    expected = torch.tensor([_one_by_one(base, example) for example in census.examples])
    reference = torch.stack([census.reference.chosen, census.reference.rejected], 1)
    policy = torch.stack([census.policy.chosen, census.policy.rejected], 1)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-4)
    assert (policy - expected).abs().max() > 1e-2  # while the adapters did change the policy


class Examples(TrainerCallback):
    """The examples a run trains on, as its Trainer was given them."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.train = list(train_dataloader.dataset)


def test_full_fine_tuning_precomputes_the_untuned_models_reference_into_the_run(
    chat_decoder, pair_files, tmp_path, capsys
):
    examples = Examples()
    splits = {"validation": pair_files["validation"], "test": pair_files["test"]}
    config = preference_run_config(chat_decoder, pair_files["train"], tmp_path, method="full", data=splits)
    run = pipeline.train(config, callbacks=[examples])
    assert "reference log-probabilities of 10 examples, computed once before training" in capsys.readouterr().out
    stored = json.loads((run.data_dir / "reference_logps.json").read_text())
    assert len(stored) == 10  # the 8 training pairs and 2 validation pairs, each once

    base = AutoModelForCausalLM.from_pretrained(chat_decoder, dtype=torch.float32).eval()
    for example in examples.train:
        assert example["reference_logps"] == pytest.approx(_one_by_one(base, example), abs=1e-4)
        assert example["reference_logps"] in stored.values()


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_learning_is_refused_before_anything_loads(method, chat_decoder, pair_files, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_taskset", lambda config: pytest.fail("the data was read"))
    with pytest.raises(ConfigError, match=f"method {method} adds virtual tokens .* use lora, ia3, full or bitfit"):
        pipeline.train(preference_run_config(chat_decoder, pair_files["train"], tmp_path / "runs", method=method))
    assert not (tmp_path / "runs").exists()


def test_an_encoder_is_refused_before_anything_loads(tiny_encoder, pair_files, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_taskset", lambda config: pytest.fail("the data was read"))
    with pytest.raises(ConfigError, match="tunes a decoder; .* pick a decoder"):
        pipeline.train(preference_run_config(tiny_encoder, pair_files["train"], tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
