"""The whole run's config: its sections, and the rules that tie them together (method, mixture, sweep).

A run is one YAML file (plus ``key.sub=value`` overrides) validated here before any model loads. Nothing deeper
in the pipeline re-validates or invents defaults, so every field carries its default and a docstring that
explains it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError, ValidationInfo, field_validator, model_validator

from tunelab.config.errors import describe_error
from tunelab.config.methods import METHOD_TRAITS, MethodConfig
from tunelab.config.mixture import MixtureConfig
from tunelab.config.overrides import merge_sections, nest_keys
from tunelab.config.section import Section
from tunelab.config.sections import DataConfig, EvalConfig, ModelConfig, TrainingConfig
from tunelab.config.sweep import SweepConfig
from tunelab.config.vocabulary import read_old_keys


class RunConfig(Section):
    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>-<timestamp>`."""
    output_dir: str = "runs"
    """Where run directories are created."""
    objective: str | None = None
    """How the run trains: a registered objective (classifier, text_to_text, multi_head, task_adapters,
    language_model, or one a plugin registers). Absent, it follows from the run: a mixture trains text_to_text, a
    `data:` run by its data.kind (classification -> classifier, language_modeling -> language_model, any other kind
    -> text_to_text). Configs written before say `mixture.architecture:`, read the same way with a note."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    mixture: MixtureConfig | None = None
    """Multi-task training: a mixture of task files instead of `data` (see README, multi-task)."""
    sweep: SweepConfig | None = None
    """A hyperparameter search for `tunelab sweep` (README, sweeps); `tunelab train` ignores it."""

    @model_validator(mode="before")
    @classmethod
    def _read_old_keys(cls, data: Any, info: ValidationInfo) -> Any:
        """Configs written before `data.kind` and `objective` (`task_type:`, `task:`, `mixture.architecture:`)."""
        return read_old_keys(data, notes=not (info.context or {}).get("quiet", False))

    @field_validator("sweep")
    @classmethod
    def _sweep_keys_name_settings(cls, sweep: SweepConfig | None) -> SweepConfig | None:
        if sweep is not None:
            sweep.check_space(cls)
        return sweep

    @model_validator(mode="after")
    def _check_sections(self) -> RunConfig:
        """The rules this config can check by itself; those that read the kinds and objectives registered are
        `tunelab.resolve.check_config`'s."""
        if self.mixture is None:
            return self._check_method_applies()
        if self.data.dedup != "off" or self.data.drop_overlap:
            raise ValueError(
                "data.dedup and data.drop_overlap clean a `data:` run's training file; a mixture reads its tasks as "
                "they are. Clean a task's file with `tunelab data clean FILE --output CLEAN.jsonl` and point a task "
                "YAML's source at it, or drop these settings"
            )
        stages = self.mixture.stage_list()
        several = len({t.task for s in stages for t in s.tasks}) > 1
        if self.training.early_stopping_patience and several:
            raise ValueError(
                "training.early_stopping_patience needs a best checkpoint, and a mixture of several tasks keeps its "
                "last weights; drop it for this run"
            )
        traits = METHOD_TRAITS[self.method.name]
        if traits.prompt_learning and any(t.loss_weight != 1 for s in stages for t in s.tasks):
            raise ValueError(
                f"method '{self.method.name}' trains through the model's own loss, which takes no per-task "
                "loss_weight; drop the loss weights (use weight to sample a task more) or use lora"
            )
        return self

    def _check_method_applies(self) -> RunConfig:
        """Refuse a method whose row confines it to other kinds of example, saying why."""
        traits = METHOD_TRAITS[self.method.name]
        if not traits.applies_to(self.data.kind):
            why = f" ({traits.kinds_reason})" if traits.kinds_reason else ""
            raise ValueError(
                f"method '{self.method.name}' is defined only for data.kind {' / '.join(sorted(traits.kinds))}, "
                f"not '{self.data.kind}'{why}; use lora, ia3, prompt or full"
            )
        return self

    @model_validator(mode="after")
    def _check_sweep(self) -> RunConfig:
        """Every searched value must be one its key takes in this config, so no trial fails on a value the
        config could have refused."""
        if self.sweep is None:
            return self
        chosen = self.training.metric_for_best
        if self.sweep.metric and chosen and chosen.removeprefix("eval_") != self.sweep.metric:
            raise ValueError(
                f"sweep.metric '{self.sweep.metric}' differs from training.metric_for_best '{chosen}', which picks "
                "the checkpoint each trial keeps; give one of them, or the same metric to both"
            )
        plain = self.model_dump(mode="json", exclude={"sweep"})
        for key, param in self.sweep.space.items():
            for value in param.choices if param.choices is not None else (param.low, param.high):
                try:
                    RunConfig.model_validate(merge_sections(plain, nest_keys({key: value})))
                except ValidationError as exc:
                    problems = "; ".join(
                        describe_error(e, RunConfig).removeprefix("(top level): Value error, ") for e in exc.errors()
                    )
                    raise ValueError(f"sweep.space.{key}: this config cannot take {value!r} ({problems})") from None
        return self
