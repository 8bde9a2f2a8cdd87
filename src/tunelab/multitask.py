"""Multi-task instruction fine-tuning (FLAN style): a mixture of task files -> one planned training order ->
one run, scored task by task before and after.

The order of every training example is planned up front (`tunelab.data.mixture`): which tasks, how many
examples of each per epoch (the sampling strategy), in which stage of a curriculum, interleaved into
task-balanced or single-task batches when asked. The Trainer then reads that order as it is, so the mix
printed before training is exactly the mix trained on, and it is saved in run.json.

Three architectures share the plan:
- text_to_text: one decoder (or encoder-decoder) model; every task is an instruction with a text answer;
- multi_head: one shared encoder with a classification head per task (classification tasks only);
- task_adapters: one LoRA adapter per task over a frozen base (plus an optional shared one), batches routed
  to their task's adapter; the plan's draws are regrouped into single-task batches (so `balanced_batches`
  does not apply), each task's last batch filled up with a few of its own examples.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler
from transformers import DataCollatorWithPadding, Trainer, set_seed
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab import distributed
from tunelab.card import render_mixture_card
from tunelab.config import DataConfig, MixtureTask, RunConfig
from tunelab.data.encode import IGNORE_INDEX, encode_causal, encode_classification, encode_seq2seq, make_collator
from tunelab.data.mixture import Stage, balanced_order, curriculum_plan, describe_mix, examples_per_task, mixture_rates
from tunelab.data.readers import DataError, Record
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import TaskResult, run_task
from tunelab.eval.targets import Target, on_device
from tunelab.methods import TrainableReport, apply_method, check_method, lora, method_module
from tunelab.methods.task_adapters import (SHARED, TASK_KEY, TaskRoutedTrainer, apply_task_adapters, route,
                                          save_task_adapters, trainable_by_adapter)
from tunelab.models.loading import check_family, load_model, load_tokenizer, resolve_source
from tunelab.models.reference import check_reference
from tunelab.models.multihead import MultiHeadClassifier, build_multihead
from tunelab.runs import RunDir, write_atomic, write_json
from tunelab.tasks import TaskError, TaskSpec, load_records, load_task
from tunelab.train.memory import peak_memory, reset_peak
from tunelab.train.trainer import CompletionLossTrainer, build_trainer, choose_precision


@dataclass
class TaskPool:
    """One task's training examples in one stage, with its weights."""

    spec: TaskSpec
    records: list[Record]
    weight: float
    loss_weight: float


def _pool(entry: MixtureTask, seed: int) -> TaskPool:
    spec = load_task(entry.task)
    if spec.kind == "language_modeling":
        raise DataError(f"task {spec.name} is a perplexity task with no answers to train on; list it under mixture.eval_only")
    try:
        records = load_records(spec, entry.max_examples, seed, split=spec.train_split)
    except TaskError as exc:
        raise DataError(f"task {spec.name} cannot be trained on ({exc}); list it under mixture.eval_only instead") from None
    return TaskPool(spec, records, entry.weight, entry.loss_weight)


@dataclass
class Plan:
    """The whole training order and what it was built from."""

    pools: dict[str, TaskPool]
    order: list[tuple[str, int]]
    boundaries: list[int]
    stages: list[dict]
    """Per stage: name, steps, and per task the available, drawn-per-epoch and share figures (saved in run.json)."""


