"""Optimisation on Hugging Face `Trainer`, so `accelerate launch` / `torchrun` give multi-GPU and multi-node.

What we add: a precision chosen from what the hardware really runs; the planned example order read as it is
(`tunelab.data.plan`); the run directory's metrics log, progress bar and step/time checkpoints; best-checkpoint
keeping and early stopping for one-task runs; the trackers of `training.report_to` pointed at the run
(`tunelab.train.tracking`); and the losses the objectives (`tunelab.train.objectives`) train with:

- decoders: a completion-only loss that projects only completion positions onto the vocabulary, in chunks (the
  full logits tensor of a 262k-token vocabulary is the largest thing in memory otherwise), each example (or
  packed token) weighted by its task's `loss_weight`;
- encoder-decoders: token cross-entropy with the same weights;
- per-task adapters: the decoder loss, each single-task batch routed to its task's adapter;
- classifiers, multi-head encoders and prompt-learning methods: the model's own loss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import nested_gather
from transformers.utils import is_torch_tf32_available

from tunelab import distributed
from tunelab.config import RunConfig
from tunelab.data.encode import VARLEN_KEYS, scored_positions
from tunelab.data.plan import Plan
from tunelab.errors import TunelabError
from tunelab.kinds.encoding import IGNORE_INDEX
from tunelab.methods.task_adapters import TaskRoutedTrainer
from tunelab.runs import RunDir
from tunelab.train.callbacks import LossProgressBar, MetricsLog, TrainingClock
from tunelab.train.tracking import attach_trackers

if TYPE_CHECKING:  # only for annotations: the objectives import this module for their trainers and losses
    from tunelab.train.objectives.base import Feed, Objective

LOSS_CHUNK_LOGITS = 16 * 2**20
"""Logits materialised at once by the completion loss (64 MiB in fp32): a chunk holds this many divided by the
vocabulary size of completion positions (64 for Gemma's 262k vocabulary, 341 for SmolLM2's 49k), and each chunk's
logits are recomputed in backward rather than kept."""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, and PyTorch allowed to use them: without them a bf16 matmul is emulated and ~60x slower
    than fp32 (also where ATEN_CPU_CAPABILITY=avx2 caps PyTorch below the CPU, as on a CPU without AVX-512); with
    AVX512-BF16, LoRA training of smollm2 ran 1.5x faster in bf16 than in fp32 (BENCHMARKS.md, "Training
    throughput")."""
    cpu = torch.cpu
    capped = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
    flags = getattr(cpu, "_is_avx512_bf16_supported", bool)() or getattr(cpu, "_is_amx_tile_supported", bool)()
    return bool(flags) and not capped


GPU_BF16_FROM_PARAMETERS = 1_000_000_000
"""On a GPU, 'auto' trains models smaller than this in fp32 (TF32 matmuls). On an H100, LoRA steps of smollm2-135m
and gemma3-270m ran faster in fp32 than in bf16, for tunelab and TRL alike (BENCHMARKS.md, "The same harness on
one H100"): such steps are bound by kernel launches, and autocast adds casts. Where bf16 starts to win between
270M and this figure has not been measured yet; models from 1B parameters are compute-bound enough for bf16."""


def choose_precision(requested: str, parameters: int | None = None) -> str:
    """Resolve 'auto': on a GPU, fp32 for models under GPU_BF16_FROM_PARAMETERS (when the count is known) and bf16
    above it where supported; on a CPU, bf16 where it runs natively, else fp32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        small = parameters is not None and parameters < GPU_BF16_FROM_PARAMETERS
        return "bf16" if torch.cuda.is_bf16_supported() and not small else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class PlannedOrder:
    """Reads the training examples in the order given: the plan already shuffled, balanced and staged them, and
    under torchrun accelerate deals consecutive per-device batches to consecutive processes. Picks the best
    checkpoint with ties broken by validation loss."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

    def _determine_best_metric(self, metrics, trial) -> bool:
        """The Trainer keeps the first checkpoint with the best score; a later one with the same score and a lower
        validation loss is better. Accuracy on a small validation set moves in steps (2.08 points on the demo's 48
        reviews) and ties often: the first of five tied epochs kept the demo's epoch-2 model, 6 test points below
        the later ones (BENCHMARKS.md, "The demo's checkpoint choice"). The best step's loss is read from the log
        history, so a resumed run breaks ties as the killed one would have."""
        if super()._determine_best_metric(metrics, trial):
            return True
        key = self.args.metric_for_best_model or ""
        score = metrics.get(key if key.startswith("eval_") else f"eval_{key}")
        best = self.state.best_global_step
        logged = [e["eval_loss"] for e in self.state.log_history if e.get("step") == best and "eval_loss" in e]
        if score == self.state.best_metric and logged and metrics.get("eval_loss", logged[0]) < logged[0]:
            self.state.best_global_step = self.state.global_step
            return True
        return False


