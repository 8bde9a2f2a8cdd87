"""Each preference loss against an independent implementation on fixed log-probabilities: the papers' formulas
written here in plain math (one example at a time, floats, no tensors), and, where TRL is importable (the bench
extra; CI has none), TRL 1.16's own loss code run on the same numbers.

Papers (arXiv ids), the equations the formulas below write out:
- DPO: Rafailov et al. 2023, 2305.18290, eq. 7 (loss) and the gradient of §4 ("What does the DPO update do?").
- IPO: Azar et al. 2023, 2310.12036, eq. 17, tau = beta; on per-token log-probabilities as TRL 1.16 computes it
  (its comment: the IPO authors confirmed the paper's results use that normalisation).
- hinge: the SLiC hinge (Zhao et al. 2023, 2305.10425) on DPO's normalised likelihood ratio, as RSO (Liu et al.
  2023, 2309.06657) and TRL's `hinge` write it: max(0, 1 - beta * margin).
- SimPO: Meng et al. 2024, 2405.14734, eq. 6.
- ORPO: Hong et al. 2024, 2403.07691: eq. 1-2 (the chosen answer's NLL, a mean over its tokens), eq. 3-4 (the odds
  of the length-normalised likelihood), eq. 6-7 (the loss: NLL - lambda * log sigmoid(log odds ratio)).
- KTO: Ethayarajh et al. 2024, 2402.01306, the KTO loss (eq. 7 in TRL's citation; the v3 paper's eq. 8): each
  example lambda_y - v(x, y), v = lambda_D sigmoid(beta (r - z0)) for a good answer and lambda_U sigmoid(beta (z0 -
  r)) for a bad one, z0 = max(0, mean over the batch of the mismatched pairs' log-ratios), not differentiated.
- the SFT term: LLaMA-Factory's `pref_ftx`, its weight times the chosen answer's per-token NLL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunelab.config import PreferenceConfig
from tunelab.train.preference_losses import AnswerLogProbs, preference_losses

POLICY = {
    "chosen": [-12.0, -30.5, -7.25, -50.0, -3.0],
    "rejected": [-15.0, -28.0, -9.0, -41.0, -3.5],
    "chosen_tokens": [6, 15, 3, 20, 1],
    "rejected_tokens": [8, 12, 4, 17, 2],
}
"""Summed answer log-probabilities and token counts of five pairs: margins of both signs, lengths 1 to 20."""
REFERENCE = {
    "chosen": [-13.0, -29.0, -8.0, -48.5, -2.0],
    "rejected": [-14.0, -29.5, -8.5, -42.0, -4.0],
    "chosen_tokens": POLICY["chosen_tokens"],
    "rejected_tokens": POLICY["rejected_tokens"],
}
DESIRABLE = [1, 0, 1, 1, 0]
"""For KTO: whether each example's answer (the `chosen` slot) is good; `rejected` holds its KL sample."""
PAIRED_LOSSES = ("dpo", "ipo", "hinge", "simpo", "orpo")


def logps(values: dict, requires_grad: bool = False) -> AnswerLogProbs:
    """The numbers of POLICY or REFERENCE as the losses read them (float64: the comparisons are to 1e-9)."""
    chosen, rejected = (
        torch.tensor(values[side], dtype=torch.float64, requires_grad=requires_grad) for side in ("chosen", "rejected")
    )
    counts = (torch.tensor(values[f"{side}_tokens"], dtype=torch.float64) for side in ("chosen", "rejected"))
    return AnswerLogProbs(chosen, rejected, *counts)


def tunelab_terms(loss: str, **settings):
    config = PreferenceConfig(loss=loss, **settings)
    reference = logps(REFERENCE) if config.uses_reference else None
    desirable = torch.tensor(DESIRABLE) if loss == "kto" else None
    return config, preference_losses(config, logps(POLICY), reference, desirable)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def pairs():
    """Each pair's numbers as plain floats: policy and reference log-probabilities, token counts."""
    for i in range(len(POLICY["chosen"])):
        yield SimpleNamespace(
            chosen=POLICY["chosen"][i],
            rejected=POLICY["rejected"][i],
            ref_chosen=REFERENCE["chosen"][i],
            ref_rejected=REFERENCE["rejected"][i],
            n_chosen=POLICY["chosen_tokens"][i],
            n_rejected=POLICY["rejected_tokens"][i],
        )


