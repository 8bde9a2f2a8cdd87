"""The Trainer of preference runs: each batch's answers scored under the policy (and the reference), the loss of
`training.preference`, and the rewards logged as TRL and LLaMA-Factory name them.

The reference costs no second model. Under a PEFT method it is the same model with its adapters switched off
(`disable_adapter`), run without gradients; under any other method (full fine-tuning, BitFit) its
log-probabilities were computed once before training, kept in the run directory and read from the batch
(`reference_logps`), so a resumed run reads them again rather than recomputing them.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from tunelab.config import PreferenceConfig
from tunelab.data.encode import VARLEN_KEYS
from tunelab.train.preference_losses import AnswerLogProbs, LossTerms, preference_losses
from tunelab.train.trainer import LOSS_CHUNK_LOGITS, PlannedOrder, WatchedSteps

BATCH_KEYS = ("input_ids", "position_ids", "prompt_sharing", *VARLEN_KEYS)
"""What of a `tunelab.data.pair_rows` batch the model's forward reads."""


def uses_adapters_as_reference(model: torch.nn.Module) -> bool:
    """Whether the untuned model is the same model with its adapters off (a PEFT model)."""
    return hasattr(extract_model_from_parallel(model), "disable_adapter")


def answer_logps(model: torch.nn.Module, batch: dict) -> AnswerLogProbs:
    """Each answer's summed log-probability and token count in a `PairRows` batch: the final hidden states of the
    positions that predict answer tokens projected onto the vocabulary in chunks (each chunk's logits recomputed
    in backward rather than kept), never the prompt's positions."""
    inputs = {key: batch[key] for key in BATCH_KEYS if key in batch}
    hidden = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    inner = extract_model_from_parallel(model)
    head = inner.get_output_embeddings()
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["score_from"])
    gold = batch["score_token"]

    def chunk_logps(chunk_states: torch.Tensor, chunk_gold: torch.Tensor) -> torch.Tensor:
        logits = head(chunk_states.to(head.weight.dtype)).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return -F.cross_entropy(logits, chunk_gold, reduction="none")

    chunk = max(1, LOSS_CHUNK_LOGITS // head.weight.shape[0])
    pieces = [
        checkpoint(chunk_logps, states[start : start + chunk], gold[start : start + chunk], use_reentrant=False)
        if torch.is_grad_enabled()
        else chunk_logps(states[start : start + chunk], gold[start : start + chunk])
        for start in range(0, gold.numel(), chunk)
    ]
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    groups = 2 * batch["examples"]
    sums = token_logps.new_zeros(groups).index_add(0, batch["score_group"], token_logps)
    counts = torch.bincount(batch["score_group"], minlength=groups).to(sums)
    return AnswerLogProbs(sums[0::2], sums[1::2], counts[0::2], counts[1::2])


def reference_logps(model: torch.nn.Module, batch: dict) -> AnswerLogProbs:
    """The reference's answer log-probabilities: precomputed ones the batch carries, else the model with its
    adapters off, without gradients."""
    policy_counts = torch.bincount(batch["score_group"], minlength=2 * batch["examples"]).float()
    if "reference_logps" in batch:
        stored = batch["reference_logps"].float()
        return AnswerLogProbs(stored[:, 0], stored[:, 1], policy_counts[0::2], policy_counts[1::2])
    inner = extract_model_from_parallel(model)
    with torch.no_grad(), inner.disable_adapter():
        return answer_logps(inner, batch)


class PreferenceTrainer(WatchedSteps, PlannedOrder, Trainer):
    """Preference optimisation over the planned order. `settings` is set by `preference_trainer`."""

    settings: PreferenceConfig
    loss_is_scaled_for_ga = False  # a mean over the batch's examples: the Trainer divides by accumulation steps

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._stored: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = answer_logps(model, inputs)
        reference = reference_logps(model, inputs) if self.settings.uses_reference else None
        terms = preference_losses(self.settings, policy, reference, inputs.get("desirable"))
        loss = terms.losses.mean()
        self._store(policy, terms, inputs.get("desirable"), "train" if model.training else "eval")
        return (loss, {"loss": loss}) if return_outputs else loss

    def _store(self, policy: AnswerLogProbs, terms: LossTerms, desirable: torch.Tensor | None, split: str) -> None:
        """This batch's rewards and log-probabilities (means over every process's examples), logged at the next
        log line as the mean of the batches since the last. Every process gathers the same sums and counts
        whatever its examples are: a KTO batch may hold no good or no bad answer, and a value one process left out
        would pair the others' next gather with another value, or leave them waiting."""
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        if desirable is None:  # pairs: each example's two answers
            chosen_logps, rejected_logps = policy.chosen, policy.rejected
        else:  # unpaired: the good answers and the bad ones (the second slot holds another prompt's answer)
            good = desirable.bool()
            chosen_logps, rejected_logps = policy.chosen[good], policy.chosen[~good]
        values = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
        }
        if desirable is None:  # a pair's rewards compare its own two answers
            values["rewards/accuracies"] = (chosen > rejected).float()
        sums = torch.tensor([[float(v.detach().sum()), v.numel()] for v in values.values()], device=chosen.device)
        totals = self.accelerator.gather(sums[None]).sum(0).tolist()  # [processes, values, 2], summed over processes
        means = {name: total / count for name, (total, count) in zip(values, totals) if count}
        if "rewards/chosen" in means and "rewards/rejected" in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        for name, mean in means.items():
            self._stored[split][name].append(mean)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Validation's loss (and rewards, stored for the log): a preference batch has no `labels` for the
        Trainer's own prediction step to find."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean rewards since the last log line: `eval_rewards/...` to a validation's line."""
        split, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        stored, self._stored[split] = self._stored[split], defaultdict(list)
        logs.update({prefix + name: sum(values) / len(values) for name, values in stored.items()})
        super().log(logs, start_time)


def preference_trainer(settings: PreferenceConfig) -> type[PreferenceTrainer]:
    """The preference Trainer class training with `settings` (the loss, beta, the added terms)."""
    return type("PreferenceTrainer", (PreferenceTrainer,), {"settings": settings})