class TrainingDiverged(TunelabError, RuntimeError):
    """The loss or gradient norm stopped being a finite number: every later step would only train on NaN."""


LOSS_WINDOW = "LossWindow"
"""The key, among trainer_state.json's stateful callbacks, of the logging window a checkpoint was saved in."""


class WatchedSteps:
    """What every tunelab Trainer does after each optimiser step, beside the Trainer's own logging and saving.

    - It stops a diverged run: a loss or gradient norm that is NaN or infinite raises `TrainingDiverged` with the
      step and the learning rate, after logging that step (the Trainer would train on, and by default hides a NaN
      loss behind the average of the window's earlier steps).
    - It keeps the logged loss of a resumed run equal to the uninterrupted run's. The Trainer logs the mean loss
      of the steps since its last log, and a checkpoint falls anywhere in that window; a resumed Trainer starts a
      new window at the checkpoint, so the first loss it logged averaged only the steps after it. Each checkpoint
      keeps the window's start and loss sum (mean over processes) in its trainer_state.json, and a resumed run
      adds them back before its first log.
    """

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        window = self.state.stateful_callbacks.pop(LOSS_WINDOW, None)
        if window:  # resumed inside a logging window: its steps before the checkpoint count again
            tr_loss += window["loss_sum"]
            self._globalstep_last_logged = window["since_step"]
            self._carried_loss = window["loss_sum"]
        diverged = self._diverged(tr_loss, grad_norm)
        if diverged:
            self.control.should_log, self.control.should_evaluate, self.control.should_save = True, False, False
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)
        if getattr(self, "_carried_loss", 0.0) and self._globalstep_last_logged == self.state.global_step:
            self._total_loss_scalar -= self._carried_loss  # train_loss averages this attempt's steps, as before
            self._carried_loss = 0.0
        if diverged:
            raise TrainingDiverged(diverged)

    def _diverged(self, tr_loss: torch.Tensor, grad_norm) -> str | None:
        """Why the run diverged at this step, or None. A step the fp16 loss scaler skipped (it found inf gradients
        and lowers its scale) is not a divergence. One host sync per step, as the Trainer's own NaN filter had."""
        watched = grad_norm is not None and not self.accelerator.optimizer_step_was_skipped
        total = tr_loss.detach() + grad_norm if watched else tr_loss.detach()
        if bool(torch.isfinite(total)):
            return None
        step, rate = self.state.global_step, self.args.learning_rate
        loss = float(tr_loss) / max(1, step - self._globalstep_last_logged)
        norm = f", gradient norm {float(grad_norm):.4g}" if grad_norm is not None else ""
        cause = f"the likely cause is the learning rate {rate:g}: lower training.learning_rate (e.g. to {rate / 10:g})"
        if self.args.fp16:
            cause += " or train in bf16 or fp32 (fp16 overflows)"
        return (
            f"training diverged at step {step} (loss {loss:.4g}{norm}); {cause} and start a new run "
            "(a resumed run keeps its config)"
        )

    def _save_checkpoint(self, model, trial):
        loss_sum = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        self.state.stateful_callbacks[LOSS_WINDOW] = {
            "since_step": self._globalstep_last_logged,
            "loss_sum": loss_sum,
        }
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.state.stateful_callbacks.pop(LOSS_WINDOW, None)


class PlannedTrainer(WatchedSteps, PlannedOrder, Trainer):
    """The model's own loss over the planned order: classifiers, multi-head encoders, prompt-learning decoders."""


