"""The model card (README.md) of a run: what was tuned, how, on what, and the evidence."""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.eval.bootstrap import format_interval
from tunelab.kinds import kind_of_run
from tunelab.runs import run_words
from tunelab.train.objectives import objective_of


def _score(result: dict | None, metric: str) -> str:
    if result is None:
        return "not scored"
    if "skipped" in result:
        return "skipped"
    return format_interval(result["metrics"][metric]) if metric in result["metrics"] else "not scored"


def _change(base: dict | None, tuned: dict, metric: str) -> str:
    if any(metric not in (result or {}).get("metrics", {}) for result in (base, tuned)):
        return ""
    return f"{tuned['metrics'][metric]['value'] - base['metrics'][metric]['value']:+.2f}"


def _baseline_columns(evaluation: dict) -> list[tuple[str, str]]:
    """(eval.json key, header) of each baseline column: the base model zero-shot, and few-shot when it was scored
    (runs from before few-shot baselines have no `few_shot` key)."""
    few_shot = [task["few_shot"] for task in evaluation["tasks"].values() if task.get("few_shot")]
    if not few_shot:
        return [("base", "base")]
    shots = next((result["shots"] for result in few_shot if "shots" in result), None)
    return [("base", "base 0-shot"), ("few_shot", f"base {shots}-shot" if shots else "base few-shot")]


def results_table(evaluation: dict) -> str:
    """Per task: each of its metrics before tuning (zero-shot, and few-shot when scored) and after (95% CIs),
    held-out tasks marked, and, for several tasks, the macro averages of their primary metrics. The change is
    tuned minus the zero-shot base."""
    columns = _baseline_columns(evaluation)
    headers = " | ".join(header for _, header in columns)
    lines = [
        f"| task | examples | metric | {headers} | tuned | change |",
        "| --- | ---: | --- | " + "--- | " * len(columns) + "--- | ---: |",
    ]
    for name, task in evaluation["tasks"].items():
        label = f"{name} (held out)" if task["held_out"] else name
        base, tuned = task["base"], task["tuned"]
        metrics = list(tuned.get("metrics", {})) or [task["metric"]]
        for i, metric in enumerate(metrics):
            first = i == 0
            baselines = " | ".join(_score(task.get(key), metric) for key, _ in columns)
            lines.append(
                f"| {label if first else ''} | {tuned['examples'] if first else ''} | {metric} | "
                f"{baselines} | {_score(tuned, metric)} | {_change(base, tuned, metric)} |"
            )
    if len(evaluation["tasks"]) > 1:
        for key, title in (
            ("macro_average", "macro average, trained tasks"),
            ("held_out_average", "macro average, held-out tasks"),
        ):
            average = evaluation[key]
            if average["tuned"] is None:
                continue
            baselines = " | ".join(
                "not scored" if average.get(column) is None else f"{average[column]:.2f}" for column, _ in columns
            )
            change = "" if average["base"] is None else f"{average['tuned'] - average['base']:+.2f}"
            lines.append(f"| {title} | | | {baselines} | {average['tuned']:.2f} | {change} |")
    return "\n".join(lines)


def _scored_in(evaluation: dict) -> str:
    """The precision of the weights behind the scores, said beside them ('fp32', as `tunelab eval` loads a run, or
    per model where they differ: a qlora base is scored quantised); empty for an eval.json written before scores
    recorded it."""
    seen: dict[str, set[str]] = {}
    for task in evaluation["tasks"].values():
        for role in ("base", "few_shot", "tuned"):
            if (task.get(role) or {}).get("precision"):
                seen.setdefault(role, set()).add(task[role]["precision"])
    shown = {role: "/".join(sorted(precisions)) for role, precisions in seen.items()}
    if set(shown.values()) == {"fp32"}:
        return "; weights in fp32, as `tunelab eval` scores them"
    return "; weights in " + ", ".join(f"{precision} ({role})" for role, precision in shown.items()) if shown else ""


def mixture_lines(stages: list[dict]) -> str:
    lines = []
    for stage in stages:
        budget = f"{stage['steps']} steps" if stage["steps"] else f"{stage['epochs']:g} epoch(s)"
        lines.append(
            f"- {stage['name']} (from step {stage['starts_at_step']}, {budget}): "
            + ", ".join(
                f"{task} {info['per_epoch']}/{info['available']} per epoch ({100 * info['share']:.1f}%)"
                for task, info in stage["tasks"].items()
            )
        )
    return "\n".join(lines)


