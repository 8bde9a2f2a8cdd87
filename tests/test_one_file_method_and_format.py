"""One file is enough for a new method and a new export format (issue 30, item 7): a PEFT method and a format
that writes its weights are defined here, in the test, registered with one call each, and a tiny decoder goes
train -> eval -> predict -> export -> serve through the real command line and server, no other module touched.

The method is LoHa (LyCORIS' Hadamard product of two low-rank products, shipped by PEFT) on the attention output
and MLP down projections: a tuner no tunelab method uses, on modules tunelab's LoRA leaves alone by default. The
format writes its factors to one NumPy `.npz` file, which the test reads back against the trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import LoHaConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

from tunelab import export
from tunelab.config import METHOD_TRAITS, LearningRates, MethodTraits, RunConfig
from tunelab.export import EXPORT_FORMATS, register_export_format
from tunelab.methods import METHODS, MethodError, register_method
from tunelab.runs import RunDir
from tunelab.serve.catalog import load_catalog
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run

from helpers import cli
from serving import call, in_process


class ToyLoha:
    """A method module (any object with check, apply, save, load and merge will do): LoHa through PEFT's own
    LoHaConfig, its settings fixed here, as a method needs no section of its own in the config."""

    NAME = "toy_loha"
    RANK = 4
    TARGETS = ("o_proj", "down_proj")
    TRAITS = MethodTraits(
        LearningRates(with_head=2e-3, generative=3e-3),  # at 1e-2 the tiny decoder answers only end-of-text
        kinds=frozenset({"generation"}),
        kinds_reason="the toy is tried on generation only",
        peft_adapter=True,
        mergeable=True,
    )
    WEIGHTS = "adapter_model.safetensors"
    """The file PEFT saves the factors in."""

    @staticmethod
    def check(config: RunConfig) -> None:
        """LoHa runs wherever torch does."""

    @staticmethod
    def apply(model: nn.Module, config: RunConfig) -> nn.Module:
        settings = LoHaConfig(
            task_type=TaskType.CAUSAL_LM, r=ToyLoha.RANK, alpha=2 * ToyLoha.RANK, target_modules=list(ToyLoha.TARGETS)
        )
        return get_peft_model(model, settings)

    @staticmethod
    def save(model: PeftModel, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    @staticmethod
    def load(base: nn.Module, directory: Path, adapter_name: str = "default") -> PeftModel:
        return PeftModel.from_pretrained(base, directory, adapter_name=adapter_name)

    @staticmethod
    def merge(model: PeftModel) -> nn.Module:
        return model.merge_and_unload()

    @staticmethod
    def trainable_parameters(base: nn.Module) -> int:
        """Four factors per adapted projection, two (out x r) and two (r x in): 2 r (in + out) weights."""
        return sum(
            2 * ToyLoha.RANK * (module.in_features + module.out_features)
            for name, module in base.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ToyLoha.TARGETS
        )

    @staticmethod
    def factors(directory: Path) -> dict[str, torch.Tensor]:
        """The trained factors a run saved, by PEFT's names."""
        return load_file(directory / ToyLoha.WEIGHTS)


class ToyNpz:
    """An export format: a toy_loha run's LoHa factors as one NumPy archive, for tools that read no safetensors."""

    NAME = "toy_npz"
    DESCRIPTION = "the LoHa factors of a toy_loha run as one NumPy .npz (a format defined in a test)"
    OPTIONS = ()
    FILE = "factors.npz"

    @staticmethod
    def export(run: RunDir, output: Path, task: str | None = None) -> Path:
        output.mkdir(parents=True)
        np.savez(output / ToyNpz.FILE, **{name: t.numpy() for name, t in ToyLoha.factors(run.model_dir).items()})
        return output


@pytest.fixture
def registered(monkeypatch):
    """The toy method and format, registered as a user's code would, and gone again after the test."""
    monkeypatch.setattr(export, "EXPORT_FORMATS", dict(EXPORT_FORMATS))
    register_export_format(ToyNpz)
    register_method(ToyLoha.NAME, ToyLoha, ToyLoha.TRAITS)
    yield
    del METHODS[ToyLoha.NAME], METHOD_TRAITS[ToyLoha.NAME]