class CompletionLossTrainer(WatchedSteps, PlannedOrder, Trainer):
    """Causal-LM training whose loss projects only completion positions onto the vocabulary, in chunks.

    The result equals the model's own shifted cross-entropy (tested), but memory
    scales with completion tokens x vocabulary / chunks instead of every
    position of every sequence.
    """

    loss_is_scaled_for_ga = True  # we divide by num_items_in_batch, like HF models do

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Summed completion-token cross-entropy over the batch's token count; an optional `loss_weights` (per
        example, or per token in packed rows) scales each token (the weighted multi-task loss)."""
        labels = inputs["labels"]
        weights = inputs.get("loss_weights")
        # Padded batches carry an attention mask, packed ones position ids that restart per example and the varlen
        # arguments that let attention run per example (tunelab.models.attention). No KV cache: transformers only
        # reads packed boundaries from position ids when there is none (else attention would leak).
        # The forward goes through `model` itself, not its inner decoder, because under DDP only a forward of the
        # wrapper synchronises gradients; logits_to_keep=1 keeps it from projecting every position on the vocabulary.
        boundaries = {k: inputs[k] for k in ("attention_mask", "position_ids", *VARLEN_KEYS) if k in inputs}
        outputs = model(
            input_ids=inputs["input_ids"], use_cache=False, output_hidden_states=True, logits_to_keep=1, **boundaries
        )
        hidden = outputs.hidden_states[-1]  # the final (normed) hidden states
        inner = extract_model_from_parallel(model)
        head = inner.get_output_embeddings()
        positions = inputs.get("scored_positions")
        if positions is None:  # a batch from another collator: found here, which waits on a GPU
            positions = scored_positions(labels)
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        targets = labels.reshape(-1).index_select(0, positions + 1)  # each position predicts the next token
        if weights is not None:  # per token in packed rows (the predicted token's), else per example (its row's)
            owners = positions + 1 if weights.dim() == 2 else positions // labels.shape[1]
            weights = weights.float().reshape(-1).index_select(0, owners)
        softcap = getattr(inner.config, "final_logit_softcapping", None)

        def chunk_loss(states: torch.Tensor, gold: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
            logits = head(
                states.to(head.weight.dtype)
            ).float()  # outside the model's autocast: match a bf16-stored head
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            losses = F.cross_entropy(logits, gold, reduction="none")
            return (losses if weight is None else losses * weight).sum()

        total = hidden.new_zeros((), dtype=torch.float32)
        chunk = max(1, LOSS_CHUNK_LOGITS // head.weight.shape[0])  # rows of the head = vocabulary size
        for start in range(0, targets.numel(), chunk):  # numel is known on the host: no sync
            end = start + chunk
            total = total + checkpoint(
                chunk_loss,
                selected[start:end],
                targets[start:end],
                None if weights is None else weights[start:end],
                use_reentrant=False,
            )
        loss = _per_item(self, total, num_items_in_batch, targets.numel())
        return (loss, {"loss": loss}) if return_outputs else loss


def _per_item(trainer: Trainer, total: torch.Tensor, num_items_in_batch, items: int) -> torch.Tensor:
    """A summed token loss divided by the tokens of the whole optimiser step, as HF models do it.

    num_items_in_batch counts every process's tokens over the accumulation steps and DDP averages gradients over
    processes, so each process's share is scaled back up by their number (what Trainer.compute_loss does).
    """
    loss = total / (num_items_in_batch if num_items_in_batch is not None else max(1, items))
    if num_items_in_batch is not None and trainer.args.average_tokens_across_devices:
        loss = loss * trainer.accelerator.num_processes
    return loss


class WeightedSeq2SeqTrainer(WatchedSteps, PlannedOrder, Trainer):
    """Encoder-decoders: token cross-entropy, each example weighted by its task's `loss_weight`."""

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("loss_weights", None)
        outputs = model(**inputs)
        labels = inputs["labels"]
        token_loss = F.cross_entropy(
            outputs.logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        if weights is not None:
            token_loss = token_loss * weights[:, None].to(token_loss)
        scored = labels != IGNORE_INDEX
        loss = _per_item(self, (token_loss * scored).sum(), num_items_in_batch, int(scored.sum()))
        return (loss, outputs) if return_outputs else loss


class RoutedCompletionTrainer(TaskRoutedTrainer, CompletionLossTrainer):
    """Per-task adapters: each single-task batch routed to its adapter, with the weighted completion loss."""


def accuracy_from_logits(prediction) -> dict[str, float]:
    """A classifier's validation accuracy on the 0-100 scale of every other report (eval, card, sweep, compare)."""
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": 100.0 * float((np.argmax(logits, axis=-1) == labels).mean())}


def adds_virtual_tokens(model) -> bool:
    """Prefix and prompt tuning (PEFT prompt learning) insert positions inside the model's own forward."""
    peft_config = getattr(model, "active_peft_config", None)
    return bool(peft_config is not None and peft_config.is_prompt_learning)


def can_reload_best_checkpoint(model) -> bool:
    """PEFT saves reparameterised prefixes as their MLP's output, which it cannot load back into a model that
    still has the MLP (peft issue 2256), so such runs cannot switch to their best checkpoint at the end."""
    peft_config = getattr(model, "active_peft_config", None)
    return not (peft_config is not None and peft_config.peft_type == "PREFIX_TUNING" and peft_config.prefix_projection)


class CheckpointEvery(TrainerCallback):
    """A checkpoint every `steps` optimiser steps and whenever `minutes` have passed since the last one, beside
    the one at every evaluation, so a killed run resumes having lost little. Under torchrun, rank 0's clock
    decides for every rank (they must save together)."""

    def __init__(self, steps: int | None, minutes: float | None):
        self.steps, self.seconds = steps, minutes * 60 if minutes else None
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        due = bool(self.steps and state.global_step % self.steps == 0)
        due = due or bool(self.seconds and time.monotonic() - self.last >= self.seconds)
        if distributed.share_from_main(due) and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


def training_arguments(
    config: RunConfig, objective: Objective, run: RunDir, precision: str, plan: Plan, validated: bool, keeps_best: bool
) -> TrainingArguments:
    """Trainer settings from the config, the objective and the plan: `plan.steps` optimiser steps over the planned
    order, with validation (and a checkpoint) every `plan.eval_steps`; `keeps_best` returns to the best checkpoint
    at the end; predictions are gathered only for an objective that computes metrics from them."""
    training = config.training
    best = objective.best_metric(config)
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        max_steps=plan.steps,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=objective.learning_rate(config),
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,
        lr_scheduler_type=training.scheduler,
        max_grad_norm=training.max_grad_norm,
        optim="adamw_torch_fused",  # one kernel per parameter group instead of several per tensor
        tf32=True if precision == "fp32" and is_torch_tf32_available() else None,  # fp32 matmuls on tensor cores
        torch_compile=training.compile,
        seed=training.seed,
        data_seed=training.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="steps" if validated else "no",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=plan.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=keeps_best,
        metric_for_best_model=best if keeps_best else None,
        greater_is_better=best not in ("loss", "eval_loss"),
        logging_steps=training.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss reaches WatchedSteps, which stops the run, not averaged away
        report_to=list(training.report_to),
        run_name=run.path.name,
        gradient_checkpointing=training.gradient_checkpointing,
        prediction_loss_only=objective.metrics_from_predictions is None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def build_trainer(
    model,
    tokenizer,
    config: RunConfig,
    run: RunDir,
    plan: Plan,
    objective: Objective,
    feed: Feed,
    precision: str,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """The Trainer of a run: the objective's trainer class and collator over its feed. A one-task run with
    validation keeps its best checkpoint and may stop early; a multi-task run keeps its last weights (per-task
    validation losses name no single best), and so does an objective whose checkpoints the Trainer cannot reload
    as its best. `extra_callbacks` watch the run beside its own (a sweep's trial reads every validation through
    one)."""
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left itself
    validation = feed.validation
    one_task = not isinstance(validation, dict) and objective.keeps_best_checkpoint
    keeps_best = bool(validation) and one_task and can_reload_best_checkpoint(model)
    if validation and one_task and not keeps_best:
        print(
            "prefix tuning with reparameterisation: the run keeps its last weights (PEFT cannot reload its best checkpoint)"
        )
    callbacks = [
        MetricsLog(run, plan.steps_per_epoch),
        TrainingClock(run),
        CheckpointEvery(config.training.save_steps, config.training.save_minutes),
        *extra_callbacks,
    ]
    if config.training.early_stopping_patience and keeps_best:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = feed.trainer_class(
        model=model,
        args=training_arguments(config, objective, run, precision, plan, bool(validation), keeps_best),
        data_collator=feed.collator,
        train_dataset=feed.train,
        eval_dataset=validation or None,
        processing_class=tokenizer,
        compute_metrics=objective.metrics_from_predictions,
        callbacks=callbacks,
    )
    if objective.answers_by_head:
        # Classifier heads average their loss over their own batch, so the Trainer must not treat it as a sum over
        # the tokens of all processes and accumulation steps (it would scale it by process count, and skip the
        # division by gradient_accumulation_steps).
        trainer.model_accepts_loss_kwargs = False
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressBar())
    attach_trackers(trainer, run)
    return trainer