def _data_section(config: RunConfig, state: dict) -> str:
    if config.mixture is not None:
        return f"## Mixture, as trained\n{mixture_lines(state['plan'])}\n"
    data, examples = config.data, state["examples"]
    notes = "".join(f"- {note}\n" for note in state.get("data_notes", []))
    trained = "examples" if kind_of_run(config).prompted else "token blocks"  # test texts stay whole
    return (
        f"## Data\n- train: `{data.train}` ({examples['train']} {trained})\n"
        f"- validation: `{data.validation or 'split from train'}` ({examples['validation']} {trained})\n"
        f"- test: `{data.test or 'split from train'}` ({examples['test']} examples)\n{notes}"
    )


def _trained(step: dict) -> str:
    """'generation, text_to_text': what a run of a chain trained; a run written before says its task type."""
    return f"{step['kind']}, {step['objective']}" if "kind" in step else step["task_type"]


def _chain_step_scores(step: dict) -> str:
    """'dialogsum: perplexity 18.40 -> 9.12' for each task an earlier run was scored on."""
    return "; ".join(
        f"{task}: {score['metric']} "
        + " -> ".join(f"{score[role]:.2f}" for role in ("base", "tuned") if role in score)
        for task, score in step["scores"].items()
    )


def chain_section(config: RunConfig, chain: list[dict]) -> str:
    """The runs this one was built on, first to last, ending with this run: the two-stage recipe as trained."""
    if not chain:
        return ""
    lines = [f"1. `{chain[0]['base_model']}`, the pretrained model"]
    for number, step in enumerate(chain, start=2):
        scores = _chain_step_scores(step)
        lines.append(
            f"{number}. run `{step['name']}` ({step['run']}): {_trained(step)}, method {step['method']}, "
            f"on `{step['data']}`" + (f"; {scores}" if scores else "")
        )
    lines.append(f"{len(chain) + 2}. this run: {_trained(run_words(config))}, method {config.method.name}")
    return "## Chain of runs\n" + "\n".join(lines) + "\n"


def _contamination_section(state: dict) -> str:
    """The data report's warnings: training records that are also in the test split or the retention suite (or,
    in a mixture, another task's test records), whose scores are then measured partly on trained examples."""
    warnings = state.get("contamination", state.get("data_warnings"))  # runs before label warnings: one list
    if not warnings:
        return ""
    lines = "".join(f"- {warning}\n" for warning in warnings)
    return (
        f"## Contamination\n{lines}Remove them with `data.drop_overlap: true` (data runs); the whole report is in "
        "`data/report.md`.\n\n"
    )


def _setup_lines(config: RunConfig) -> str:
    if config.mixture is None:
        return f"- kind: {config.data.kind}; objective: {objective_of(config).name}\n- method: {config.method.name}"
    mixture = config.mixture
    sampling = (
        mixture.strategy
        + (f", cap {mixture.cap}" if mixture.strategy == "capped" else "")
        + (f", temperature {mixture.temperature:g}" if mixture.strategy == "temperature" else "")
    )
    return (
        f"- objective: {objective_of(config).name}; method: {config.method.name}\n"
        f"- sampling: {sampling}; task-balanced batches: {'yes' if mixture.balanced_batches else 'no'}; "
        f"templates: {mixture.templates}"
    )


def _judge_section(evaluation: dict) -> str:
    """The reward-model win rate (`eval.judge`): per task, the share of test prompts whose tuned answer the judge
    scored above the base's (ties half, 95% interval), and both models' mean scores; empty without a judge."""
    judged = evaluation.get("judge")
    if not judged:
        return ""
    rows = "".join(
        f"| {name} | {task['examples']} | {format_interval(task['win_rate'])} | {task['base_score']:.3f} | "
        f"{task['tuned_score']:.3f} |\n"
        for name, task in judged["tasks"].items()
    )
    return (
        f"\n## Reward-model win rate, tuned over base (judge `{judged['judge']}`)\n"
        "| task | prompts | win rate | base mean score | tuned mean score |\n| --- | ---: | --- | ---: | ---: |\n"
        f"{rows}\nEach test prompt's greedy answers, the base's and the tuned model's, scored by the judge; a tie counts "
        "half. Per-prompt scores: `eval/judge.jsonl`.\n"
    )


def _tracking_line(state: dict) -> str:
    """Where else the training log went (`training.report_to`), so a reader of the card finds the curves."""
    tracking = state.get("tracking")
    if not tracking:
        return ""
    places = []
    if "tensorboard" in tracking:
        places.append("TensorBoard, `tensorboard/` in this directory")
    if "mlflow" in tracking:
        mlflow = tracking["mlflow"]
        places.append(f"MLflow run `{mlflow['run_id']}` in `{mlflow['tracking_uri']}`")
    return "\n- training tracked in: " + "; ".join(places)


PREFERENCE_METRICS = ("preference_accuracy", "answer_words")
"""What the preference section reads from a task's results."""

REWARDS = ("rewards/accuracies", "rewards/margins")
"""The preference trainer's logged rewards the card ends the section with, as TRL names them."""


