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
from tunelab.config import ConfigError, RunConfig, config_to_yaml
from tunelab.data.blocks import block_taskset
from tunelab.data.plan import Plan, plan_training
from tunelab.data.taskset import TaskSet, load_taskset
from tunelab.data_checks import data_report, save_data_report
from tunelab.eval.fewshot import demonstration_pool
from tunelab.eval.forgetting import forgetting_report, render_forgetting
from tunelab.eval.gain import evaluation_summary, score_tasks
from tunelab.eval.judge import RewardJudge, check_judge, judge_answers
from tunelab.eval.targets import Target, trained_target
from tunelab.kinds import kind_of_run
from tunelab.methods import MethodError, TrainableReport, check_method
from tunelab.models.attention import use_attention
from tunelab.models.family import model_family
from tunelab.models.kernels import use_kernels
from tunelab.models.loading import (
    MERGED_FOLDER,
    check_family,
    config_tokenizer,
    parameter_count,
    resolve_source,
    run_directory,
)
from tunelab.models.reference import check_reference
from tunelab.resolve import check_config
from tunelab.run_commands import merge_run
from tunelab.runs import (
    RunDir,
    checkpoint_step_of,
    run_chain,
    write_atomic,
    write_json,
    write_jsonl,
)
from tunelab.tasks.suite import load_suite
from tunelab.train.memory import peak_memory, reset_peak
from tunelab.train.objectives import Objective, objective_of
from tunelab.train.signals import StopOnSignal
from tunelab.train.tracking import check_trackers, ends_tracking_on_failure
from tunelab.train.trained import load_run
from tunelab.train.trainer import build_trainer, choose_precision


def check_runnable(config: RunConfig) -> None:
    """Refuse, before any data or model loads, a model that names nothing loadable or cannot do the task, a
    method that cannot run here, or a tracker that is not installed (or whose MLflow store will not open); and a
    kind of example or objective that is not registered or cannot train this config (`resolve.check_config`)."""
    check_config(config)
    check_reference(config.model.name, config.model.revision)
    check_family(config.model.name, kind_of_run(config).name)
    if run_directory(config.model.name):
        RunDir(config.model.name).require_complete()
    check_method(config)
    check_trackers(config)
    if config.eval.retention_suite:
        load_suite(config.eval.retention_suite)
    check_judge(config)


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
    decoder = model_family(config.model) == "decoder"
    kernels = use_kernels(model, config.training.kernels) if decoder else None  # patched before PEFT wraps layers
    model, trainable = objective.adapt(model, config, tasks)
    print(f"{objective.name}, method {config.method.name}: {trainable}")
    attention = use_attention(model, config.training.attention, config.training.compile) if decoder else None
    if decoder:
        print(f"attention over packed rows: {attention}; fused kernels: {kernels}")
    if main:  # the saved adapter names the base as other machines find it; where it was read here stays on record
        run.update_state(trainable=trainable.as_dict(), base_source=source, attention=attention, kernels=kernels)
    feed = objective.complete_feed(objective.feed(model, config, tasks, plan, tokenizer), model, config, run)
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
    report = data_report(config, tasks, tokenizer) if distributed.is_main_process() else None  # on the raw texts
    if config.mixture is None and not kind_of_run(config).prompted:  # raw text, trained in blocks
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
        save_data_report(run, config, report, tasks, tokenizer)
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
    if config.eval.judge:
        evaluation["judge"] = _judged(config, run, ready.tasks, base, tuned)
    write_json(run.eval_path, evaluation)
    steps = trainer.state.global_step
    run.update_state(
        steps=steps,
        epochs_trained=round(ready.plan.epochs_done(steps), 4),
        learning_rate=ready.objective.learning_rate(config),
        saved_weights_bytes=_saved_weights_bytes(run.model_dir),
        best_step=_kept_step(trainer),
        **memory,
    )
    if config.eval.retention_suite:
        _retention_report(config, ready, tuned_target)
    _write_card(run, config, evaluation)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.update_state(state="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


def _write_card(run: RunDir, config: RunConfig, evaluation: dict) -> None:
    """The run's card from its evaluation and what its directory holds: the retention suite's forgetting table, the
    mask view of its first conversations, its training log (a preference run's rewards)."""
    suite = load_suite(config.eval.retention_suite).name if config.eval.retention_suite else None
    forgetting = (run.path / "eval" / f"forgetting-{suite}.md").read_text(encoding="utf-8") if suite else None
    masks = run.masks_path.read_text(encoding="utf-8") if run.masks_path.exists() else None
    log = (
        [json.loads(line) for line in run.metrics_path.read_text(encoding="utf-8").splitlines()]
        if run.metrics_path.exists()
        else []
    )
    write_atomic(run.card_path, render_card(config, run.state(), evaluation, forgetting, masks, log))


def _judged(config: RunConfig, run: RunDir, tasks, base: dict[str, dict], tuned: dict[str, dict]) -> dict:
    """The judge's (`eval.judge`) verdict on the base's and the tuned model's answers to the test prompts (kept in
    their zero-shot scores), its per-prompt scores written to eval/judge.jsonl; returns eval.json's `judge`
    section."""
    print(f"judging the base's and the tuned model's answers with the reward model {config.eval.judge} ...")
    report, rows = judge_answers(
        RewardJudge.load(config.eval.judge), tasks.scored(), base, tuned, seed=config.training.seed
    )
    write_jsonl(run.path / "eval" / "judge.jsonl", rows)
    return report


def judge_run(run: RunDir, judge: str) -> dict:
    """Judge a complete generating run's answers after the fact with a reward run (`tunelab judge`): what
    `eval.judge` does at the end of training, for a judge trained later. The base's and the tuned model's answers
    are read from the run's eval.json, the verdict is added to it and to the card, and the judge is recorded in the
    run's config."""
    run.require_complete()
    evaluation = json.loads(run.eval_path.read_text(encoding="utf-8"))
    base = {name: task["base"] for name, task in evaluation["tasks"].items() if task.get("base")}
    if not base:
        raise ConfigError(
            f"{run.path} scored no base model (eval.baselines was empty), so there are no base answers to compare "
            "the tuned model's with; train it again with eval.baselines: [zero_shot]"
        )
    saved = run.config()
    judged = {"judge": str(Path(judge).resolve()), "baselines": sorted({*saved.eval.baselines, "zero_shot"})}
    config = saved.model_copy(update={"eval": saved.eval.model_copy(update=judged)})
    check_judge(config)
    tuned = {name: task["tuned"] for name, task in evaluation["tasks"].items() if task.get("tuned")}
    evaluation["judge"] = _judged(config, run, load_taskset(config), base, tuned)
    write_json(run.eval_path, evaluation)
    write_atomic(run.config_path, config_to_yaml(config))
    _write_card(run, config, evaluation)
    return evaluation["judge"]


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