def paper_dpo(pair, beta):
    """Rafailov et al. eq. 7: -log sigmoid(beta log pi(yw)/ref(yw) - beta log pi(yl)/ref(yl)); rewards beta log ratio."""
    chosen_reward = beta * (pair.chosen - pair.ref_chosen)
    rejected_reward = beta * (pair.rejected - pair.ref_rejected)
    return -log_sigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def paper_hinge(pair, beta):
    """RSO's / TRL's hinge: max(0, 1 - (beta log ratio(yw) - beta log ratio(yl)))."""
    _, chosen_reward, rejected_reward = paper_dpo(pair, beta)
    return max(0.0, 1 - (chosen_reward - rejected_reward)), chosen_reward, rejected_reward


def paper_ipo(pair, tau):
    """Azar et al. eq. 17, h = the per-token log-ratio difference: (h - 1 / (2 tau))^2. Its rewards are tau times the
    per-token log-ratios (the quantity the loss moves; LLaMA-Factory logs these, TRL 1.16 the summed ones)."""
    chosen_ratio = (pair.chosen - pair.ref_chosen) / pair.n_chosen
    rejected_ratio = (pair.rejected - pair.ref_rejected) / pair.n_rejected
    return (chosen_ratio - rejected_ratio - 1 / (2 * tau)) ** 2, tau * chosen_ratio, tau * rejected_ratio


def paper_simpo(pair, beta, gamma):
    """Meng et al. eq. 6: -log sigmoid(beta/|yw| log pi(yw) - beta/|yl| log pi(yl) - gamma); rewards the two terms."""
    chosen_reward = beta * pair.chosen / pair.n_chosen
    rejected_reward = beta * pair.rejected / pair.n_rejected
    return -log_sigmoid(chosen_reward - rejected_reward - gamma), chosen_reward, rejected_reward


def paper_orpo(pair, lam):
    """Hong et al.: P(y|x) = exp(mean token log-probability) (eq. 3), odds = P / (1 - P) (eq. 4), L_OR = -log
    sigmoid(log(odds(yw) / odds(yl))) (eq. 7), L = L_SFT + lambda L_OR (eq. 6), L_SFT the per-token NLL of yw
    (eq. 2). Rewards (TRL's, for the log): lambda times the mean token log-probabilities."""
    p_chosen, p_rejected = math.exp(pair.chosen / pair.n_chosen), math.exp(pair.rejected / pair.n_rejected)
    log_odds_ratio = math.log((p_chosen / (1 - p_chosen)) / (p_rejected / (1 - p_rejected)))
    nll = -pair.chosen / pair.n_chosen
    return (
        nll - lam * log_sigmoid(log_odds_ratio),
        lam * pair.chosen / pair.n_chosen,
        lam * pair.rejected / pair.n_rejected,
    )


def paper_kto(beta, desirable_weight, undesirable_weight):
    """Ethayarajh et al.: each example's loss lambda_y - v(x, y) with z0 = max(0, mean KL-sample log-ratio)."""
    examples = list(pairs())
    z0 = max(0.0, sum(e.rejected - e.ref_rejected for e in examples) / len(examples))
    losses, good_rewards, bad_rewards = [], [], []
    for example, good in zip(examples, DESIRABLE):
        r = example.chosen - example.ref_chosen
        if good:
            losses.append(desirable_weight - desirable_weight * sigmoid(beta * (r - z0)))
            good_rewards.append(beta * r)
        else:
            losses.append(undesirable_weight - undesirable_weight * sigmoid(beta * (z0 - r)))
            bad_rewards.append(beta * r)
    return losses, good_rewards, bad_rewards, z0


