"""Helpers shared by test modules (plain functions; fixtures live in conftest.py): the data the tiny runs train on,
the configs of tiny runs, and small readers of a run's files. A test module imports from here, never from another
test module or from conftest.py."""

from __future__ import annotations

import json
import os
import random
import shlex
from pathlib import Path

import torch
import yaml
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tunelab.config import RunConfig, build_config
from tunelab.methods import base_load_options
from tunelab.models.loading import load_base, load_tokenizer, resolve_source

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The real datasets (../shared/data beside the checkout) that integration tests read in place."""

POSITIVE = ["great", "wonderful", "superb", "delightful", "brilliant", "moving"]
NEGATIVE = ["awful", "boring", "dreadful", "tedious", "clumsy", "dull"]
NOUNS = ["film", "story", "cast", "score", "ending", "script"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_yaml(path: Path, settings: dict) -> Path:
    """A config file as a user writes one, for the tests that go through `tunelab COMMAND config.yaml`."""
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def sentiment_rows(count: int = 96, seed: int = 0) -> list[dict]:
    """A trivially separable sentiment set: the adjective decides the label (even rows positive)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append(
            {"text": f"the {rng.choice(NOUNS)} was {adjective}", "label": "positive" if positive else "negative"}
        )
    return rows


def copy_rows(words: list[str]) -> list[dict]:
    """Prompt -> answer pairs where the answer repeats the prompt's last word."""
    return [{"question": f"repeat the word {word}", "answer": word} for word in words]


def texts(count: int, seed: int = 0) -> list[str]:
    """Short texts from a tiny grammar: a decoder that learns it becomes far less perplexed by new ones."""
    rng = random.Random(seed)
    return [
        " ".join(f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE)} ." for _ in range(rng.randint(2, 6)))
        for _ in range(count)
    ]


CONFIG_DEFAULT = object()
"""A training value that leaves the setting out of a tiny run's config, so the config's own default holds (a
method's learning rate, say)."""

TINY_TRAINING = {"batch_size": 8, "learning_rate": 3e-3, "logging_steps": 2}
"""What most tiny runs train with: seconds on the tiny models, enough steps to see the loss fall."""

ANSWER_FIELDS = {"prompt_template": "{question}", "response_field": "answer"}
"""How a prompt -> answer run reads `copy_rows`."""


KIND_OF_MODEL_TASK = {"classification": "classification", "causal_lm": "generation", "seq2seq": "generation"}
"""The kind of example a tiny run trains, by the word its test names it with: whether the tiny model it trains is
a decoder or an encoder-decoder is read from that model (data.kind says only what the examples are)."""


def tiny_run_settings(
    task: str,
    model_dir: str,
    data_file: Path | str,
    out: Path | None = None,
    *,
    name: str | None = None,
    method: str | dict | None = None,
    data: dict | None = None,
    evaluation: dict | None = None,
    **training,
) -> dict:
    """The settings of a tiny run, as a config file holds them: what every tiny run of the task shares (its data
    fields and lengths, fp32) and what the caller gives. A setting the caller leaves out is left out of the settings,
    so the config's own default holds; a training value of CONFIG_DEFAULT is left out too."""
    fields = (
        {"max_length": 32} if task == "classification" else {**ANSWER_FIELDS, "max_length": 48, "max_target_length": 8}
    )
    settings = {
        "model": {"name": str(model_dir)},
        "data": {"kind": KIND_OF_MODEL_TASK[task], "train": str(data_file), **fields, **(data or {})},
        "training": {
            "precision": "fp32",
            **{key: value for key, value in training.items() if value is not CONFIG_DEFAULT},
        },
    }
    if name is not None:
        settings["name"] = name
    if out is not None:
        settings["output_dir"] = str(out)
    if method is not None:
        settings["method"] = {"name": method} if isinstance(method, str) else method
    if evaluation is not None:
        settings["eval"] = evaluation
    return settings


