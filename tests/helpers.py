"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from tunelab.config import RunConfig
from tunelab.methods import base_load_options
from tunelab.models.loading import load_base, load_tokenizer, resolve_source


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