def plan_training(config: RunConfig) -> Plan:
    """Every training draw, stage by stage, as the mixture settings say; printed and returned."""
    mixture, training = config.mixture, config.training
    batch = training.batch_size * training.gradient_accumulation_steps
    pools: dict[str, TaskPool] = {}
    stages, described = [], []
    for number, stage_config in enumerate(mixture.stage_list(), start=1):
        name = stage_config.name or f"stage-{number}"
        stage_pools = {}
        for entry in stage_config.tasks:
            pool = _pool(entry, training.seed)
            key = pool.spec.name
            if key in pools and len(pools[key].records) != len(pool.records):
                raise DataError(f"task {key} appears in two stages with different max_examples; give it the same in both")
            pools.setdefault(key, pool)
            stage_pools[key] = pool
        sizes = {name_: len(p.records) for name_, p in stage_pools.items()}
        rates = mixture_rates(sizes, mixture.strategy, weights={n: p.weight for n, p in stage_pools.items()},
                              cap=mixture.cap if mixture.strategy == "capped" else None,
                              temperature=mixture.temperature if mixture.strategy == "temperature" else 1.0)
        counts = examples_per_task(sizes, rates, mixture.examples_per_epoch or sum(sizes.values()))
        single = not mixture.stages
        steps = training.max_steps if single else stage_config.steps
        epochs = training.epochs if single else stage_config.epochs
        stages.append(Stage(name, sizes, counts, steps, epochs))
        budget = f"{steps} steps" if steps else f"{epochs:g} epoch(s)"
        print(f"{'mixture' if single else 'stage ' + name} ({mixture.strategy}; {budget}):")
        print(describe_mix(counts, sizes))
        described.append({"name": name, "steps": steps, "epochs": None if steps else epochs, "tasks": {
            task: {"available": sizes[task], "per_epoch": counts[task], "share": counts[task] / max(1, sum(counts.values()))}
            for task in sizes}})
    order, boundaries = curriculum_plan(stages, batch, training.seed)
    if mixture.balanced_batches:
        order = _per_stage(order, boundaries, batch, lambda part: balanced_order(part, batch, training.seed))
    for stage, start in zip(described, [0, *boundaries]):
        stage["starts_at_step"] = start
    return Plan(pools, order, boundaries, described)


def _per_stage(order, boundaries, batch, reorder):
    """Apply `reorder` within each stage's slice of the order, so stage boundaries stay where they are."""
    edges = [0, *(b * batch for b in boundaries), len(order)]
    return [draw for start, end in zip(edges, edges[1:]) for draw in reorder(order[start:end])]


def _template_index(spec: TaskSpec, config: RunConfig, position: int, index: int) -> int:
    """Which instruction template a draw is phrased with: the first, or one chosen per draw (seeded), FLAN style."""
    if config.mixture.templates == "first" or len(spec.templates) < 2:
        return 0
    return random.Random(f"{config.training.seed}:{spec.name}:{index}:{position}").randrange(len(spec.templates))


def _instruction_records(plan: Plan, config: RunConfig) -> list[Record]:
    records = []
    for position, (task, index) in enumerate(plan.order):
        pool = plan.pools[task]
        record = pool.records[index]
        prompt = pool.spec.prompt(record, _template_index(pool.spec, config, position, index))
        records.append(Record({"prompt": prompt, "target": pool.spec.target(record), "task": task}, record.where))
    return records


def _text_data(config: RunConfig) -> DataConfig:
    return DataConfig(prompt_field="prompt", response_field="target", max_length=config.data.max_length,
                      max_target_length=config.data.max_target_length)


def encode_instructions(records: list[Record], tokenizer, config: RunConfig, weights: dict[str, float]) -> list[dict]:
    """Tokenised prompt/answer examples with each example's loss weight."""
    encoder = encode_causal if config.task == "causal_lm" else encode_seq2seq
    encoded = encoder(records, tokenizer, _text_data(config), with_target=True)
    if encoded.truncated:
        print(f"mixture: {encoded.truncated} of {len(records)} examples truncated to data.max_length / max_target_length")
    for example, record in zip(encoded.examples, records):
        example["loss_weights"] = weights[record.fields["task"]]
    return encoded.examples