def paper_losses(loss: str, config: PreferenceConfig) -> tuple[list[float], list[float], list[float]]:
    beta = config.resolved_beta()
    per_pair = {
        "dpo": lambda pair: paper_dpo(pair, beta),
        "hinge": lambda pair: paper_hinge(pair, beta),
        "ipo": lambda pair: paper_ipo(pair, beta),
        "simpo": lambda pair: paper_simpo(pair, beta, config.gamma),
        "orpo": lambda pair: paper_orpo(pair, beta),
    }[loss]
    losses, chosen_rewards, rejected_rewards = zip(*(per_pair(pair) for pair in pairs()))
    return list(losses), list(chosen_rewards), list(rejected_rewards)


def close(tensor: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(tensor.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [None, 0.3], ids=["default-beta", "beta-0.3"])
@pytest.mark.parametrize("loss", PAIRED_LOSSES)
def test_each_paired_loss_and_its_rewards_are_the_papers_formula(loss, beta):
    config, terms = tunelab_terms(loss, beta=beta)
    losses, chosen_rewards, rejected_rewards = paper_losses(loss, config)
    assert close(terms.losses, losses)
    assert close(terms.chosen_rewards, chosen_rewards)
    assert close(terms.rejected_rewards, rejected_rewards)


def test_the_default_betas_are_each_papers_usual_values():
    betas = {loss: PreferenceConfig(loss=loss).resolved_beta() for loss in (*PAIRED_LOSSES, "kto")}
    assert betas == {"dpo": 0.1, "ipo": 0.5, "hinge": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}


def test_simpo_margin_gamma_is_subtracted_after_the_scaling():
    """gamma is the absolute target margin (SimPO's eq. 6 and TRL's `simpo_gamma`), not gamma / beta."""
    config, terms = tunelab_terms("simpo", beta=2.5, gamma=1.2)
    assert close(terms.losses, paper_losses("simpo", config)[0])
    _, no_margin = tunelab_terms("simpo", beta=2.5, gamma=0.0)
    assert (terms.losses > no_margin.losses).all()


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.33, 0.75)])
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_kto_is_the_papers_formula_with_the_batch_kl_estimate(beta, desirable_weight, undesirable_weight):
    config, terms = tunelab_terms(
        "kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight
    )
    losses, good_rewards, bad_rewards, z0 = paper_kto(beta, desirable_weight, undesirable_weight)
    assert z0 > 0  # the fixed numbers exercise the estimate, not only its clamp
    assert close(terms.losses, losses)
    assert close(terms.chosen_rewards, good_rewards)
    assert close(terms.rejected_rewards, bad_rewards)


def test_kto_kl_estimate_is_clamped_at_zero():
    above_policy = {**REFERENCE, "rejected": [value + 5 for value in REFERENCE["rejected"]]}
    config = PreferenceConfig(loss="kto")
    terms = preference_losses(config, logps(POLICY), logps(above_policy), torch.tensor(DESIRABLE))
    beta = config.resolved_beta()
    ratios = [p - q for p, q in zip(POLICY["chosen"], REFERENCE["chosen"])]
    expected = [1 - sigmoid(beta * r) if good else 1 - sigmoid(-beta * r) for r, good in zip(ratios, DESIRABLE)]
    assert close(terms.losses, expected)  # a negative mean log-ratio counts as z0 = 0


def test_kto_kl_estimate_carries_no_gradient():
    """z0 shifts each example's loss but is not differentiated: the KL samples' log-probabilities get no gradient."""
    policy = logps(POLICY, requires_grad=True)
    terms = preference_losses(PreferenceConfig(loss="kto"), policy, logps(REFERENCE), torch.tensor(DESIRABLE))
    terms.losses.sum().backward()
    assert policy.rejected.grad is None
    assert torch.count_nonzero(policy.chosen.grad) == len(DESIRABLE)


@pytest.mark.parametrize("loss", PAIRED_LOSSES)
def test_sft_weight_adds_the_chosen_answers_per_token_nll(loss):
    config, terms = tunelab_terms(loss, sft_weight=0.7)
    losses, chosen_rewards, _ = paper_losses(loss, config)
    nll = [-pair.chosen / pair.n_chosen for pair in pairs()]
    assert close(terms.losses, [value + 0.7 * extra for value, extra in zip(losses, nll)])
    assert close(terms.chosen_rewards, chosen_rewards)  # the SFT term trains; it does not change the rewards


