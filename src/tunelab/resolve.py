"""A run's words resolved against what is registered: its kind of example (`data.kind`) and its objective
(`objective:`, or the one its kind or its mixture trains by), each checking the settings it reads.

The config checks what it can by itself (`tunelab.config`); what needs the registries of kinds and objectives is
checked here, before any data or model loads, by every command that reads a config to run it (`tunelab train`,
`sweep`, `compare`, `data check`, `data clean`) and by the tests, through `check_config`.
"""

from __future__ import annotations

from tunelab.config import ConfigError, RunConfig
from tunelab.kinds import KindError, kind_of_run
from tunelab.train.objectives import ObjectiveError, objective_of


def check_config(config: RunConfig) -> None:
    """Refuse a config whose kind or objective is not registered (with a did-you-mean), or whose kind or objective
    cannot train it as configured; each message names the key to change."""
    try:
        objective = objective_of(config)
        if config.mixture is None:
            kind_of_run(config).check_run(config)
        _check_objective_fits(config, objective)
        objective.check(config)
    except (KindError, ObjectiveError) as exc:
        raise ConfigError(str(exc)) from None


def _check_objective_fits(config: RunConfig, objective) -> None:
    """The rules every objective shares: the runs it trains, and whether it reads a prompt."""
    if config.mixture is not None and not objective.trains_mixtures:
        raise ConfigError(
            f"objective '{objective.name}' trains on a `data:` run's data, not on a mixture of tasks; set objective: "
            "text_to_text "
            "(every task an instruction), multi_head (an encoder, a head per task) or task_adapters"
        )
    if config.mixture is None and not objective.trains_data_runs:
        raise ConfigError(
            f"objective '{objective.name}' trains a mixture of tasks (mixture:), not a `data:` run; drop objective "
            f"(data.kind {config.data.kind} trains with {kind_of_run(config).objective}) or give a mixture"
        )
    if "few_shot" in config.eval.baselines and objective.answers_by_head:
        raise ConfigError(
            f"eval.baselines few_shot puts solved examples in the base model's prompt, but a {objective.name} run "
            "answers through a classification head, which reads no prompt; drop few_shot from eval.baselines"
        )
