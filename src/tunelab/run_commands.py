"""Commands over a finished run directory: what `tunelab eval <file>`, `predict`, `merge` and `export` call.

Each reads only the run directory (`train.trained.load_run`), never the training data or the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tunelab.config import METHOD_TRAITS, RunConfig, method_names, spoken_list
from tunelab.data.inputs import read_inputs
from tunelab.data.task_records import draw_records, read_for_task
from tunelab.data.taskset import task_specs
from tunelab.eval.runner import predict_records, run_task
from tunelab.eval.suites import build_report, data_report_name, write_suite_report
from tunelab.eval.targets import trained_target
from tunelab.methods import MethodError, method_module
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.runs import RunDir, staged_folder, write_jsonl
from tunelab.train.objectives import objective_of
from tunelab.train.trained import LoadedRun, load_run


def _answering(loaded: LoadedRun, task: str | None, batch_size: int | None = None):
    """(the task spec a command means, the run's target answering it, `batch_size` examples a batch: default the
    run's training.eval_batch_size)."""
    spec = task_specs(loaded.config, loaded.labels).pick(task)
    target = trained_target(
        loaded.model, loaded.tokenizer, loaded.config, loaded.labels, str(loaded.run.path), batch_size
    )
    return spec, target


def evaluate_run(
    run: RunDir,
    data_path: str,
    output: Path | None = None,
    samples: int = 1000,
    seed: int = 0,
    task: str | None = None,
    shots: int = 0,
    scoring: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
) -> Path:
    """Score the run on a labelled file, read as records of the run's task (`task` names one of a mixture's),
    and write the report a suite task gets (`data-<file>.json/.md/.outputs.jsonl`, named by `data_report_name`,
    every metric with its 95% interval) to `output` (default the run's eval/ folder); returns the JSON path.
    `limit` scores that many records drawn with `seed`, `batch_size` examples at a time (default the run's
    training.eval_batch_size). With `shots`, each prompt follows demonstrations drawn from the task's train split
    (the run's training data for a `data:` run)."""
    loaded = load_run(run)
    spec, target = _answering(loaded, task, batch_size)
    records = draw_records(read_for_task(data_path, spec), limit, seed)
    result = run_task(target, spec, records, samples, seed, shots, scoring)
    results = {Path(data_path).name: result}
    directory = output or run.path / "eval"
    name = data_report_name(directory, Path(data_path), shots, scoring)
    report = build_report(name, str(run.path), results, seed, samples, data=Path(data_path).resolve())
    return write_suite_report(directory, report, results)


def predict_run(
    run: RunDir, input_path: str, output_path: str, task: str | None = None, overrides: Sequence[str] = ()
) -> int:
    """Write one JSON line per input record: the record plus its prediction. Returns the count. `overrides` are
    `data.` settings for reading the input (`data.text_field=sentence`, `data.skip_invalid=true`)."""
    loaded = load_run(run)
    spec, target = _answering(loaded, task)
    records = read_inputs(input_path, spec, list(overrides))
    predictions = predict_records(target, spec, records)
    write_jsonl(Path(output_path), [{**r.fields, **p} for r, p in zip(records, predictions)])
    return len(records)


def merged_model(loaded: LoadedRun, task: str | None = None):
    """The run's model as one plain transformers model with its update folded in: the method's merge, or for
    a multi-task run the head or adapter of one task (`task`), as the run's objective merges. Its generation config
    stops first at the run's EOS (a chat run's turn-closing token), as tunelab's own generation does."""
    model = objective_of(loaded.config).merge(loaded.model, loaded.config, task)
    eos = loaded.tokenizer.eos_token_id
    if eos is not None and model.can_generate() and model.generation_config is not None:
        others = model.generation_config.eos_token_id
        others = [others] if isinstance(others, int) else list(others or [])
        stops = list(dict.fromkeys([eos, *others]))
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    return model


def merge_run(run: RunDir, output: Path, task: str | None = None) -> Path:
    """Write a standalone transformers model (safetensors + tokenizer) with the run's update folded in
    (`merged_model`).

    The folder is staged (`runs.staged_folder`): complete or absent, and an existing non-empty one is never
    overwritten.
    """
    with staged_folder(output) as staging:
        loaded = load_run(run)
        merged_model(loaded, task).save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
    return output


def _check_switchable(runs: list[RunDir]) -> tuple[RunConfig, list[str] | None]:
    """The shared config and labels of runs whose PEFT adapters can take turns on one base model."""
    configs = [run.config() for run in runs]
    states = [run.require_complete() for run in runs]
    first, first_labels = configs[0], states[0].get("labels")
    peft_types = set()
    for run, config, state in zip(runs, configs, states):
        if not METHOD_TRAITS[config.method.name].peft_adapter or config.mixture is not None:
            raise MethodError(
                f"run {run.path} (method {config.method.name}) saved no single PEFT adapter; adapter "
                f"switching needs one-task runs of {spoken_list(method_names(lambda traits: traits.peft_adapter))}"
            )
        if (config.model.name, config.data.kind, state.get("labels")) != (
            first.model.name,
            first.data.kind,
            first_labels,
        ):
            raise MethodError(
                f"run {run.path} was tuned from {config.model.name} (data.kind {config.data.kind}, labels "
                f"{state.get('labels')}), run {runs[0].path} from {first.model.name} (data.kind {first.data.kind}, labels "
                f"{first_labels}); adapters can only share the base model, task and labels they were trained with"
            )
        peft_types.add(json.loads((run.model_dir / "adapter_config.json").read_text())["peft_type"])
    if len(peft_types) > 1:
        raise MethodError(
            f"these adapters are of different PEFT types ({', '.join(sorted(peft_types))}); PEFT switches "
            "between adapters of one type on a model, so predict with each kind separately"
        )
    return first, first_labels


def predict_with_adapters(adapters: dict[str, RunDir], input_path: str, output_path: str) -> int:
    """Predict with several adapter runs over one base model loaded once, switching adapters between passes.

    Each output line is the record plus `predictions`: {adapter name: prediction}.
    """
    names, runs = list(adapters), list(adapters.values())
    config, labels = _check_switchable(runs)
    method = method_module(config.method.name)
    model = method.load(load_base(config, labels, new_head=False), runs[0].model_dir, adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(run.model_dir, adapter_name=name)
    model.eval()
    tokenizer = load_tokenizer(str(runs[0].model_dir))
    spec = task_specs(config, labels).pick(None)
    target = trained_target(model, tokenizer, config, labels, "adapters")
    records = read_for_task(input_path, spec, with_target=False)
    by_adapter = {}
    for name in names:
        model.set_adapter(name)
        by_adapter[name] = predict_records(target, spec, records)
    rows = [
        {**record.fields, "predictions": {name: by_adapter[name][i] for name in names}}
        for i, record in enumerate(records)
    ]
    write_jsonl(Path(output_path), rows)
    return len(records)