def _train(decoder: str, data: Path, folder: Path) -> RunDir:
    """`tunelab train` on a config naming the toy method, with the learning rate left to its row."""
    config = {
        "name": "toy-loha",
        "output_dir": str(folder / "runs"),
        "model": {"name": decoder},
        "method": {"name": ToyLoha.NAME},
        "data": {
            "kind": "generation",
            "train": str(data),
            "prompt_template": "{question}",
            "response_field": "answer",
            "max_length": 48,
        },
        "training": {"epochs": 4, "batch_size": 8, "logging_steps": 2, "precision": "fp32"},
        "eval": {"max_new_tokens": 4, "baselines": []},
    }
    path = folder / "toy-loha.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli(f"train {path}") == 0
    (run,) = (folder / "runs").glob("toy-loha-*")
    return RunDir(run)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _trained_factors(run: RunDir) -> dict[str, torch.Tensor]:
    """The LoHa factors of the run as `tunelab` loads it, by the names PEFT saves them under."""
    model = load_run(run).model
    return {name.replace(".default", ""): p.detach() for name, p in model.named_parameters() if "hada_" in name}


def test_a_method_and_a_format_defined_here_train_eval_predict_export_and_serve(
    registered, tiny_decoder, copy_task_file, tmp_path
):
    run = _train(tiny_decoder, copy_task_file, tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_decoder)
    trainable = run.require_complete()["trainable"]["trainable_params"]
    assert trainable == ToyLoha.trainable_parameters(base) == 2 * (2 * 4 * (32 + 32) + 2 * 4 * (64 + 32))
    config = run.config()
    assert objective_of(config).learning_rate(config) == ToyLoha.TRAITS.learning_rates.generative
    validation_losses = [entry["eval_loss"] for entry in _lines(run.metrics_path) if "eval_loss" in entry]
    assert len(validation_losses) == 4 and validation_losses == sorted(validation_losses, reverse=True)
    trained = _trained_factors(run)
    assert len(trained) == 2 * len(ToyLoha.TARGETS) * 4  # layers x projections x factors
    assert all(factor.abs().sum() > 0 for name, factor in trained.items() if "hada_w2_b" in name)  # zeros at first

    assert cli(f"eval {run.path} --data {copy_task_file} --limit 8 --output {tmp_path / 'eval'}") == 0
    (scored,) = json.loads((tmp_path / "eval" / "data-copy.json").read_text(encoding="utf-8"))["tasks"].values()
    assert scored["examples"] == 8 and "exact_match" in scored["metrics"]
    outputs = _lines(tmp_path / "eval" / "data-copy.outputs.jsonl")
    assert len(outputs) == 8 and all({"output", "reference"} <= row.keys() for row in outputs)

    assert cli(f"predict {run.path} --input {copy_task_file} --output {tmp_path / 'predicted.jsonl'}") == 0
    predicted = _lines(tmp_path / "predicted.jsonl")
    answers = [row.pop("prediction") for row in predicted]
    assert predicted == _lines(copy_task_file) and all(answer.strip() for answer in answers)

    assert cli(f"export {run.path} --format toy_npz --output {tmp_path / 'npz'}") == 0
    with np.load(tmp_path / "npz" / ToyNpz.FILE) as archive:
        exported = {name: torch.from_numpy(archive[name]) for name in archive.files}
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[name], trained[name]) for name in exported)

    assert cli(f"merge {run.path} --output {tmp_path / 'merged'}") == 0
    merged, original = load_file(tmp_path / "merged" / "model.safetensors"), base.state_dict()
    changed = {name.split(".")[-2] for name in merged if not torch.equal(merged[name], original[name])}
    assert changed == set(ToyLoha.TARGETS)

    with in_process(load_catalog([str(run.path)])) as url:
        question = {"model": run.path.name, "messages": [{"role": "user", "content": "repeat the word film"}]}
        status, answer, _ = call(url, "/v1/chat/completions", {**question, "max_tokens": 4})
    assert status == 200 and answer["choices"][0]["message"]["content"].strip(), answer


def test_a_method_saving_a_peft_adapter_must_load_it_under_a_name():
    """`tunelab serve` and `predict --adapter` load several runs' adapters onto one base, each under its run's
    name: a module whose load cannot take that name is refused when it registers, not at its first `serve`."""

    class Unnamed(ToyLoha):
        @staticmethod
        def load(base: nn.Module, directory: Path) -> PeftModel:
            return PeftModel.from_pretrained(base, directory)

    with pytest.raises(MethodError, match="give its load an adapter_name argument"):
        register_method("toy_unnamed", Unnamed, ToyLoha.TRAITS)
    assert "toy_unnamed" not in METHODS and "toy_unnamed" not in METHOD_TRAITS
