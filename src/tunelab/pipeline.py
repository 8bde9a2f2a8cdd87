"""The pipeline, left to right: config -> tasks -> plan -> model + method -> trainer -> evaluation -> run directory.

Every run goes through `train`, one lifecycle for one task or a mixture and for every objective (a `data:`
section is a mixture of one task): check, read the tasks, plan the order, set up the model and the trainer,
train (or resume), score every task before and after, save, write the card. Each CLI command calls one
function here, and everything after training reads only the run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from transformers import Trainer
from transformers.utils import enable_tf32, is_torch_tf32_available

from tunelab import distributed
from tunelab.card import render_card
from tunelab.config import METHOD_TRAITS, RunConfig, method_names, spoken_list
from tunelab.data.blocks import block_taskset
from tunelab.data.cleaning import clean
from tunelab.data.inputs import read_inputs
from tunelab.data.plan import Plan, plan_training
from tunelab.data.quality import run_fields
from tunelab.data.readers import read_file
from tunelab.data.report import cleaning_summary, file_references, file_report, render_report, run_report
from tunelab.data.splits import label_set
from tunelab.data.task_records import draw_records, read_for_task
from tunelab.data.taskset import TaskSet, load_taskset, task_specs
from tunelab.data.validate import check_records, enforce
from tunelab.errors import TunelabError
from tunelab.eval.fewshot import demonstration_pool
from tunelab.eval.forgetting import forgetting_report, render_forgetting
from tunelab.eval.gain import evaluation_summary, score_tasks
from tunelab.eval.runner import predict_records, run_task
from tunelab.eval.suites import build_report, data_report_name, write_suite_report
from tunelab.eval.targets import Target, trained_target
from tunelab.kinds import kind_of_run
from tunelab.methods import MethodError, TrainableReport, check_method, method_module
from tunelab.models.attention import use_attention
from tunelab.models.kernels import use_kernels
from tunelab.models.loading import (
    MERGED_FOLDER,
    check_family,
    load_base,
    load_tokenizer,
    parameter_count,
    resolve_source,
    run_directory,
)
from tunelab.models.reference import check_reference
from tunelab.records import DataError, Record
from tunelab.runs import (
    RunDir,
    checkpoint_step_of,
    run_chain,
    staged_folder,
    write_atomic,
    write_json,
)
from tunelab.tasks.suite import load_suite
from tunelab.train.memory import peak_memory, reset_peak
from tunelab.train.objectives import Objective, objective_of
from tunelab.train.signals import StopOnSignal
from tunelab.train.tracking import check_trackers, ends_tracking_on_failure
from tunelab.train.trained import LoadedRun, load_run
from tunelab.train.trainer import build_trainer, choose_precision


def check_runnable(config: RunConfig) -> None:
    """Refuse, before any data or model loads, a model that names nothing loadable or cannot do the task, a
    method that cannot run here, or a tracker that is not installed (or whose MLflow store will not open)."""
    check_reference(config.model.name, config.model.revision)
    check_family(config.model.name, config.task_type)
    if run_directory(config.model.name):
        RunDir(config.model.name).require_complete()
    check_method(config)
    check_trackers(config)
    if config.eval.retention_suite:
        load_suite(config.eval.retention_suite)


def earlier_stages(config: RunConfig) -> list[dict]:
    """The runs this one builds on (`runs.run_chain`) when model.name is a run directory, after making that run
    loadable as a base: a method that saved only its update (LoRA, adapters, ...) is merged into the run's
    `merged/` folder, once. Empty for a pretrained model."""
    if not run_directory(config.model.name):
        return []
    earlier = RunDir(config.model.name)
    merged = earlier.path / MERGED_FOLDER
    if earlier.config().method.name != "full" and not merged.is_dir():
        print(f"merging run {earlier.path}'s update into {merged}, the base of this run ...")
        try:
            merge_run(earlier, merged)
        except MethodError as exc:
            raise MethodError(f"run {earlier.path} cannot be the base of another run: {exc}") from None
    return run_chain(earlier)


def _run_dir(config: RunConfig, resume: RunDir | None) -> RunDir:
    """The run's directory: rank 0 creates it (or takes the one being resumed), every other rank gets its path."""
    run = resume or (RunDir.create(config) if distributed.is_main_process() else None)
    return RunDir(distributed.share_from_main(str(run.path) if run else None))


