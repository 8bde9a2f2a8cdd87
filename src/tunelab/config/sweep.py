"""The `sweep:` section (what `tunelab sweep` searches) and how its keys are read as the settings they name."""

from __future__ import annotations

import difflib
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from tunelab.config.section import Section


class SweepParam(Section):
    """One searched setting: a range (`low`, `high`, optionally `log` or `step`) or a list of `choices`."""

    low: int | float | None = None
    """Lowest value. Integer bounds (`low: 4, high: 32`) draw integers, any other bounds draw floats."""
    high: int | float | None = None
    """Highest value, included."""
    log: bool = False
    """Draw evenly in log space, as learning rates want (needs low > 0; no step)."""
    step: int | float | None = Field(None, gt=0)
    """Draw only low, low + step, low + 2 step, ... up to high."""
    choices: list[Any] | None = Field(None, min_length=1)
    """The values to choose among, each as the key takes it, e.g. [attention, all-linear, [query, key, value]]."""

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepParam:
        bounds = (self.low, self.high, self.step)
        if self.choices is not None:
            if self.log or any(value is not None for value in bounds):
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give a range, e.g. {low: 1.0e-4, high: 1.0e-2, log: true}, or choices: [...]")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step (log spacing and a fixed step exclude each other)")
        return self

    def draws_integers(self) -> bool:
        return all(isinstance(value, int) for value in (self.low, self.high, self.step) if value is not None)


class SweepConfig(Section):
    space: dict[str, SweepParam] = Field(min_length=1)
    """What to search: config keys as `key.sub=value` overrides name them (`training.learning_rate`,
    `method.lora.r`, `method.lora.target_modules`, ...), each with a range or a list of choices."""
    metric: str | None = None
    """The validation metric to optimise, as the trainer logs it (`accuracy`, `loss`, `<task>_loss` in a mixture);
    by default the one that picks the best checkpoint (training.metric_for_best). A name ending in `loss` is
    minimised, any other maximised."""
    trials: int = Field(20, ge=1)
    """Finished trials (complete, pruned or failed) the study should hold; `--trials N` overrides it."""
    pruner: Literal["median", "none"] = "median"
    """'median' stops a trial whose metric is worse than the median of earlier trials at the same validation;
    'none' runs every trial to its end."""
    startup_trials: int = Field(3, ge=0)
    """Trials that finish before any is pruned: a median of fewer says little."""
    warmup_evaluations: int = Field(0, ge=0)
    """Validations a trial runs before it may be pruned (0: from its first, at the end of its first epoch)."""
    seed: int = 0
    """Seed of the TPE sampler (each trial trains with training.seed)."""

    @field_validator("metric")
    @classmethod
    def _bare_metric(cls, metric: str | None) -> str | None:
        return metric.removeprefix("eval_") if metric else metric

    def check_space(self, root: type[BaseModel]) -> None:
        """Every key of `space` names a setting of the config `root`, and a setting of whole numbers gets integer
        bounds; ValueError saying what to write otherwise. The run's config calls this, as the sweep lives in it."""
        for key, param in self.space.items():
            field = swept_field(root, key)
            if not param.choices and not param.draws_integers() and _only_integers(field.annotation):
                raise ValueError(f"sweep.space.{key} takes whole numbers; give integer bounds (low: 4, high: 32)")

    def direction(self, metric: str) -> Literal["minimize", "maximize"]:
        """Losses go down, every other validation metric (accuracy) up, as the trainer's best checkpoint reads them."""
        return "minimize" if metric.endswith("loss") else "maximize"


NOT_SWEPT = {"sweep", "name", "output_dir"}
"""Top-level keys a sweep sets for each trial itself."""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds (also through `X | None`), or None for a setting."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)


def _only_integers(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return {m for m in members if m is not type(None)} == {int}


def swept_field(root: type[BaseModel], key: str) -> FieldInfo:
    """The setting of the config `root` that a sweep key names; ValueError, saying what exists there, for a key
    that names none."""
    model: type[BaseModel] | None = root
    walked: list[str] = []
    for part in key.split("."):
        if model is None:
            raise ValueError(f"sweep.space.{key}: '{'.'.join(walked)}' is a setting, not a section with keys")
        if not walked and part in NOT_SWEPT:
            raise ValueError(f"sweep.space.{key}: the sweep sets each trial's '{part}' itself")
        known = sorted(model.model_fields)
        if part not in known:
            guess = difflib.get_close_matches(part, known, n=1)
            hint = f" Did you mean '{'.'.join([*walked, guess[0]])}'?" if guess else ""
            where = f"section '{'.'.join(walked)}'" if walked else "the top level"
            raise ValueError(
                f"sweep.space.{key} names no setting: {where} has no key '{part}'.{hint} "
                f"Known keys there: {', '.join(k for k in known if walked or k not in NOT_SWEPT)}"
            )
        field = model.model_fields[part]
        walked.append(part)
        model = _section_type(field.annotation)
    if model is not None:
        raise ValueError(
            f"sweep.space.{key} is a section; search its settings: {', '.join(f'{key}.{k}' for k in model.model_fields)}"
        )
    return field