class WeightedCollator:
    """The task's collator, plus a per-example `loss_weights` tensor (weighted multi-task loss)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict]) -> dict:
        weights = torch.tensor([float(f.get("loss_weights", 1.0)) for f in features])
        batch = self.base([{k: v for k, v in f.items() if k not in ("loss_weights", TASK_KEY)} for f in features])
        batch["loss_weights"] = weights
        if TASK_KEY in features[0]:
            batch[TASK_KEY] = [f[TASK_KEY] for f in features]  # task-adapter routing
        return batch


class _PlannedOrder:
    """Reads the training set in the planned order (the plan already shuffled, balanced and staged it)."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class PlannedOrderTrainer(_PlannedOrder, CompletionLossTrainer):
    """Decoders: the chunked completion loss (which applies `loss_weights`) over the planned order."""


class WeightedSeq2SeqTrainer(_PlannedOrder, Trainer):
    """Encoder-decoders: token cross-entropy with each example's `loss_weights`, over the planned order."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("loss_weights")
        outputs = model(**inputs)
        labels = inputs["labels"]
        token_loss = F.cross_entropy(outputs.logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        scored = labels != IGNORE_INDEX
        loss = (token_loss * weights[:, None].to(token_loss) * scored).sum() / scored.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss


def _configure_schedule(trainer, steps: int, has_validation: bool) -> None:
    """`steps` optimiser steps over the planned order with the per-task validation losses logged four times;
    the run keeps its last weights (the per-task validation losses do not name one best checkpoint), and, since
    mixture runs cannot be resumed yet, writes no checkpoints."""
    args = trainer.args
    args.max_steps = steps
    args.load_best_model_at_end = False
    args.metric_for_best_model = None
    args.eval_strategy = "steps" if has_validation else "no"
    args.eval_steps = max(1, steps // 4)
    args.save_strategy = "no"


def _validation_records(plan: Plan, config: RunConfig) -> dict[str, list[Record]]:
    """Per trained task: a seeded draw of its validation split, for a per-task validation loss in the log;
    a task without one is named and left out."""
    chosen = {}
    for name, pool in plan.pools.items():
        try:
            chosen[name] = load_records(pool.spec, config.mixture.validation_examples, config.training.seed, split="validation")
        except TaskError:
            print(f"mixture: task {name} has no validation split; no validation loss for it")
    return chosen


def _validation_sets(plan: Plan, tokenizer, config: RunConfig) -> dict[str, list[dict]]:
    """The validation records as instruction examples (first template), per task."""
    sets = {}
    for name, records in _validation_records(plan, config).items():
        spec = plan.pools[name].spec
        instruction = [Record({"prompt": spec.prompt(r), "target": spec.target(r), "task": name}, r.where) for r in records]
        sets[name] = encode_instructions(instruction, tokenizer, config, {name: 1.0})
    return sets


def _scored_tasks(config: RunConfig, plan: Plan) -> dict[str, tuple[TaskSpec, list[Record], bool]]:
    """Every trained task and every held-out task with its test examples; True marks held-out."""
    mixture = config.mixture
    chosen = {}
    for name, pool in plan.pools.items():
        chosen[name] = (pool.spec, load_records(pool.spec, mixture.eval_examples, config.training.seed), False)
    for reference in mixture.eval_only:
        spec = load_task(reference)
        if spec.name in chosen:
            raise DataError(f"task {spec.name} is both trained on and listed in mixture.eval_only; a held-out task must never be trained")
        chosen[spec.name] = (spec, load_records(spec, mixture.eval_examples, config.training.seed), True)
    return chosen


def score_tasks(target: Target | None, tasks: dict[str, tuple[TaskSpec, list[Record], bool]], seed: int,
                target_for: Callable[[str], Target] | None = None) -> dict[str, TaskResult]:
    """Each task's own metric; `target_for(task)` gives a per-task target (a head, a routed adapter) instead of one."""
    results = {}
    for name, (spec, records, _) in tasks.items():
        answering = target_for(name) if target_for is not None else target
        print(f"scoring {answering.name} on {name} ({len(records)} examples) ...", flush=True)
        results[name] = run_task(answering, spec, records, samples=1000, seed=seed)
    return results


