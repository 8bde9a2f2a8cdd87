"""The model card (README.md) of a run: what was tuned, how, on what, and the evidence."""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.eval.bootstrap import format_interval


def metrics_table(base: dict[str, float] | None, tuned: dict[str, float]) -> str:
    """Markdown table of base vs tuned for every metric (examples count excluded)."""
    names = [k for k in tuned if k != "examples"]
    lines = ["| metric | base | tuned | change |", "| --- | ---: | ---: | ---: |"]
    for name in names:
        if base and name in base:
            lines.append(f"| {name} | {base[name]:.4f} | {tuned[name]:.4f} | {tuned[name] - base[name]:+.4f} |")
        else:
            lines.append(f"| {name} | n/a | {tuned[name]:.4f} | |")
    return "\n".join(lines)


def render_card(config: RunConfig, state: dict, evaluation: dict, forgetting: str | None = None) -> str:
    base_note = (
        "Base = the pretrained encoder with its new, untrained classification head: chance level by construction."
        if config.task == "classification"
        else "Base = the pretrained model before tuning, prompted the same way."
    )
    data = config.data
    data_lines = [f"- train: `{data.train}` ({state['examples']['train']} examples)",
                  f"- validation: `{data.validation or 'split from train'}` ({state['examples']['validation']} examples)",
                  f"- test: `{data.test or 'split from train'}` ({state['examples']['test']} examples)"]
    notes = "".join(f"- {note}\n" for note in state.get("data_notes", []))
    trainable = state["trainable"]
    memory = f"{state['peak_rss_mb']:.0f} MB RSS" if state.get("peak_rss_mb") else "not measured"
    if state.get("peak_gpu_mb"):
        memory += f", {state['peak_gpu_mb']:.0f} MB GPU"
    return f"""# {config.name}

Fine-tuned with [tunelab](https://github.com/tunelab/tunelab).

- base model: `{config.model.name}`
- task: {config.task}
- method: {config.method.name}
- trainable parameters: {trainable['trainable_params']:,} of {trainable['total_params']:,} ({trainable['trainable_percent']:.2f}%)
- precision: {state['precision']}
- training time: {state['train_seconds']:.1f} s
- peak memory in training: {memory}

## Data
{chr(10).join(data_lines)}
{notes}
## Test results ({evaluation['tuned'].get('examples', '?')} examples)
{metrics_table(evaluation.get('base'), evaluation['tuned'])}

{base_note}
{f"{chr(10)}## Forgetting ({config.eval.retention_suite} suite){chr(10)}{forgetting}" if forgetting else ""}
Reproduce: `tunelab train config.yaml` with the `config.yaml` in this directory.
"""


def _score(result: dict | None, metric: str) -> str:
    if result is None:
        return "not scored"
    if "skipped" in result:
        return "skipped"
    return format_interval(result["metrics"][metric])


def mixture_table(evaluation: dict) -> str:
    """Per task: its own metric before and after tuning (95% CIs), held-out tasks marked, and the macro averages."""
    lines = ["| task | metric | base | tuned | change |", "| --- | --- | --- | --- | ---: |"]
    for name, task in evaluation["tasks"].items():
        label = f"{name} (held out)" if task["held_out"] else name
        base, tuned, metric = task["base"], task["tuned"], task["metric"]
        change = ("" if base is None or "skipped" in base or "skipped" in tuned
                  else f"{tuned['metrics'][metric]['value'] - base['metrics'][metric]['value']:+.2f}")
        lines.append(f"| {label} | {metric} | {_score(base, metric)} | {_score(tuned, metric)} | {change} |")
    for key, title in (("macro_average", "macro average, trained tasks"), ("held_out_average", "macro average, held-out tasks")):
        average = evaluation[key]
        if average["tuned"] is not None and average["base"] is not None:
            lines.append(f"| {title} | | {average['base']:.2f} | {average['tuned']:.2f} | {average['tuned'] - average['base']:+.2f} |")
        elif average["tuned"] is not None:
            lines.append(f"| {title} | | not scored | {average['tuned']:.2f} | |")
    return "\n".join(lines)


def mixture_lines(stages: list[dict]) -> str:
    lines = []
    for stage in stages:
        budget = f"{stage['steps']} steps" if stage["steps"] else f"{stage['epochs']:g} epoch(s)"
        lines.append(f"- {stage['name']} (from step {stage['starts_at_step']}, {budget}): " + ", ".join(
            f"{task} {info['per_epoch']}/{info['available']} per epoch ({100 * info['share']:.1f}%)" for task, info in stage["tasks"].items()))
    return "\n".join(lines)


def render_mixture_card(config: RunConfig, state: dict, evaluation: dict) -> str:
    """The model card of a multi-task run: the mixture as trained, and every task's score before and after."""
    trainable = state["trainable"]
    mixture = config.mixture
    return f"""# {config.name}

Multi-task fine-tuned with [tunelab](https://github.com/tunelab/tunelab).

- base model: `{config.model.name}`
- architecture: {mixture.architecture}; method: {config.method.name}
- trainable parameters: {trainable['trainable_params']:,} of {trainable['total_params']:,} ({trainable['trainable_percent']:.2f}%)
- sampling: {mixture.strategy}{f", cap {mixture.cap}" if mixture.strategy == "capped" else ""}{f", temperature {mixture.temperature:g}" if mixture.strategy == "temperature" else ""}; task-balanced batches: {"yes" if mixture.balanced_batches else "no"}; templates: {mixture.templates}
- precision: {state['precision']}; training time: {state['train_seconds']:.1f} s; steps: {state['steps']}

## Mixture, as trained
{mixture_lines(state['mixture'])}

## Test results per task (95% bootstrap intervals)
{mixture_table(evaluation)}

Base = the pretrained model before tuning, prompted with the same instructions. Held-out tasks were never trained on.

Reproduce: `tunelab train config.yaml` with the `config.yaml` in this directory.
"""
