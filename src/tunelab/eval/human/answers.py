"""The answers to rate: which runs can be rated against each other, and both systems' answers to the same prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.eval.human.store import HumanEvalError
from tunelab.kinds import answers_by_head, kind_of_run, objective_name
from tunelab.runs import RunDir

if TYPE_CHECKING:
    from tunelab.records import Record
    from tunelab.tasks import TaskSpec

TRAINING_ONLY_DATA_FIELDS = {
    "validation",
    "validation_fraction",
    "max_train_examples",
    "max_target_length",
    "response_field",
}
"""Data settings that cannot change a run's test prompts, so two runs may differ in them and still be compared."""


def check_generation_run(run: RunDir) -> None:
    """Only generated text can be rated, and only a finished run has a tuned model to generate it."""
    config = run.config()
    generates = not answers_by_head(config) and (config.mixture is not None or kind_of_run(config).prompted)
    if not generates:
        trains = f"{config.data.kind} examples" if config.mixture is None else f"a {objective_name(config)} model"
        raise HumanEvalError(
            f"run {run.path} trains {trains}; human rating is for generated text (runs of generation "
            "examples, on a decoder or an encoder-decoder). Score a classifier with `tunelab eval`"
        )
    run.require_complete()


def _test_prompt_settings(run: RunDir) -> dict:
    """The settings that decide a run's test prompts: its data section, or, for a mixture, how its test draws are made."""
    config = run.config()
    if config.mixture is None:
        return {
            f"data.{key}": value
            for key, value in config.data.model_dump().items()
            if key not in TRAINING_ONLY_DATA_FIELDS
        }
    return {
        "mixture.eval_examples": config.mixture.eval_examples,
        "training.seed": config.training.seed,
        "data.max_length": config.data.max_length,
    }


def check_same_prompts(run_a: RunDir, run_b: RunDir) -> None:
    """Two runs are only comparable item by item when their test prompts are the same."""
    if run_a.path.resolve() == run_b.path.resolve():
        raise HumanEvalError(
            f"both systems are run {run_a.path}; give two different runs, or one run to compare with its base model"
        )
    settings_a, settings_b = _test_prompt_settings(run_a), _test_prompt_settings(run_b)
    differing = [
        f"{key}: {settings_a.get(key)!r} vs {settings_b.get(key)!r}"
        for key in settings_a.keys() | settings_b.keys()
        if settings_a.get(key) != settings_b.get(key)
    ]
    if differing:
        raise HumanEvalError(
            f"runs {run_a.path} and {run_b.path} do not share their test data and prompt template ("
            + "; ".join(differing)
            + "); compare runs trained on the same data, or compare each with its base model"
        )


def system_names(run_a: RunDir, run_b: RunDir | None) -> tuple[str, str]:
    """Readable, distinct system names: the run folder names, or the base model's name for a base."""
    if run_b is None:
        return f"base {run_a.config().model.name}", f"tuned {run_a.path.name}"
    if run_a.path.name == run_b.path.name:
        return f"tuned {run_a.path}", f"tuned {run_b.path}"
    return f"tuned {run_a.path.name}", f"tuned {run_b.path.name}"


def generate_outputs(
    run_a: RunDir, run_b: RunDir | None, n: int, task: str | None
) -> tuple[list[str], list[str], list[str]]:
    """The first n test prompts of the run's task (`task` names one of a mixture's) and the answers of system A
    and B to them, one model in memory at a time.

    The model stack is imported here so that rating and reporting never pay for loading torch.
    """
    from tunelab.data.taskset import task_specs, test_records
    from tunelab.eval.runner import answers
    from tunelab.eval.targets import base_target

    config = run_a.config()
    spec = task_specs(config, run_a.state().get("labels")).pick(task)
    records = test_records(config, spec)
    if n < 1 or n > len(records):
        raise HumanEvalError(
            f"run {run_a.path} has {len(records)} test records of task {spec.name}; ask for between 1 "
            f"and {len(records)} (--n)"
        )
    records = records[:n]
    system_a, tuned = (config.model.name if run_b is None else str(run_a.path)), str((run_b or run_a).path)
    outputs = []
    for reference in (
        system_a,
        tuned,
    ):  # a base is asked through the run's tokenizer (its chat template); a run as it is
        target = base_target(reference, tuned).for_task(spec.name)
        outputs.append(answers(target, spec, records))
        del target
    return [shown_prompt(spec, record) for record in records], outputs[0], outputs[1]


def shown_prompt(spec: TaskSpec, record: Record) -> str:
    """A record's prompt as a person rating the answers to it reads it: the task's template filled, or the turns an
    untemplated kind's model answers from (a conversation's, a preference pair's), the system prompt included."""
    from tunelab.kinds.chat import shown_turns

    return spec.prompt(record) if spec.handler.templated else shown_turns(spec.handler.prompt_messages(spec, record))