def _before_after(task: dict, metric: str) -> str:
    """'48.00 [30.00, 66.67] -> 62.00 [44.00, 80.00]', or why the metric has no value (unscored, skipped)."""
    tuned = task["tuned"]
    reason = (tuned.get("unscored") or {}).get(metric)
    if reason:
        return f"not scored: {reason}"
    return f"{_score(task.get('base'), metric)} -> {_score(tuned, metric)}"


def _last_logged(log: list[dict], prefix: str) -> str:
    """The rewards of the last log entry holding them (`prefix` 'eval_' for validation), with its step; empty when
    none was logged."""
    entry = next((e for e in reversed(log) if prefix + REWARDS[0] in e), None)
    if entry is None:
        return ""
    return f"step {entry['step']}: " + ", ".join(f"{key} {entry[prefix + key]:.3f}" for key in REWARDS)


def preference_section(evaluation: dict, log: list[dict]) -> str:
    """What a preference run did, base -> tuned: how often the model finds the chosen answer of a held-out pair
    likelier (per token) than the rejected one, how long its own answers are (a description: DPO is known to
    lengthen answers, and a change in length is neither a gain nor a loss), and the rewards training logged last."""
    lines = []
    for name, task in evaluation["tasks"].items():
        tuned = task["tuned"] or {}
        if "skipped" in tuned or not set(PREFERENCE_METRICS) & {*tuned.get("metrics", {}), *tuned.get("unscored", {})}:
            continue
        lines.append(
            f"- {name}, preference accuracy (the chosen answer likelier per token than the rejected one; base -> "
            f"tuned): {_before_after(task, 'preference_accuracy')}"
        )
        lines.append(
            f"- {name}, answer length in words (mean of the generated answers; descriptive, neither longer nor "
            f"shorter is better): {_before_after(task, 'answer_words')}"
        )
    for prefix, phase in (("", "training"), ("eval_", "validation")):
        if logged := _last_logged(log, prefix):
            lines.append(f"- {phase}, last logged {logged}")
    return "\n## Preferences\n" + "\n".join(lines) + "\n" if lines else ""


def _protocol_note(config: RunConfig) -> str:
    """How the base model was prompted few-shot and how classification answers were read, when not the default."""
    notes = []
    if "few_shot" in config.eval.baselines:
        notes.append(
            f"Base {config.eval.shots}-shot = the same base model with {config.eval.shots} solved training examples "
            "before each test prompt (drawn per example, seeded; never a test example)."
        )
    if config.eval.scoring == "loglik":
        notes.append(
            "Classification tasks are scored by rank classification: the label whose words are most likely after "
            "the prompt."
        )
    return "".join(f"\n{note}" for note in notes)


def _training_time(state: dict) -> str:
    """Seconds spent training, over every attempt of a run that was interrupted or killed and resumed."""
    attempts = state.get("attempts", 1)
    return f"{state['train_seconds']:.1f} s" + (f" over {attempts} attempts (resumed)" if attempts > 1 else "")


def render_card(
    config: RunConfig,
    state: dict,
    evaluation: dict,
    forgetting: str | None = None,
    masks: str | None = None,
    log: list[dict] = (),
) -> str:
    """The run's model card; `masks`: the mask view of its first training conversations (`data/masks.md`), shown
    under the data it describes; `log`: the entries of its metrics.jsonl (a preference run's rewards)."""
    trainable = state["trainable"]
    memory = f"{state['peak_rss_mb']:.0f} MB RSS" if state.get("peak_rss_mb") else "not measured"
    if state.get("peak_gpu_mb"):
        memory += f", {state['peak_gpu_mb']:.0f} MB GPU"
    masks_section = f"{masks}\n" if masks else ""
    forgetting_section = f"\n## Forgetting ({config.eval.retention_suite} suite)\n{forgetting}\n" if forgetting else ""
    return f"""# {config.name}

Fine-tuned with [tunelab](https://github.com/tunelab/tunelab).

- base model: `{config.model.name}`
{_setup_lines(config)}{_tracking_line(state)}
- trainable parameters: {trainable["trainable_params"]:,} of {trainable["total_params"]:,} ({trainable["trainable_percent"]:.2f}%)
- precision: {state["precision"]}
- training time: {_training_time(state)}; steps: {state["steps"]}
- peak memory in training: {memory}

{chain_section(config, state.get("chain", []))}
{_data_section(config, state)}
{masks_section}{_contamination_section(state)}## Test results (95% bootstrap intervals{_scored_in(evaluation)})
{results_table(evaluation)}

{objective_of(config).base_note}{_protocol_note(config)}
{_judge_section(evaluation)}{preference_section(evaluation, list(log))}{forgetting_section}
Reproduce: `tunelab train config.yaml` with the `config.yaml` in this directory.
"""
