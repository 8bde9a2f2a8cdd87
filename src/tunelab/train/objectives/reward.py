"""reward: a reward model, a scalar head (a sequence classifier with one output) on an encoder or a decoder,
trained on preference pairs (data.kind: reward) by the pairwise loss (`tunelab.train.reward_trainer`), by any
method; under LoRA and the other PEFT methods the new head trains beside the adapters, as a classifier's does.

The head's one output is the run's one label (`RewardKind.head_labels`), so the run is saved, loaded back and
served as a classifier is; evaluation, `predict` and `serve` read its scores (`tunelab.eval.rewards`).
"""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.data.encode import make_collator
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet
from tunelab.models.family import model_family
from tunelab.train.objectives.base import Feed, Objective, ObjectiveError, encoded_examples
from tunelab.train.reward_trainer import RewardTrainer, pairwise_accuracy_from_scores


class RewardObjective(Objective):
    name = "reward"
    base_note = (
        "Base = the pretrained model with its new, untrained scalar head: it ranks a pair's answers at chance by "
        "construction."
    )
    answers_by_head = True
    scores_answers = True
    trains_mixtures = False
    serves_on_shared_base = True
    default_best_metric = "accuracy"
    metrics_from_predictions = staticmethod(pairwise_accuracy_from_scores)

    def check(self, config: RunConfig) -> None:
        if config.data.kind != "reward":
            raise ObjectiveError(
                f"objective reward trains on preference pairs (data.kind: reward); data.kind is {config.data.kind}"
            )

    def validation_metrics(self, config: RunConfig) -> list[str]:
        return ["accuracy", "loss"]

    def feed(self, model, config: RunConfig, tasks: TaskSet, plan: Plan, tokenizer) -> Feed:
        (task,) = tasks.trained.values()
        family = model_family(config.model)
        train = encoded_examples("reward", family, task.train, tokenizer, config.data, None, "train")
        validation = encoded_examples("reward", family, task.validation, tokenizer, config.data, None, "validation")
        collator = make_collator("reward", family, tokenizer)
        return Feed([train[index] for _, index in plan.order], validation or None, RewardTrainer, collator)
