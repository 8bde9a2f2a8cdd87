"""Optimisation on Hugging Face `Trainer`, so `accelerate launch` / `torchrun` give multi-GPU and multi-node.

What we add: a precision chosen from what the hardware really runs, the run
directory's metrics log and progress bar, best-checkpoint keeping and early
stopping wired from the config, and, for decoders, a loss that only projects
completion positions onto the vocabulary (the full logits tensor of a 262k-token
vocabulary is the largest thing in memory otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from tunelab import distributed
from tunelab.config import RunConfig
from tunelab.data.encode import IGNORE_INDEX, make_collator
from tunelab.runs import RunDir
from tunelab.train.callbacks import LossProgressBar, MetricsLog

LOSS_CHUNK_LOGITS = 16 * 2**20
"""Logits materialised at once by the completion loss (64 MiB in fp32): a chunk holds this many divided by the
vocabulary size of completion positions (64 for Gemma's 262k vocabulary, 341 for SmolLM2's 49k), and each chunk's
logits are recomputed in backward rather than kept."""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them a bf16 matmul is emulated and ~60x slower than fp32; with AVX512-BF16,
    LoRA training of smollm2 ran 1.5x faster in bf16 than in fp32 (BENCHMARKS.md, "Training throughput")."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", bool)() or getattr(cpu, "_is_amx_tile_supported", bool)())


def choose_precision(requested: str) -> str:
    """Resolve 'auto' to bf16 where the device runs it natively, else fp32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def training_arguments(config: RunConfig, run: RunDir, precision: str, reload_best: bool = True,
                       packed: bool = False) -> TrainingArguments:
    """Trainer settings from the config; decoder batches are grouped by length unless they are packed (packing
    leaves no padding to save, so examples keep a random order)."""
    training = config.training
    best = config.best_metric()
    grouped = config.task != "classification" and not packed
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=config.learning_rate(),
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,
        lr_scheduler_type=training.scheduler,
        max_grad_norm=training.max_grad_norm,
        optim="adamw_torch",
        seed=training.seed,
        data_seed=training.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=reload_best,
        metric_for_best_model=best,
        greater_is_better=best not in ("loss", "eval_loss"),
        logging_steps=training.logging_steps,
        logging_first_step=True,
        report_to="none",
        train_sampling_strategy="group_by_length" if grouped else "random",
        gradient_checkpointing=training.gradient_checkpointing,
        prediction_loss_only=config.task != "classification",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


class CompletionLossTrainer(Trainer):
    """Causal-LM training whose loss projects only completion positions onto the vocabulary, in chunks.

    The result equals the model's own shifted cross-entropy (tested), but memory
    scales with completion tokens x vocabulary / chunks instead of every
    position of every sequence.
    """

    loss_is_scaled_for_ga = True  # we divide by num_items_in_batch, like HF models do

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Summed completion-token cross-entropy over the batch's token count; an optional per-example
        `loss_weights` (multi-task weighted loss) scales each example's tokens."""
        labels = inputs["labels"]
        example_weights = inputs.get("loss_weights")
        # Padded batches carry an attention mask, packed ones position ids that restart per example. No KV cache:
        # transformers only reads packed boundaries from position ids when there is none (else attention would leak).
        # The forward goes through `model` itself, not its inner decoder, because under DDP only a forward of the
        # wrapper synchronises gradients; logits_to_keep=1 keeps it from projecting every position on the vocabulary.
        boundaries = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
        outputs = model(input_ids=inputs["input_ids"], use_cache=False, output_hidden_states=True, logits_to_keep=1, **boundaries)
        hidden = outputs.hidden_states[-1]  # the final (normed) hidden states
        inner = extract_model_from_parallel(model)
        head = inner.get_output_embeddings()
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        selected = hidden[:, :-1][scored]
        weights = (example_weights.float()[:, None].expand_as(targets)[scored] if example_weights is not None
                   else torch.ones(int(scored.sum()), device=hidden.device))
        targets = targets[scored]
        softcap = getattr(inner.config, "final_logit_softcapping", None)

        def chunk_loss(states: torch.Tensor, gold: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            logits = head(states.to(head.weight.dtype)).float()  # outside the model's autocast: match a bf16-stored head
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            return (F.cross_entropy(logits, gold, reduction="none") * weight).sum()

        total = hidden.new_zeros((), dtype=torch.float32)
        chunk = max(1, LOSS_CHUNK_LOGITS // head.weight.shape[0])  # rows of the head = vocabulary size
        for start in range(0, targets.numel(), chunk):
            end = start + chunk
            total = total + checkpoint(chunk_loss, selected[start:end], targets[start:end], weights[start:end], use_reentrant=False)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(1, targets.numel())
        loss = total / denominator
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's tokens and DDP averages gradients over processes,
            # so each process's share is scaled back up (what Trainer.compute_loss does for HF models)
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss


def accuracy_from_logits(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def adds_virtual_tokens(model) -> bool:
    """Prefix and prompt tuning (PEFT prompt learning) insert positions inside the model's own forward."""
    peft_config = getattr(model, "active_peft_config", None)
    return bool(peft_config is not None and peft_config.is_prompt_learning)


def can_reload_best_checkpoint(model) -> bool:
    """PEFT saves reparameterised prefixes as their MLP's output, which it cannot load back into a model that
    still has the MLP (peft issue 2256), so such runs cannot switch to their best checkpoint at the end."""
    peft_config = getattr(model, "active_peft_config", None)
    return not (peft_config is not None and peft_config.peft_type == "PREFIX_TUNING" and peft_config.prefix_projection)


def build_trainer(model, tokenizer, config: RunConfig, run: RunDir, train_examples: list[dict],
                  validation_examples: list[dict] | dict[str, list[dict]], precision: str, trainer_class=None) -> Trainer:
    """The Trainer for a run; `trainer_class` replaces the default choice (multi-task runs read a planned order)."""
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left itself
    # The chunked completion loss runs the decoder itself, which would skip PEFT's virtual tokens: prompt-learning
    # methods keep the model's own loss (PEFT pads the labels over the virtual positions).
    chunked = config.task == "causal_lm" and not adds_virtual_tokens(model)
    trainer_class = trainer_class or (CompletionLossTrainer if chunked else Trainer)
    packed = chunked and config.training.packing and trainer_class is CompletionLossTrainer
    reload_best = can_reload_best_checkpoint(model)
    if not reload_best:
        print("prefix tuning with reparameterisation: the run keeps its last weights (PEFT cannot reload its best checkpoint)")
    callbacks = [MetricsLog(run)]
    if config.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = trainer_class(
        model=model,
        args=training_arguments(config, run, precision, reload_best, packed),
        data_collator=make_collator(config.task, tokenizer, config.data.max_length if packed else None),
        train_dataset=train_examples,
        eval_dataset=validation_examples,
        processing_class=tokenizer,
        compute_metrics=accuracy_from_logits if config.task == "classification" else None,
        callbacks=callbacks,
    )
    if config.task == "classification":
        # Classifier heads average their loss over their own batch, so the Trainer must not treat it as a sum over
        # the tokens of all processes and accumulation steps (it would scale it by process count, and skip the
        # division by gradient_accumulation_steps).
        trainer.model_accepts_loss_kwargs = False
    distributed.group_by_global_batch(trainer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressBar())
    return trainer
