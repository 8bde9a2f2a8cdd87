"""The preference losses, as formulas on log-probabilities: what each paper defines, written once here and tested
against independent implementations (TRL's, and the papers' formulas) on fixed tensors.

Every loss reads the summed log-probability of each answer under the policy (and, where it has one, the frozen
reference) and the answer's token count; it returns the loss of each example and the implicit rewards logged
as `rewards/chosen` and `rewards/rejected`, as TRL and LLaMA-Factory name them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.config import PreferenceConfig


@dataclass
class AnswerLogProbs:
    """Summed log-probabilities of each example's two answers, and their token counts ([examples] each). For an
    unpaired (KTO) example, `chosen` is its answer and `rejected` another prompt's answer given this prompt (the
    KL estimate's sample)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two answers' mean log-probability per token (length-normalised)."""
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class LossTerms:
    losses: torch.Tensor
    """Each example's loss."""
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_losses(
    settings: PreferenceConfig,
    policy: AnswerLogProbs,
    reference: AnswerLogProbs | None,
    desirable: torch.Tensor | None = None,
) -> LossTerms:
    """Each example's loss under `settings.loss` (with the SFT term of `settings.sft_weight`) and its rewards;
    `reference` is None only for the reference-free losses, `desirable` (1 good, 0 bad) is read by kto alone."""
    beta, loss = settings.resolved_beta(), settings.loss
    if loss == "kto":
        terms = kto(policy, reference, desirable, beta, settings.desirable_weight, settings.undesirable_weight)
    elif loss == "simpo":
        terms = simpo(policy, beta, settings.gamma)
    elif loss == "orpo":
        terms = orpo(policy, beta)
    else:
        terms = {"dpo": dpo, "ipo": ipo, "hinge": hinge}[loss](policy, reference, beta)
    if settings.sft_weight and loss != "kto":
        terms.losses = terms.losses - settings.sft_weight * policy.per_token()[0]
    return terms


def _margins(policy: AnswerLogProbs, reference: AnswerLogProbs) -> torch.Tensor:
    """How much more the policy prefers the chosen answer than the reference does (log-ratio difference)."""
    return (policy.chosen - policy.rejected) - (reference.chosen - reference.rejected)


def _rewards(policy: AnswerLogProbs, reference: AnswerLogProbs, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards: beta times each answer's log-ratio to the reference (not differentiated)."""
    return (
        beta * (policy.chosen - reference.chosen).detach(),
        beta * (policy.rejected - reference.rejected).detach(),
    )


def dpo(policy: AnswerLogProbs, reference: AnswerLogProbs, beta: float) -> LossTerms:
    """Rafailov et al. 2023, eq. 7: -log sigmoid(beta * margin)."""
    return LossTerms(-F.logsigmoid(beta * _margins(policy, reference)), *_rewards(policy, reference, beta))


def hinge(policy: AnswerLogProbs, reference: AnswerLogProbs, beta: float) -> LossTerms:
    """SLiC's hinge on the same margin (Zhao et al. 2023; TRL's `hinge`): max(0, 1 - beta * margin)."""
    return LossTerms(torch.relu(1 - beta * _margins(policy, reference)), *_rewards(policy, reference, beta))


def ipo(policy: AnswerLogProbs, reference: AnswerLogProbs, beta: float) -> LossTerms:
    """Azar et al. 2023, eq. 17, on per-token log-probabilities as TRL computes it: (margin - 1 / (2 tau))^2,
    tau being `beta`."""
    per_token = AnswerLogProbs(*policy.per_token(), torch.ones_like(policy.chosen), torch.ones_like(policy.chosen))
    reference_per_token = AnswerLogProbs(
        *reference.per_token(), torch.ones_like(policy.chosen), torch.ones_like(policy.chosen)
    )
    margin = _margins(per_token, reference_per_token)
    return LossTerms((margin - 1 / (2 * beta)) ** 2, *_rewards(per_token, reference_per_token, beta))


def simpo(policy: AnswerLogProbs, beta: float, gamma: float) -> LossTerms:
    """Meng et al. 2024, eq. 6: -log sigmoid(beta * (mean log p(chosen) - mean log p(rejected)) - gamma), with no
    reference model; the rewards are beta times the per-token log-probabilities."""
    chosen, rejected = policy.per_token()
    losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
    return LossTerms(losses, beta * chosen.detach(), beta * rejected.detach())


def orpo(policy: AnswerLogProbs, beta: float) -> LossTerms:
    """Hong et al. 2024, eq. 6-7: the chosen answer's per-token NLL minus beta (their lambda) times the log-sigmoid
    of the log odds ratio of the per-token probabilities; no reference model."""
    chosen, rejected = policy.per_token()
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    losses = -chosen - beta * F.logsigmoid(log_odds)
    return LossTerms(losses, beta * chosen.detach(), beta * rejected.detach())


def kto(
    policy: AnswerLogProbs,
    reference: AnswerLogProbs,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> LossTerms:
    """Ethayarajh et al. 2024, eq. 8: each answer's log-ratio r against z, the batch's mean log-ratio on mismatched
    answers (the `rejected` slot: another prompt's answer), clamped at 0 and not differentiated; a good answer
    loses 1 - sigmoid(beta (r - z)), a bad one 1 - sigmoid(beta (z - r)), each times its weight. The rewards are
    beta * r of the good answers (`chosen`) and of the bad ones (`rejected`), NaN-free means taken by the caller."""
    ratio = policy.chosen - reference.chosen
    z = (policy.rejected - reference.rejected).mean().clamp(min=0).detach()
    good = desirable.bool()
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))),
    )
    reward = beta * ratio.detach()
    return LossTerms(losses, reward[good], reward[~good])
