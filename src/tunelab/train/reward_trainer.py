"""The Trainer of reward models: a pair's two answers scored in one forward, trained by the pairwise
(Bradley–Terry) loss -log σ(r_chosen − r_rejected), the loss of InstructGPT's reward model and of TRL's
RewardTrainer.

A batch (`tunelab.kinds.reward.RewardPairs`) holds every chosen sequence, then every rejected one, so the model
reads both answers of every pair at once; validation reports the loss and the share of pairs scored the right way
round (`pairwise_accuracy_from_scores`), which picks the best checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from tunelab.train.trainer import PlannedOrder, WatchedSteps


def pair_rewards(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's chosen and rejected score from one forward over the batch's sequences (chosen ones first)."""
    scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0].float()
    return scores.chunk(2)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley–Terry loss, mean over pairs: low when the chosen answer scores well above the rejected one."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy_from_scores(prediction) -> dict[str, float]:
    """Validation's share (0-100) of pairs whose chosen answer scores above its rejected one, from the [pairs, 2]
    scores `RewardTrainer.prediction_step` returns."""
    scores = np.asarray(prediction.predictions)
    return {"accuracy": 100.0 * float((scores[:, 0] > scores[:, 1]).mean())}


class RewardTrainer(WatchedSteps, PlannedOrder, Trainer):
    """A reward model's training over the planned order, by the pairwise loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_rewards(model, inputs)
        loss = pairwise_loss(chosen, rejected)
        return (loss, {"scores": torch.stack([chosen, rejected], dim=1)}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Validation's loss and each pair's two scores, with a placeholder label per pair: the Trainer computes
        metrics only where it has labels, and a pair's label (chosen first) is its order."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        scores = outputs["scores"].detach()
        return loss.detach(), scores, torch.zeros(len(scores), device=scores.device)