@dataclass
class Setup:
    """A run ready to train: what `train` drives and a benchmark times."""

    run: RunDir
    tasks: TaskSet
    plan: Plan
    objective: Objective
    trainer: Trainer
    tokenizer: object
    trainable: TrainableReport


def _base_target(model, tokenizer, config: RunConfig, tasks: TaskSet) -> Target:
    """The model before tuning, answering as the run's objective will."""
    return trained_target(model, tokenizer, config, tasks.labels, f"{config.model.name} (base)")


def _demonstration_pools(tasks: TaskSet) -> dict:
    """Where a few-shot baseline draws each trained task's demonstrations: its training records (a held-out task
    draws from its own train split)."""
    return {name: task.train for name, task in tasks.trained.items()}


def _check_demonstrations(config: RunConfig, tasks: TaskSet) -> None:
    """Refuse, before a model loads, a few-shot baseline that a task has too few records to draw from."""
    pools = _demonstration_pools(tasks)
    for name, (spec, records, _) in tasks.scored().items():
        demonstration_pool(spec, records, config.eval.shots, pools.get(name))


def _score_baselines(config: RunConfig, run: RunDir, model, tokenizer, tasks: TaskSet) -> None:
    """Score the model before tuning as each of `eval.baselines` asks, once per run: a baseline already written (a
    resumed run) is kept. Few-shot demonstrations come from each trained task's training records."""
    paths = {"zero_shot": run.base_eval_path, "few_shot": run.few_shot_eval_path}
    # decided once, by rank 0: another rank looking for a file could see it already written and skip the barrier
    missing = distributed.share_from_main([b for b in config.eval.baselines if not paths[b].exists()])
    if not missing:
        return
    if distributed.is_main_process():
        target, pools = _base_target(model, tokenizer, config, tasks), _demonstration_pools(tasks)
        if target.precision != "fp32":  # a frozen base stored in bf16 to train: scored in fp32, as eval loads it
            fp32 = objective_of(config).load(config, tasks, "fp32").eval()
            target = _base_target(fp32, tokenizer, config, tasks)
        for baseline in missing:
            shots = config.eval.shots if baseline == "few_shot" else 0
            print(f"scoring the base model {shots}-shot on the test data ...")
            scores = score_tasks(
                target, tasks.scored(), config.training.seed, shots=shots, scoring=config.eval.scoring, pools=pools
            )
            write_json(paths[baseline], scores)
    distributed.barrier()


def setup(
    config: RunConfig,
    run: RunDir,
    tasks: TaskSet,
    plan: Plan,
    precision: str,
    callbacks: Sequence = (),
    tokenizer=None,
) -> Setup:
    """Load the model, score it before tuning (once per run: kept across a resume), adapt it and build its trainer
    (with `callbacks` beside its own). `tokenizer`: the model's, when the caller has loaded it already."""
    main = distributed.is_main_process()
    objective = objective_of(config)
    source = resolve_source(config.model.name, config.model.revision)
    tokenizer = tokenizer or config_tokenizer(config)
    model = objective.load(config, tasks, precision)
    _score_baselines(config, run, model, tokenizer, tasks)
    decoder = config.model_task() == "causal_lm"
    kernels = use_kernels(model, config.training.kernels) if decoder else None  # patched before PEFT wraps layers
    model, trainable = objective.adapt(model, config, tasks)
    print(f"{objective.name}, method {config.method.name}: {trainable}")
    attention = use_attention(model, config.training.attention, config.training.compile) if decoder else None
    if decoder:
        print(f"attention over packed rows: {attention}; fused kernels: {kernels}")
    if main:  # the saved adapter names the base as other machines find it; where it was read here stays on record
        run.update_state(trainable=trainable.as_dict(), base_source=source, attention=attention, kernels=kernels)
    feed = objective.feed(model, config, tasks, plan, tokenizer)
    trainer = build_trainer(model, tokenizer, config, run, plan, objective, feed, precision, callbacks)
    return Setup(run, tasks, plan, objective, trainer, tokenizer, trainable)


def _saved_weights_bytes(directory: Path) -> int:
    """Size on disk of the saved weights (the tokenizer, the same for every method, is left out)."""
    return sum(f.stat().st_size for f in directory.rglob("*.safetensors"))