def classification_config(
    model_dir, data_file, out, method="full", name="tiny-cls", data=None, evaluation=None, **training
):
    """A tiny classifier: 3 epochs of TINY_TRAINING unless `training` says otherwise."""
    training = {"epochs": 3, **TINY_TRAINING, **training}
    return build_config(
        tiny_run_settings(
            "classification",
            model_dir,
            data_file,
            out,
            name=name,
            method=method,
            data=data,
            evaluation=evaluation,
            **training,
        )
    )


def generation_config(
    model_dir, data_file, out, task="causal_lm", method="lora", name=None, data=None, evaluation=None, **training
):
    """A tiny prompt -> answer run (decoder or encoder-decoder) on `copy_rows`: 4 epochs of TINY_TRAINING and
    4 generated tokens unless told otherwise."""
    training = {"epochs": 4, **TINY_TRAINING, **training}
    return build_config(
        tiny_run_settings(
            task,
            model_dir,
            data_file,
            out,
            name=name or f"tiny-{task}",
            method=method,
            data=data,
            evaluation={"max_new_tokens": 4, **(evaluation or {})},
            **training,
        )
    )


def method_config(task, model_dir, data_file, out, method, **training):
    """A tiny run of `method` for the task: one epoch at the method's own default learning rate, 4 virtual tokens
    for the prompt-learning methods."""
    settings = {
        "name": f"tiny-{task}-{method}",
        "method": {"name": method, "prompt": {"num_virtual_tokens": 4}, "prefix": {"num_virtual_tokens": 4}},
        "evaluation": {"max_new_tokens": 4},
        **{"epochs": 1, "learning_rate": CONFIG_DEFAULT, "logging_steps": 1, **training},
    }
    if task == "classification":
        return classification_config(model_dir, data_file, out, data={"max_target_length": 8}, **settings)
    return generation_config(model_dir, data_file, out, task, data={"max_length": 32}, **settings)