def test_sft_weight_leaves_kto_alone():
    """KTO's examples have no chosen answer to add an NLL on (the good ones are weighted by desirable_weight)."""
    assert close(tunelab_terms("kto", sft_weight=0.7)[1].losses, tunelab_terms("kto")[1].losses.tolist())


def test_dpo_gradient_is_the_papers_weighted_likelihood_step():
    """DPO §4: d loss / d log pi(yw) = -beta sigmoid(r(yl) - r(yw)) and the opposite for yl; the reference and the
    rewards carry no gradient."""
    policy = logps(POLICY, requires_grad=True)
    reference = logps(REFERENCE, requires_grad=True)
    config = PreferenceConfig(loss="dpo", beta=0.3)
    terms = preference_losses(config, policy, reference)
    terms.losses.sum().backward()
    weights = [0.3 * sigmoid(rejected - chosen) for _, chosen, rejected in (paper_dpo(p, 0.3) for p in pairs())]
    assert close(policy.chosen.grad, [-w for w in weights])
    assert close(policy.rejected.grad, weights)
    assert not terms.chosen_rewards.requires_grad and not terms.rejected_rewards.requires_grad


# TRL 1.16's loss code on the same numbers (the bench extra: PYTHONPATH=src:/path/to/trl). Its trainers compute the
# loss inside `_compute_loss` from a model's per-token log-probabilities, so they are called with a stand-in model
# whose per-token log-probabilities sum to the fixed answer log-probabilities, and precomputed reference ones.


def close_in_fp32(trl: torch.Tensor, ours: torch.Tensor) -> bool:
    return torch.allclose(trl.double(), ours.detach().double(), rtol=1e-6, atol=1e-7)


def trl_module():
    return pytest.importorskip("trl", reason="TRL is the bench extra (PYTHONPATH=src:/path/to/trl)")


def stand_in_model(per_token_logps: torch.Tensor):
    """What a TRL trainer reads of a forward with `fused_lm_head=True`: per-token log-probabilities (and statistics
    it only logs)."""
    zeros = torch.zeros_like(per_token_logps)
    return lambda **_: SimpleNamespace(
        log_probs=per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
    )


def spread(sums: list[float], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers after a one-token prompt: the completion mask and per-token log-probabilities (each answer's sum
    spread evenly over its tokens), as TRL's batches hold them (shifted by one for the log-probabilities)."""
    width = max(counts) + 1
    mask = torch.zeros(len(sums), width, dtype=torch.long)
    per_token = torch.zeros(len(sums), width - 1, dtype=torch.float64)
    for row, (total, count) in enumerate(zip(sums, counts)):
        mask[row, 1 : 1 + count] = 1
        per_token[row, :count] = total / count
    return mask, per_token


def stand_in_trainer(beta: float, **attributes):
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t, gather=lambda t: t)
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        beta=beta,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **attributes,
    )


def trl_dpo_loss(loss_types: list[str], weights: list[float], beta: float, pair) -> tuple[float, dict]:
    """TRL DPOTrainer's loss (and logged metrics) on one pair."""
    mask, per_token = spread([pair.chosen, pair.rejected], [pair.n_chosen, pair.n_rejected])
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "ref_chosen_logps": torch.tensor([pair.ref_chosen], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([pair.ref_rejected], dtype=torch.float64),
    }
    trainer = stand_in_trainer(
        beta,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=weights,
        label_smoothing=0.0,
        use_weighting=False,
    )
    loss = trl_module().DPOTrainer._compute_loss(trainer, stand_in_model(per_token), inputs, False)
    return float(loss), {name: values[-1] for name, values in trainer._metrics["train"].items()}


TRL_LOSS_TYPES = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}