def run_precision(config: RunConfig) -> str:
    """The precision a run trains in: `training.precision`, with 'auto' resolved for this machine and the model's
    size (counted from its weight files, where they are local)."""
    source = resolve_source(config.model.name, config.model.revision)
    return choose_precision(config.training.precision, parameter_count(source))


def train(config: RunConfig, resume: RunDir | None = None, callbacks: Sequence = ()) -> RunDir:
    """Train a model as configured (or finish an interrupted run) and write a complete run directory. Trainer
    `callbacks` may watch the training; one that raises stops the run, which is then marked failed.

    Under torchrun / accelerate launch every rank loads the data and model and trains its share of every
    global batch; rank 0 alone writes the run directory and evaluates, and the other ranks return once
    training ends.
    """
    check_runnable(config)
    distributed.start()
    # rank 0 merges an earlier stage's update; the others wait for it before they read the merged base
    chain = distributed.share_from_main(earlier_stages(config) if distributed.is_main_process() else None)
    tasks = load_taskset(config)  # every data error surfaces before a model loads
    tokenizer = config_tokenizer(config)  # the data report counts tokens; language modelling plans in blocks of them
    report = _data_report(config, tasks, tokenizer) if distributed.is_main_process() else None  # on the raw texts
    if config.task_type == "language_modeling":
        block_taskset(tasks, tokenizer, config.data)
    if "few_shot" in config.eval.baselines:
        _check_demonstrations(config, tasks)
    for note in tasks.notes:
        print(f"data: {note}")
    plan = plan_training(
        config, tasks, distributed.world_size(), one_task_per_batch=objective_of(config).one_task_per_batch
    )
    precision = run_precision(config)
    print(
        f"precision: {precision} (training.precision={config.training.precision}); "
        f"{plan.steps} steps of {plan.global_batch} examples"
    )
    main = distributed.is_main_process()
    run = _run_dir(config, resume)
    print(f"run directory: {run.path}")
    if main:
        run.start_attempt(
            precision=precision,
            labels=tasks.labels,
            data_notes=tasks.notes,
            world_size=distributed.world_size(),
            examples=tasks.counts(),
            plan=plan.stages,
            chain=chain,
            data_warnings=report["warnings"],
            contamination=report["contamination"],
        )
        _save_data_report(run, report, tasks)
    checkpoint = distributed.share_from_main(_resume_point(run, plan) if resume else None)
    stop = StopOnSignal()
    with run.marks_failure() if main else nullcontext(), ends_tracking_on_failure(config):
        ready = setup(config, run, tasks, plan, precision, [*callbacks, stop], tokenizer)
        if resume and main:  # the steps after the checkpoint (all, without one) are logged again, once
            run.keep_metrics_until(checkpoint_step_of(checkpoint) if checkpoint else 0)
        window = reset_peak()
        with stop.listening():
            ready.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        stop.raise_if_stopped(run)
        if not main:  # training was the last collective step; what follows is rank 0's alone
            return run
        _finish(config, ready, peak_memory(window))
    return run


def _kept_step(trainer: Trainer) -> int | None:
    """The step of the checkpoint whose weights the Trainer returned to at the end (its best validation), or None
    when the run kept its last weights. The checkpoint folder itself is gone by then: `model/` holds them."""
    best = trainer.state.best_model_checkpoint
    return checkpoint_step_of(best) if best and trainer.args.load_best_model_at_end else None


def _resume_point(run: RunDir, plan: Plan) -> Path | None:
    """The checkpoint a resumed run continues from, said out loud: its step, or that there is none and training
    starts over."""
    checkpoint = run.last_checkpoint()
    if checkpoint:
        print(f"resuming at step {checkpoint_step_of(checkpoint)} of {plan.steps}, from {checkpoint}")
    else:
        print(f"no complete checkpoint in {run.checkpoints}: training starts over, at step 0 of {plan.steps}")
    return checkpoint