def _score_base(config: RunConfig, tasks, target_for: Callable[[str], Target]) -> dict[str, TaskResult] | None:
    """The model before tuning on every task, unless `eval.evaluate_base` is off (e.g. a comparison scores it once)."""
    return score_tasks(None, tasks, config.training.seed, target_for) if config.eval.evaluate_base else None


def _macro(results: dict[str, TaskResult] | None, tasks, held_out: bool) -> float | None:
    """Mean primary metric over the scored 0-100 metrics of trained (or held-out) tasks."""
    if results is None:
        return None
    values = [r.scores[tasks[n][0].primary_metric].value for n, r in results.items()
              if not r.skipped and tasks[n][2] == held_out and get_metric(tasks[n][0].primary_metric).higher_is_better]
    return sum(values) / len(values) if values else None


def evaluation_summary(tasks, base: dict[str, TaskResult] | None, tuned: dict[str, TaskResult]) -> dict:
    per_task = {name: {"kind": spec.kind, "metric": spec.primary_metric, "held_out": held_out,
                       "base": base[name].as_dict() if base else None, "tuned": tuned[name].as_dict()}
                for name, (spec, _, held_out) in tasks.items()}
    return {"tasks": per_task,
            "macro_average": {"base": _macro(base, tasks, False), "tuned": _macro(tuned, tasks, False)},
            "held_out_average": {"base": _macro(base, tasks, True), "tuned": _macro(tuned, tasks, True)}}


@dataclass
class Setup:
    """What one architecture brings to the shared training loop."""

    model: torch.nn.Module
    trainable: TrainableReport
    train_examples: list[dict]
    validation: dict[str, list[dict]]
    trainer_class: type
    collator: object
    target: Callable[[str, str], Target]
    """(task name, label) -> a Target that answers that task with the current weights."""
    save: Callable[[Path], None]
    steps: int
    """Optimiser steps that cover the planned order."""


def _planned_steps(config: RunConfig, plan: Plan) -> int:
    return len(plan.order) // (config.training.batch_size * config.training.gradient_accumulation_steps)


def _text_to_text(config: RunConfig, plan: Plan, tokenizer, source: str, tasks) -> tuple[Setup, dict[str, TaskResult]]:
    """One instruction-following model; the base is scored before the method touches it."""
    model = on_device(load_model(config.task, source))
    base = _score_base(config, tasks, lambda task: Target(config.model.name, model, tokenizer, config.task, None,
                                                          config.training.eval_batch_size))
    model, trainable = apply_method(model, config)
    weights = {name: pool.loss_weight for name, pool in plan.pools.items()}
    examples = encode_instructions(_instruction_records(plan, config), tokenizer, config, weights)
    method = method_module(config.method.name)
    return Setup(model, trainable, examples, _validation_sets(plan, tokenizer, config),
                 PlannedOrderTrainer if config.task == "causal_lm" else WeightedSeq2SeqTrainer,
                 WeightedCollator(make_collator(config.task, tokenizer)),
                 lambda task, label: Target(label, model, tokenizer, config.task, None, config.training.eval_batch_size),
                 lambda directory: method.save(model, directory), _planned_steps(config, plan)), base


class TaskView(torch.nn.Module):
    """One task's head of a multi-head model, shaped like a sequence classifier for the shared evaluation code."""

    def __init__(self, model: MultiHeadClassifier, task: str):
        super().__init__()
        self.model, self.task, self.config = model, task, model.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return SequenceClassifierOutput(logits=self.model.predict(input_ids, attention_mask, self.task, token_type_ids))


def _classification_data(spec: TaskSpec, config: RunConfig) -> DataConfig:
    pair = spec.input_fields[1] if len(spec.input_fields) > 1 else None
    return DataConfig(text_field=spec.input_fields[0], text_pair_field=pair, label_field=spec.label_field,
                      max_length=config.data.max_length)


