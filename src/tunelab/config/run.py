"""The whole run's config: its sections, and the rules that tie them together (task type, method, mixture, sweep).

A run is one YAML file (plus ``key.sub=value`` overrides) validated here before any model loads. Nothing deeper
in the pipeline re-validates or invents defaults, so every field carries its default and a docstring that
explains it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from tunelab.config.errors import describe_error
from tunelab.config.methods import METHOD_TRAITS, MethodConfig
from tunelab.config.mixture import MixtureConfig
from tunelab.config.overrides import merge_sections, nest_keys
from tunelab.config.section import Section
from tunelab.config.sections import DataConfig, EvalConfig, ModelConfig, TrainingConfig
from tunelab.config.sweep import SweepConfig

TaskType = Literal["classification", "causal_lm", "seq2seq", "language_modeling"]


class RunConfig(Section):
    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>-<timestamp>`."""
    task_type: TaskType = Field("classification", validation_alias=AliasChoices("task_type", "task"))
    """'classification' (encoder + head), 'causal_lm' (prompt -> completion, decoder), 'seq2seq' (encoder-decoder)
    or 'language_modeling' (continued pre-training of a decoder on raw text, `data.text_field`: the text packed
    into `data.max_length` blocks, the loss on every token, perplexity on the held-out texts before and after).
    Configs written before the rename say `task:`, which is read the same way."""
    output_dir: str = "runs"
    """Where run directories are created."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    mixture: MixtureConfig | None = None
    """Multi-task training: a mixture of task files instead of `data` (see README, multi-task)."""
    sweep: SweepConfig | None = None
    """A hyperparameter search for `tunelab sweep` (README, sweeps); `tunelab train` ignores it."""

    @field_validator("sweep")
    @classmethod
    def _sweep_keys_name_settings(cls, sweep: SweepConfig | None) -> SweepConfig | None:
        if sweep is not None:
            sweep.check_space(cls)
        return sweep

    @model_validator(mode="after")
    def _check_task_fields(self) -> RunConfig:
        if self.mixture is not None:
            return self._check_mixture()
        if self.task_type == "language_modeling":
            return self._check_language_modeling()
        if self.task_type != "classification" and not (self.data.prompt_template or self.data.prompt_field):
            raise ValueError(
                f"task_type '{self.task_type}' needs data.prompt_template (e.g. 'Summarise:\\n{{dialogue}}') "
                "or data.prompt_field naming the field that holds the prompt"
            )
        return self._check_method_applies()

    def _check_method_applies(self) -> RunConfig:
        """Refuse a method whose row confines it to other task types, saying why."""
        traits = METHOD_TRAITS[self.method.name]
        if not traits.applies_to(self.task_type):
            why = f" ({traits.task_types_reason})" if traits.task_types_reason else ""
            raise ValueError(
                f"method '{self.method.name}' is defined only for task_type {' / '.join(sorted(traits.task_types))}, "
                f"not '{self.task_type}'{why}; use lora, ia3, prompt or full"
            )
        return self

    def _check_language_modeling(self) -> RunConfig:
        """Raw text has no prompt and no answer: refuse settings that would read them, naming the key."""
        if self.data.prompt_template or self.data.prompt_field:
            raise ValueError(
                "task_type 'language_modeling' trains on the raw text of data.text_field; drop data.prompt_template "
                "and data.prompt_field (use task_type causal_lm for prompt -> answer training)"
            )
        self._check_method_applies()
        if "few_shot" in self.eval.baselines:
            raise ValueError(
                "eval.baselines few_shot puts solved examples before a prompt; language modelling scores raw text "
                "(perplexity) and has no prompt: use baselines [zero_shot] or []"
            )
        return self

    def _check_mixture(self) -> RunConfig:
        architecture = self.mixture.architecture
        traits = METHOD_TRAITS[self.method.name]
        if self.task_type == "language_modeling":
            raise ValueError(
                "task_type 'language_modeling' trains on the raw text of data.train, not on a mixture of tasks; "
                "drop mixture (a two-stage recipe trains the language-modelling run first, then names its run "
                "directory as model.name of the next)"
            )
        if self.data.dedup != "off" or self.data.drop_overlap:
            raise ValueError(
                "data.dedup and data.drop_overlap clean a `data:` run's training file; a mixture reads its tasks as "
                "they are. Clean a task's file with `tunelab data clean FILE --output CLEAN.jsonl` and point a task "
                "YAML's source at it, or drop these settings"
            )
        if architecture == "multi_head" and (self.task_type != "classification" or self.method.name != "full"):
            raise ValueError(
                "mixture.architecture 'multi_head' fine-tunes a shared encoder and its classification heads: "
                "set task_type: classification and method.name: full"
            )
        if architecture != "multi_head" and self.task_type == "classification":
            raise ValueError(
                f"mixture.architecture '{architecture}' phrases tasks as instructions: set task_type: causal_lm "
                "(or seq2seq), or use architecture multi_head for an encoder"
            )
        if architecture == "task_adapters" and (
            not (traits.lora_family and not traits.quantized_base) or self.task_type != "causal_lm"
        ):
            raise ValueError(
                "mixture.architecture 'task_adapters' trains one LoRA adapter per task of a decoder: "
                "set task_type: causal_lm and method.name: lora"
            )
        stages = self.mixture.stage_list()
        if traits.prompt_learning and any(t.loss_weight != 1 for s in stages for t in s.tasks):
            raise ValueError(
                f"method '{self.method.name}' trains through the model's own loss, which takes no per-task "
                "loss_weight; drop the loss weights (use weight to sample a task more) or use lora"
            )
        several = len({t.task for s in stages for t in s.tasks}) > 1
        if self.training.early_stopping_patience and (several or architecture == "multi_head"):
            raise ValueError(
                "training.early_stopping_patience needs a best checkpoint, and a mixture of several tasks or a "
                "multi-head model keeps its last weights; drop it for this run"
            )
        return self

    @model_validator(mode="after")
    def _few_shot_needs_a_prompt(self) -> RunConfig:
        architecture = self.architecture()
        if "few_shot" in self.eval.baselines and architecture in ("classifier", "multi_head"):
            raise ValueError(
                f"eval.baselines few_shot puts solved examples in the base model's prompt, but a {architecture} run "
                "answers through a classification head, which reads no prompt; drop few_shot from eval.baselines"
            )
        return self

    def architecture(self) -> str:
        """How the run's model answers its tasks: 'classifier' (one head: a `data:` classification run),
        'text_to_text' (a `data:` generation run), 'language_model' (raw text, continued pre-training), or the
        mixture's own architecture."""
        if self.mixture is not None:
            return self.mixture.architecture
        if self.task_type == "language_modeling":
            return "language_model"
        return "classifier" if self.task_type == "classification" else "text_to_text"

    def model_task(self) -> str:
        """The kind of model the run loads and how it answers: a language-modelling run tunes a causal LM."""
        return "causal_lm" if self.task_type == "language_modeling" else self.task_type

    def learning_rate(self) -> float:
        """The learning rate to train with: the configured one, or the method's measured default."""
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        rates = METHOD_TRAITS[self.method.name].learning_rates
        return rates.with_head if self.task_type == "classification" else rates.generative

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