def _finish(config: RunConfig, ready: Setup, memory: dict) -> None:
    """Score the tuned model on every task, save it, write eval.json and the card, and mark the run complete."""
    run, trainer, tasks = ready.run, ready.trainer, ready.tasks
    model = trainer.model
    run.save_model(lambda directory: ready.objective.save(model, config, directory), ready.tokenizer)
    print("scoring the tuned model on the test data ...")
    tuned_target = _saved_target(run, config)
    tuned = score_tasks(tuned_target, tasks.scored(), config.training.seed, scoring=config.eval.scoring)
    base, few_shot = (
        json.loads(path.read_text()) if path.exists() else None
        for path in (run.base_eval_path, run.few_shot_eval_path)
    )
    evaluation = {
        **evaluation_summary(tasks.scored(), base, tuned, few_shot),
        "trainable": ready.trainable.as_dict(),
        "method": config.method.name,
        "architecture": ready.objective.name,
    }
    write_json(run.eval_path, evaluation)
    steps = trainer.state.global_step
    run.update_state(
        steps=steps,
        epochs_trained=round(ready.plan.epochs_done(steps), 4),
        learning_rate=config.learning_rate(),
        saved_weights_bytes=_saved_weights_bytes(run.model_dir),
        best_step=_kept_step(trainer),
        **memory,
    )
    forgetting = _retention_report(config, ready, tuned_target) if config.eval.retention_suite else None
    write_atomic(run.card_path, render_card(config, run.state(), evaluation, forgetting))
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.update_state(state="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


def _saved_target(run: RunDir, config: RunConfig) -> Target:
    """The tuned model as `tunelab eval` scores it: read back from the run's model/ folder in fp32, with TF32
    matmuls off. The model in the trainer is not: a bf16 run keeps a frozen base in bf16 and runs its forward under
    autocast, and an fp32 run on a GPU turns TF32 on; scored that way, the card said 78.33 where eval said 78.21."""
    if is_torch_tf32_available():
        enable_tf32(False)
    loaded = load_run(run, finished=False)
    return trained_target(loaded.model, loaded.tokenizer, config, loaded.labels, f"{config.name} (tuned)")


def _retention_report(config: RunConfig, ready: Setup, tuned: Target) -> str:
    """Base vs tuned on the retention suite, written to the run's eval/ folder; returns the Markdown table."""

    def base() -> Target:  # a fresh copy of the pretrained weights, loaded only when the report needs it
        return _base_target(
            ready.objective.load(config, ready.tasks, "fp32").eval(), ready.tokenizer, config, ready.tasks
        )

    suite = load_suite(config.eval.retention_suite)
    report = forgetting_report(
        base, tuned, suite, config.eval.retention_limit, seed=config.training.seed, scoring=config.eval.scoring
    )
    table = render_forgetting(report)
    write_atomic(ready.run.path / "eval" / f"forgetting-{suite.name}.md", table)
    write_json(ready.run.path / "eval" / f"forgetting-{suite.name}.json", report)
    print(table)
    return table


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


def _write_rows(output_path: str, rows: list[dict]) -> None:
    write_atomic(Path(output_path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def predict_run(
    run: RunDir, input_path: str, output_path: str, task: str | None = None, overrides: Sequence[str] = ()
) -> int:
    """Write one JSON line per input record: the record plus its prediction. Returns the count. `overrides` are
    `data.` settings for reading the input (`data.text_field=sentence`, `data.skip_invalid=true`)."""
    loaded = load_run(run)
    spec, target = _answering(loaded, task)
    records = read_inputs(input_path, spec, list(overrides))
    predictions = predict_records(target, spec, records)
    _write_rows(output_path, [{**r.fields, **p} for r, p in zip(records, predictions)])
    return len(records)


def merged_model(loaded: LoadedRun, task: str | None = None):
    """The run's model as one plain transformers model with its update folded in: the method's merge, or for
    a multi-task run the head or adapter of one task (`task`), as the run's objective merges."""
    return objective_of(loaded.config).merge(loaded.model, loaded.config, task)


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
        if (config.model.name, config.task_type, state.get("labels")) != (
            first.model.name,
            first.task_type,
            first_labels,
        ):
            raise MethodError(
                f"run {run.path} was tuned from {config.model.name} ({config.task_type}, labels "
                f"{state.get('labels')}), run {runs[0].path} from {first.model.name} ({first.task_type}, labels "
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
    _write_rows(output_path, rows)
    return len(records)


# --- data checks: the report a run prints and saves, `tunelab data check` and `tunelab data clean` ----------------


def config_tokenizer(config: RunConfig):
    """The tokenizer of the config's model: what a run trains with and what the data report counts tokens with."""
    source = resolve_source(config.model.name, config.model.revision)
    return load_tokenizer(source, config.model.revision, config.model.trust_remote_code)


def _data_report(config: RunConfig, tasks: TaskSet, tokenizer) -> dict:
    """The data report on what the run trains (duplicates, conflicts, labels, token lengths with the run's
    tokenizer, leakage and contamination), printed before any model loads."""
    report = run_report(config, tasks, tokenizer)
    print(render_report(report))
    return report


def _save_data_report(run: RunDir, report: dict, tasks: TaskSet) -> None:
    """`data/report.json` and `report.md`, and, when cleaning is on, `data/removed.jsonl`: every training record
    removed, with why (empty when nothing was)."""
    write_json(run.data_dir / "report.json", report)
    write_atomic(run.data_dir / "report.md", render_report(report))
    if report["cleaning"] is not None:
        _write_rows(str(run.data_dir / "removed.jsonl"), [removed.as_dict() for removed in tasks.removed])


def read_checked(
    config: RunConfig, path: str, labels: list[str] | None = None
) -> tuple[list[Record], list[str] | None]:
    """A data file's records as a run reads its data, with the label set (given, configured or inferred): invalid
    records fail with file, line and field, or are skipped and listed under `data.skip_invalid`."""
    records = read_file(path)
    if config.task_type == "classification" and labels is None:
        labels = label_set(records, config, path)
    return enforce(
        check_records(records, kind_of_run(config), config.data, labels), path, config.data.skip_invalid
    ), labels


def _file_references(config: RunConfig, labels: list[str] | None, against: list[str], suites: list[str]) -> dict:
    others = {other: read_checked(config, other, labels)[0] for other in against}
    return file_references(others, suites, run_fields(config.task_type, config.data))


def _lengths_tokenizer(config: RunConfig):
    """The config's model's tokenizer, or None (token lengths then go unmeasured, and the report says so) when it
    cannot be loaded here: checking a file's records must not need its model."""
    try:
        return config_tokenizer(config)
    except (TunelabError, OSError) as exc:
        print(f"token lengths not measured: the tokenizer of {config.model.name} cannot be loaded ({exc})")
        return None


def report_data_file(
    config: RunConfig,
    path: str,
    records: list[Record],
    labels: list[str] | None,
    against: list[str],
    suites: list[str],
) -> dict:
    """`tunelab data check`'s report on a file's valid records, compared with the files `against` and `suites`."""
    references = _file_references(config, labels, against, suites)
    return file_report(path, records, config.task_type, config.data, references, _lengths_tokenizer(config))


def clean_data_file(
    config: RunConfig, path: str, output: Path, dedup: str, against: list[str], suites: list[str]
) -> tuple[dict, dict[str, Path]]:
    """Write a cleaned copy of a data file (its records as read, as JSON Lines, without the duplicates `dedup` names
    and the records that overlap `against` files or `suites`), its report and the removed records (with why),
    each atomically; returns the report and the paths written. The input is never overwritten."""
    if output.suffix != ".jsonl":
        raise DataError(f"--output {output}: the cleaned copy is written as JSON Lines; give a .jsonl path")
    for given in (path, *against):
        if output.resolve() == Path(given).resolve():
            raise DataError(f"--output {output} is an input ({given}); write the cleaned copy to a new file")
    records, labels = read_checked(config, path)
    references = _file_references(config, labels, against, suites)
    cleaned = clean(
        records, run_fields(config.task_type, config.data), dedup, {n: r.examples for n, r in references.items()}
    )
    summary = cleaning_summary(len(cleaned.kept), cleaned.removed)
    report = file_report(path, records, config.task_type, config.data, references, _lengths_tokenizer(config), summary)
    stem = output.with_suffix("")
    written = {
        "cleaned": output,
        "report": stem.with_name(f"{stem.name}.report.json"),
        "removed": stem.with_name(f"{stem.name}.removed.jsonl"),
    }
    _write_rows(str(written["removed"]), [removed.as_dict() for removed in cleaned.removed])
    write_json(written["report"], report)
    write_atomic(written["report"].with_suffix(".md"), render_report(report))
    _write_rows(str(output), [record.fields for record in cleaned.kept])
    return report, written