def _head_examples(records: list[Record], spec: TaskSpec, task_id: int, weight: float, tokenizer, config) -> list[dict]:
    labels = list(spec.label_words)
    for record in records:
        spec.label_of(record)  # an unknown label is an error naming the record
    examples = encode_classification(records, tokenizer, _classification_data(spec, config), labels).examples
    return [{**e, "task_ids": task_id, "loss_weights": weight} for e in examples]


class HeadCollator:
    """Pads the token fields and stacks task ids, labels and loss weights."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        extra = {key: [f[key] for f in features] for key in ("task_ids", "labels", "loss_weights")}
        batch = self.pad([{k: v for k, v in f.items() if k not in extra} for f in features])
        batch["task_ids"] = torch.tensor(extra["task_ids"])
        batch["labels"] = torch.tensor(extra["labels"])
        batch["loss_weights"] = torch.tensor(extra["loss_weights"], dtype=torch.float32)
        return batch


class PlannedOrderHeadTrainer(_PlannedOrder, Trainer):
    """Multi-head training: the model computes its own (weighted) loss, over the planned order."""


def _multi_head(config: RunConfig, plan: Plan, tokenizer, source: str, tasks) -> tuple[Setup, dict[str, TaskResult]]:
    """A shared encoder with one head per task; the base is the encoder with its untrained (seeded) heads."""
    for name, pool in plan.pools.items():
        if pool.spec.kind != "classification" or not 1 <= len(pool.spec.input_fields) <= 2:
            raise DataError(f"task {name} is a {pool.spec.kind} task with inputs {pool.spec.input_fields}; "
                            "multi_head trains classification heads over one or two input texts")
    names = list(plan.pools)
    model = build_multihead(source, {n: list(plan.pools[n].spec.label_words) for n in names}, seed=config.training.seed)
    encoded = {n: _head_examples(p.records, p.spec, names.index(n), p.loss_weight, tokenizer, config) for n, p in plan.pools.items()}
    examples = [encoded[task][index] for task, index in plan.order]
    validation = {n: _head_examples(records, plan.pools[n].spec, names.index(n), 1.0, tokenizer, config)
                  for n, records in _validation_records(plan, config).items()}
    on_device(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = TrainableReport(total, total)

    def target(task: str, label: str) -> Target:
        return Target(label, TaskView(model, task), tokenizer, "classification", list(plan.pools[task].spec.label_words),
                      config.training.eval_batch_size)

    base = _score_base(config, tasks, lambda task: target(task, f"{config.model.name} (untrained heads)"))
    return Setup(model, trainable, examples, validation, PlannedOrderHeadTrainer, HeadCollator(tokenizer), target,
                 model.save, _planned_steps(config, plan)), base


class RoutedCompletionTrainer(TaskRoutedTrainer, CompletionLossTrainer):
    """Per-task adapters: single-task batches routed to their adapter, with the weighted completion loss."""


class AdaptersOff(torch.nn.Module):
    """The base model inside a task-adapter model (adapters disabled), for held-out tasks that have no adapter."""

    def __init__(self, model):
        super().__init__()
        self.peft, self.config = model, model.config

    def forward(self, *args, **kwargs):
        with self.peft.disable_adapter():
            return self.peft(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft.disable_adapter():
            return self.peft.generate(*args, **kwargs)


def _task_adapters(config: RunConfig, plan: Plan, tokenizer, source: str, tasks) -> tuple[Setup, dict[str, TaskResult]]:
    """One LoRA adapter per task (plus an optional shared one) over a frozen base, trained in one run."""
    model = on_device(load_model(config.task, source))
    batch = config.training.eval_batch_size
    base = _score_base(config, tasks, lambda task: Target(config.model.name, model, tokenizer, config.task, None, batch))
    names = list(plan.pools)
    model = apply_task_adapters(model, names, lora.peft_config(config), shared=config.mixture.shared_adapter)
    total = sum(p.numel() for p in model.parameters())
    trainable = TrainableReport(sum(trainable_by_adapter(model).values()), total)
    weights = {name: pool.loss_weight for name, pool in plan.pools.items()}
    records = _instruction_records(plan, config)
    examples = [{**e, TASK_KEY: r.fields["task"]} for e, r in zip(encode_instructions(records, tokenizer, config, weights), records)]
    validation = {name: [{**e, TASK_KEY: name} for e in rows] for name, rows in _validation_sets(plan, tokenizer, config).items()}
    per_batch = config.training.batch_size * config.training.gradient_accumulation_steps
    steps = sum(math.ceil(sum(t == name for t, _ in plan.order) / per_batch) for name in names)

    def target(task: str, label: str) -> Target:
        if task in names:
            route(model, task)
            return Target(label, model, tokenizer, config.task, None, batch)
        if config.mixture.shared_adapter:  # a held-out task: the shared adapter is what generalises
            model.base_model.set_adapter([SHARED])
            return Target(f"{label}, shared adapter", model, tokenizer, config.task, None, batch)
        return Target(f"{label}, adapters off", AdaptersOff(model), tokenizer, config.task, None, batch)

    return Setup(model, trainable, examples, validation, RoutedCompletionTrainer,
                 WeightedCollator(make_collator(config.task, tokenizer)), target,
                 lambda directory: save_task_adapters(model, directory), steps), base


def train_mixture(config: RunConfig) -> RunDir:
    """Train one model on the mixture (as `mixture.architecture` says) and write a complete run directory."""
    # its planned example order, per-task targets and run directory are single-process code
    distributed.refuse_multiprocess("multi-task (mixture:) runs")
    check_reference(config.model.name, config.model.revision)
    check_family(config.model.name, config.task)
    check_method(config)
    plan = plan_training(config)  # every data and mixture error before a model loads
    tasks = _scored_tasks(config, plan)
    precision = choose_precision(config.training.precision)
    print(f"precision: {precision} (training.precision={config.training.precision})")
    run = RunDir.create(config)
    print(f"run directory: {run.path}")
    run.update_state(state="running", precision=precision, mixture=plan.stages)
    with run.marks_failure():
        source = resolve_source(config.model.name, config.model.revision)
        tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
        set_seed(config.training.seed)
        build = {"text_to_text": _text_to_text, "multi_head": _multi_head, "task_adapters": _task_adapters}[config.mixture.architecture]
        setup, base = build(config, plan, tokenizer, source, tasks)
        seed = config.training.seed
        print(f"{config.mixture.architecture}, method {config.method.name}: {setup.trainable}")
        trainer = build_trainer(setup.model, tokenizer, config, run, setup.train_examples, setup.validation or None,
                                precision, setup.trainer_class)
        trainer.data_collator = setup.collator
        trainer.compute_metrics = None
        trainer.args.prediction_loss_only = True
        _configure_schedule(trainer, setup.steps, bool(setup.validation))
        run.update_state(trainable=setup.trainable.as_dict(), examples={
            "train": len(setup.train_examples), "validation": sum(map(len, setup.validation.values())),
            "test": sum(len(t[1]) for t in tasks.values())})
        window = reset_peak()
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        memory = peak_memory(window)
        tuned = score_tasks(None, tasks, seed, target_for=lambda task: setup.target(task, f"{config.name} (tuned)"))
        evaluation = {**evaluation_summary(tasks, base, tuned), "trainable": setup.trainable.as_dict(),
                      "method": config.method.name, "architecture": config.mixture.architecture}
        run.save_model(setup.save, tokenizer)
        write_json(run.eval_path, evaluation)
        run.update_state(train_seconds=train_seconds, steps=trainer.state.global_step, learning_rate=config.learning_rate(),
                         **memory)
        write_atomic(run.card_path, render_mixture_card(config, run.state(), evaluation))
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        run.update_state(state="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run
