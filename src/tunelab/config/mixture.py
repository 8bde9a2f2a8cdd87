"""The `mixture:` section: several tasks trained together, in one stage or a curriculum of stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.config.section import Section


class MixtureTask(Section):
    task: str
    """A built-in task name (`tunelab tasks list`) or a task YAML path."""
    weight: float = Field(1.0, gt=0)
    """Multiplies the task's sampling rate (after the strategy), then rates are renormalised."""
    loss_weight: float = Field(1.0, ge=0)
    """Multiplies the loss of this task's examples (weighted loss; 0 trains nothing on it)."""
    max_examples: int | None = Field(None, ge=1)
    """Training examples available from this task: a seeded draw of its train split; all when absent."""


class StageConfig(Section):
    name: str | None = None
    """Label used in logs and the run card (default stage-1, stage-2, ...)."""
    tasks: list[MixtureTask] = Field(min_length=1)
    """This stage's own mixture."""
    steps: int | None = Field(None, ge=1)
    """Optimiser steps spent in this stage; when absent the stage runs `epochs` passes over its mix."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the stage's per-epoch mix when `steps` is absent."""


class MixtureConfig(Section):
    tasks: list[MixtureTask] = []
    """The tasks trained together (one stage); or use `stages` for a curriculum."""
    stages: list[StageConfig] = []
    """Ordered curriculum stages, each its own mixture and budget (also intermediate fine-tuning: related tasks first, then the target)."""
    strategy: Literal["proportional", "capped", "temperature", "equal"] = "proportional"
    """How examples per task per epoch are chosen: proportional to size, size capped at `cap` (T5), size^(1/temperature), or equal."""
    cap: int | None = Field(None, ge=1)
    """Per-task size cap for the 'capped' strategy."""
    temperature: float = Field(2.0, ge=1)
    """Temperature T of the 'temperature' strategy (1 = proportional; larger flattens towards equal)."""
    examples_per_epoch: int | None = Field(None, ge=1)
    """Draws per epoch across all tasks; default the total of the tasks' available examples."""
    balanced_batches: bool = False
    """Interleave tasks so every batch holds them in their mixture shares, instead of a plain shuffle."""
    templates: Literal["first", "all"] = "all"
    """'all': each training example gets one of its task's instruction templates at random (seeded), FLAN style; 'first': always the first."""
    eval_only: list[str] = []
    """Held-out tasks: never trained on, scored before and after tuning to measure generalisation to unseen tasks."""
    eval_examples: int = Field(100, ge=1)
    """Test examples per task for the before/after scores (a seeded draw)."""
    validation_examples: int = Field(50, ge=1)
    """Validation examples per trained task for the per-task validation loss during training."""
    shared_adapter: bool = False
    """With objective task_adapters: also train one adapter shared by every task, active together with the task's own."""

    @model_validator(mode="after")
    def _tasks_or_stages(self) -> MixtureConfig:
        if bool(self.tasks) == bool(self.stages):
            raise ValueError("mixture needs either tasks (one stage) or stages (a curriculum), not both or neither")
        if self.strategy == "capped" and self.cap is None:
            raise ValueError("mixture.strategy 'capped' needs mixture.cap, the per-task size cap (e.g. 1000)")
        return self

    def stage_list(self) -> list[StageConfig]:
        """The curriculum; a plain task list is one stage."""
        return self.stages or [StageConfig(name="mixture", tasks=self.tasks)]
