"""The model card (README.md) of a run: what was tuned, how, on what, and the evidence."""

from __future__ import annotations

from tunelab.config import RunConfig


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
