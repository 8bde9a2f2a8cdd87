"""chat: a decoder tuned on whole conversations, the loss on the turns `data.train_roles` names and their closing
tokens (`tunelab.kinds.chat`), by any method; trained, packed and served as text-to-text is."""

from __future__ import annotations

from tunelab.config import RunConfig
from tunelab.data.encode import TASK_KEY
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet
from tunelab.models.family import model_family
from tunelab.train.objectives.base import ObjectiveError, encoded_examples
from tunelab.train.objectives.text_to_text import TextToText


class ChatObjective(TextToText):
    name = "chat"
    base_note = (
        "Base = the pretrained model before tuning, given the same conversations through the same chat template."
    )
    trains_mixtures = False

    def check(self, config: RunConfig) -> None:
        if config.data.kind != "chat":
            raise ObjectiveError(
                f"objective chat trains conversations (data.kind: chat); data.kind is {config.data.kind}"
            )
        if model_family(config.model) != "decoder":
            raise ObjectiveError(
                f"objective chat tunes a decoder with a chat template; {config.model.name} is an "
                f"{model_family(config.model)} model: pick a decoder (e.g. smollm2-135m-instruct)"
            )

    def _conversations(self, config: RunConfig, records, tokenizer, name: str) -> list[dict]:
        return encoded_examples("chat", "decoder", records, tokenizer, config.data, None, name)

    def _examples(self, config, tasks: TaskSet, plan: Plan, tokenizer) -> list[dict]:
        """One example per planned draw; each distinct conversation is masked and tokenised once."""
        ((name, task),) = tasks.trained.items()
        distinct = sorted({index for _, index in plan.order})
        encoded = dict(
            zip(distinct, self._conversations(config, [task.train[i] for i in distinct], tokenizer, "train"))
        )
        return [{**encoded[index], "loss_weights": task.loss_weight, TASK_KEY: name} for _, index in plan.order]

    def _validation(self, config, tasks: TaskSet, tokenizer) -> dict[str, list[dict]]:
        return {
            name: [
                {**e, TASK_KEY: name}
                for e in self._conversations(config, task.validation, tokenizer, f"{name} validation")
            ]
            for name, task in tasks.trained.items()
            if task.validation
        }