def mixture_config(model_dir, out, objective=None, method="lora", **mixture):
    """A tiny run on a mixture of two built-in tasks (24 SST-2 and 8 RTE examples), one epoch; `mixture` overrides."""
    return build_config(
        {
            "name": "tiny-mix",
            "objective": objective,
            "output_dir": str(out),
            "model": {"name": model_dir},
            "data": {"max_length": 96, "max_target_length": 16},
            "method": {"name": method},
            "training": {"epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 2, "precision": "fp32"},
            "mixture": {
                "tasks": [{"task": "sst2", "max_examples": 24}, {"task": "rte", "max_examples": 8}],
                "eval_examples": 4,
                "validation_examples": 4,
                **mixture,
            },
        }
    )


def lm_config(model_dir, data_file, out, method="full", method_settings=None, **training):
    """A tiny continued pre-training run on `texts` (field `body`): 3 epochs of TINY_TRAINING unless told otherwise."""
    return build_config(
        {
            "name": f"tiny-lm-{method}",
            "output_dir": str(out),
            "model": {"name": model_dir},
            "data": {"kind": "language_modeling", "train": str(data_file), "text_field": "body", "max_length": 32},
            "method": {"name": method, **(method_settings or {})},
            "training": {"epochs": 3, **TINY_TRAINING, "precision": "fp32", **training},
        }
    )


SUBJECTS = ["cats", "tea", "rain", "maps", "bread", "music", "trees", "boats", "stars", "clocks", "shoes", "lamps"]


def subject_pairs(subjects: list[str]) -> list[dict]:
    """Preference pairs (explicit prompt, TRL's form) a tiny model learns to tell apart within a few steps: the
    chosen answer names the prompt's subject, the rejected one declines."""
    return [
        {"prompt": f"Tell me about {subject}.", "chosen": f"I like {subject} a lot.", "rejected": "I will not say."}
        for subject in subjects
    ]


def unpaired_subject_examples(subjects: list[str]) -> list[dict]:
    """Unpaired examples as kto_demo holds them (prompt and completion as messages, a good/bad label): the good
    answers name the subject, the bad ones decline."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Tell me about {subject}."}],
            "completion": [
                {"role": "assistant", "content": f"I like {subject} a lot." if number % 2 == 0 else "I will not say."}
            ],
            "label": number % 2 == 0,
        }
        for number, subject in enumerate(subjects)
    ]


def preference_run_settings(model_dir, data_file: Path, method: str = "lora", data=None, **training) -> dict:
    """The settings of a tiny preference run (data.kind: preference), as a config file holds them: DPO (unless
    `training` sets `preference`) for 4 steps of 4 pairs at 1e-2, LoRA without dropout, no baseline scored; `data`
    adds data settings."""
    return {
        "name": f"tiny-preference-{method}",
        "model": {"name": str(model_dir)},
        "data": {
            "kind": "preference",
            "train": str(data_file),
            "max_length": 64,
            "max_eval_examples": 2,
            **(data or {}),
        },
        "method": {"name": method, "lora": {"dropout": 0.0}},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "precision": "fp32",
            **training,
        },
        "eval": {"max_new_tokens": 4, "baselines": []},
    }


def preference_run_config(model_dir, data_file: Path, out, method: str = "lora", data=None, **training) -> RunConfig:
    """A tiny preference run (`preference_run_settings`) writing under `out`."""
    return build_config(
        {**preference_run_settings(model_dir, data_file, method, data, **training), "output_dir": str(out)}
    )


def sweep_config_file(tmp_path, model, data, space, method="lora", epochs=2, **sweep) -> str:
    """A tiny classifier's config with a sweep section, written to tmp_path/sweep.yaml (runs under tmp_path/runs)."""
    path = tmp_path / "sweep.yaml"
    config = {
        "name": "tiny-sweep",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": model},
        "data": {"train": str(data), "max_length": 32},
        "method": {"name": method},
        "training": {"epochs": epochs, "batch_size": 8, "logging_steps": 5, "precision": "fp32"},
        "sweep": {"space": space, **sweep},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(path)


def trials_of(directory) -> dict[int, dict]:
    """A sweep's trials by number, from its trials.json."""
    return {row["number"]: row for row in json.loads((directory / "trials.json").read_text())["trials"]}


def only_run(output_dir: Path):
    """The one run directory under an output folder."""
    from tunelab.runs import RunDir

    (path,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return RunDir(path)


def losses_by_step(run) -> dict[int, float]:
    """The training losses a run logged, by step; each step logged once and in order."""
    entries = [e for e in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in e]
    steps = [e["step"] for e in entries]
    assert steps == sorted(set(steps)), f"a step is logged twice or out of order: {steps}"
    return {e["step"]: e["loss"] for e in entries}


def copied_run(run, folder: Path):
    """A copy of a shared run (see conftest's `trained_run`) for a test that writes into its run directory."""
    import shutil

    from tunelab.runs import RunDir

    return RunDir(shutil.copytree(run.path, folder / run.path.name))


def logged_losses(run) -> list[float]:
    """Every training loss a run logged, in order."""
    return [e["loss"] for e in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in e]


def session_home(tmp_path_factory) -> Path:
    """The session's TUNELAB_HOME, where registry models are prepared once: the session's basetemp, or under
    pytest-xdist (each worker its own basetemp beneath a per-session parent) that parent, so the workers share
    one prepared copy, `prepare`'s lock letting one convert while the others wait."""
    basetemp = tmp_path_factory.getbasetemp()
    return (basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp) / "tunelab-home"


def descend(model, batch, steps: int = 10, lr: float = 1e-2) -> list[float]:
    """Full-batch AdamW steps on the trainable weights; the losses seen (dropout off, so the descent is deterministic)."""
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.eval()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    return losses


def load_for_config(config: RunConfig, labels: list[str] | None = None, precision: str = "fp32"):
    """The base a run trains, stored as its method and precision want it, and its tokenizer (as `tunelab train` loads them)."""
    tokenizer = load_tokenizer(resolve_source(config.model.name, config.model.revision))
    return load_base(config, labels, **base_load_options(config, precision)), tokenizer


def only_task(evaluation: dict) -> dict:
    """The one task of a one-task run's eval.json: its metric, and its base and tuned reports."""
    (task,) = evaluation["tasks"].values()
    return task


def value(report: dict, metric: str) -> float:
    """A metric's value (0-100) in a task report (`TaskResult.as_dict`)."""
    return report["metrics"][metric]["value"]


def train_in_process(model, tokenizer, config: RunConfig, run):
    """Train an already adapted model as `tunelab train` would (planned order, trainer and collator of the run's
    objective), without the rest of the run's lifecycle; returns the trainer."""
    from tunelab.data.plan import plan_training
    from tunelab.data.taskset import load_taskset
    from tunelab.train.objectives import objective_of
    from tunelab.train.trainer import build_trainer

    objective = objective_of(config)
    tasks = load_taskset(config)
    plan = plan_training(config, tasks, one_task_per_batch=objective.one_task_per_batch)
    feed = objective.feed(model, config, tasks, plan, tokenizer)
    trainer = build_trainer(model, tokenizer, config, run, plan, objective, feed, "fp32")
    trainer.train()
    return trainer


def cli(command: str) -> int:
    """`tunelab COMMAND` run in-process, the command line written as a user types it (split as a shell would)."""
    from tunelab.cli import main

    return main(shlex.split(command))


TINY_VOCAB = 97


TINY_SHAPE = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
"""Two layers with grouped-query attention: small enough to run every attention path in a test."""


def tiny_llama():
    """A tiny Llama with random weights (seed 0)."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY_SHAPE))


def tiny_gemma3():
    """Gemma 3 alternates sliding-window and global layers; a 4-token window makes the sliding mask matter."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        **TINY_SHAPE, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
    )
    return Gemma3ForCausalLM(config)


def scored_result(spec, predictions, references):
    """A task's result from given predictions, scored as an evaluation scores it (200 bootstrap samples)."""
    from tunelab.eval.runner import TaskResult, score

    result = TaskResult(spec.name, spec.kind, len(predictions), predictions=predictions, references=references)
    result.scores = score(spec, result, samples=200)
    return result


def chat_config(model_dir, data_dir: Path, out, method: str = "lora", **data):
    """A tiny chat run (data.kind: chat): 2 steps on 16 conversations of `data_dir` (../shared/data/chat or
    toolcall), no test split scored, no baseline; `data` adds data settings (chat_template)."""
    return build_config(
        {
            "name": f"tiny-chat-{method}",
            "output_dir": str(out),
            "model": {"name": str(model_dir)},
            "data": {
                "kind": "chat",
                "train": str(data_dir / "train.jsonl"),
                "max_length": 256,
                "max_train_examples": 16,
                "max_eval_examples": 2,
                **data,
            },
            "method": {"name": method},
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
            "eval": {"max_new_tokens": 8, "baselines": []},
        }
    )


POLITE = ["Gladly:", "Happy to help:", "Of course:", "Certainly:"]
CURT = ["No.", "Whatever.", "Ask someone else.", "Not now."]


def preference_rows(count: int = 80, seed: int = 0) -> list[dict]:
    """Preference pairs on one pattern a tiny model learns in a few DPO steps: the chosen answer opens politely and
    answers, the rejected one brushes the question off. Each answer's words are drawn, so a random model finds
    either side likelier about as often as not."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        noun, adjective = rng.choice(NOUNS), rng.choice(POSITIVE + NEGATIVE)
        rows.append(
            {
                "prompt": f"What did you think of the {noun}?",
                "chosen": f"{rng.choice(POLITE)} the {noun} was {adjective}.",
                "rejected": f"{rng.choice(CURT)} {rng.choice(NOUNS)} {rng.choice(POSITIVE + NEGATIVE)}",
            }
        )
    return rows


def preference_config(model_dir, data_file: Path, out, method: str = "lora", **evaluation):
    """A tiny DPO run (data.kind: preference) on `preference_rows`: 8 steps of 4 pairs at a high rate, 8 held-out
    pairs scored before and after; `evaluation` adds eval settings (retention_suite)."""
    return build_config(
        {
            "name": f"tiny-dpo-{method}",
            "output_dir": str(out),
            "model": {"name": str(model_dir)},
            "data": {"kind": "preference", "train": str(data_file), "max_length": 64},
            "method": {"name": method},
            "training": {
                "max_steps": 8,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "logging_steps": 2,
                "precision": "fp32",
            },
            "eval": {"max_new_tokens": 8, **evaluation},
        }
    )