@pytest.mark.parametrize("sft_weight", [0.0, 0.7], ids=["alone", "with-sft"])
@pytest.mark.parametrize("loss", sorted(TRL_LOSS_TYPES))
def test_reference_losses_equal_trls_dpo_trainer(loss, sft_weight):
    """One pair per call, where TRL's `sft` (a token mean over the batch's chosen answers) is the pair's own per-token
    NLL, as tunelab's SFT term is."""
    config, terms = tunelab_terms(loss, beta=0.3, sft_weight=sft_weight)
    loss_types, weights = [TRL_LOSS_TYPES[loss]], [1.0]
    if sft_weight:
        loss_types, weights = [*loss_types, "sft"], [1.0, sft_weight]
    for index, pair in enumerate(pairs()):
        value, metrics = trl_dpo_loss(loss_types, weights, 0.3, pair)
        assert value == pytest.approx(float(terms.losses[index]), rel=1e-9), index
        if loss != "ipo":  # TRL 1.16 logs IPO's rewards on summed log-ratios; tunelab's are IPO's per-token ones
            assert metrics["rewards/chosen"] == pytest.approx(float(terms.chosen_rewards[index]), rel=1e-9)
            assert metrics["rewards/rejected"] == pytest.approx(float(terms.rejected_rewards[index]), rel=1e-9)


def test_simpo_equals_trls_cpo_trainer():
    trl_module()
    from trl.experimental.cpo import CPOTrainer

    config, terms = tunelab_terms("simpo", beta=2.5, gamma=1.2)
    trainer = stand_in_trainer(2.5, alpha=0.0, loss_type="simpo", simpo_gamma=1.2, label_smoothing=0.0)
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, *logps(POLICY).per_token())
    assert close_in_fp32(losses, terms.losses)
    assert close_in_fp32(chosen_rewards, terms.chosen_rewards)
    assert close_in_fp32(rejected_rewards, terms.rejected_rewards)


def test_orpo_equals_trls_orpo_trainer():
    """TRL's ORPO loss is its chosen answers' NLL (a token mean over the batch, computed with the logits) minus the
    mean of `odds_ratio_loss`; per pair the NLL is the pair's own per-token NLL, as in the paper's eq. 2 and in
    tunelab. Over a batch of answers of unequal lengths TRL weights each pair's NLL by its length, the paper and
    tunelab do not."""
    trl_module()
    from trl.experimental.orpo import ORPOTrainer

    config, terms = tunelab_terms("orpo", beta=0.25)
    chosen, rejected = logps(POLICY).per_token()
    odds_terms, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(
        stand_in_trainer(0.25), chosen, rejected
    )
    assert close_in_fp32(-chosen - odds_terms, terms.losses)  # TRL computes the odds ratio in fp32
    assert close_in_fp32(chosen_rewards, terms.chosen_rewards)
    assert close_in_fp32(rejected_rewards, terms.rejected_rewards)


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.33, 0.75)])
def test_kto_equals_trls_kto_trainer(desirable_weight, undesirable_weight):
    config, terms = tunelab_terms(
        "kto", beta=0.4, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight
    )
    mask, per_token = spread(POLICY["chosen"], POLICY["chosen_tokens"])
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "label": torch.tensor(DESIRABLE, dtype=torch.bool),
        "ref_logps": torch.tensor(REFERENCE["chosen"], dtype=torch.float64),
        "ref_KL_logps": torch.tensor(REFERENCE["rejected"], dtype=torch.float64),
    }
    trainer = stand_in_trainer(
        0.4,
        loss_type="kto",
        calculate_KL=True,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        _compute_kl_logps=lambda model, batch: torch.tensor(POLICY["rejected"], dtype=torch.float64),
    )
    loss = trl_module().KTOTrainer._compute_loss(trainer, stand_in_model(per_token), inputs, False)
    metrics = trainer._metrics["train"]
    assert float(loss) == pytest.approx(float(terms.losses.mean()), rel=1e-9)
    assert metrics["kl"][-1] == pytest.approx(paper_kto(0.4, desirable_weight, undesirable_weight)[3], rel=1e-9)
    assert metrics["rewards/chosen"][-1] == pytest.approx(float(terms.chosen_rewards.mean()), rel=1e-9)
    assert metrics["rewards/rejected"][-1] == pytest.approx(float(terms.rejected_rewards.mean()), rel=1e-9)
