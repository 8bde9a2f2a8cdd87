"""A complete run's tuned model, loaded back as its objective saved it: what every command after training answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import RunConfig
from tunelab.models.loading import load_tokenizer
from tunelab.runs import RunDir
from tunelab.train.objectives import objective_of


@dataclass
class LoadedRun:
    """A complete run's tuned model, ready to answer, with what it was trained as."""

    run: RunDir
    model: Any
    tokenizer: Any
    config: RunConfig
    labels: list[str] | None
    """A classifier's labels in head order (None for other objectives)."""


def load_run(run: RunDir, finished: bool = True) -> LoadedRun:
    """The tuned model of a complete run of any objective, in eval mode (`finished=False`: the model a run has just
    saved, which its end-of-training scores read as every later command will)."""
    state = run.require_complete() if finished else run.state()
    config = run.config()
    labels = state.get("labels")
    model = objective_of(config).load_trained(config, run.model_dir, labels)
    model.eval()
    return LoadedRun(run, model, load_tokenizer(str(run.model_dir)), config, labels)
