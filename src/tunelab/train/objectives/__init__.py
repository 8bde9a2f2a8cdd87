"""The ways a run can train, registered by name: one module per objective (`base.Objective` says what each owns).

- classifier: an encoder with one classification head, tuned by any method (a `data:` classification run);
- text_to_text: one decoder or encoder-decoder answering every task as an instruction, tuned by any method
  (a `data:` generation run, or a FLAN-style mixture);
- multi_head: one shared encoder with a classification head per task (a mixture; full fine-tuning);
- task_adapters: one LoRA adapter per task (plus an optional shared one) over a frozen decoder, each
  single-task batch routed to its adapter (a mixture);
- language_model: a decoder trained on raw text blocks with the loss on every token (continued pre-training);
- chat: a decoder tuned on whole conversations, the loss on the turns meant to train;
- preference: a decoder tuned on preference pairs (or good/bad examples) by DPO or a relative;
- reward: a reward model, a scalar head on an encoder or a decoder trained on preference pairs by the pairwise loss.

Adding an objective is its module and one `register_objective` line here (or one call from anywhere else, as a
test does with a toy objective).
"""

from __future__ import annotations

import difflib
import inspect

from tunelab.config import RunConfig
from tunelab.kinds import HEAD_OBJECTIVES, objective_name
from tunelab.train.objectives.base import REQUIRED_ATTRIBUTES, Feed, Objective, ObjectiveError
from tunelab.train.objectives.chat import ChatObjective
from tunelab.train.objectives.classifier import Classifier
from tunelab.train.objectives.language_model import LanguageModel
from tunelab.train.objectives.multi_head import MultiHead
from tunelab.train.objectives.preference import PreferenceObjective
from tunelab.train.objectives.reward import RewardObjective
from tunelab.train.objectives.task_adapters import TaskAdapters
from tunelab.train.objectives.text_to_text import TextToText

__all__ = [
    "OBJECTIVES",
    "Feed",
    "Objective",
    "ObjectiveError",
    "objective_named",
    "objective_of",
    "register_objective",
]

OBJECTIVES: dict[str, Objective] = {}
"""Every registered objective by name."""


def register_objective(objective: type[Objective]) -> Objective:
    """Register an Objective subclass under its `name` and return its instance. Refused, saying what to fix, when it
    is no Objective subclass, leaves an abstract method or a required attribute undefined, or takes a name that
    is registered already."""
    if not (inspect.isclass(objective) and issubclass(objective, Objective)):
        raise ObjectiveError(
            f"register_objective takes a subclass of tunelab.train.objectives.Objective (the class itself, not an "
            f"instance), not {objective!r}"
        )
    missing = sorted(objective.__abstractmethods__) + [
        a for a in REQUIRED_ATTRIBUTES if not getattr(objective, a, None)
    ]
    if missing:
        raise ObjectiveError(
            f"objective {objective.__qualname__} is incomplete: define {', '.join(missing)} "
            "(tunelab.train.objectives.base.Objective says what each is)"
        )
    registered = OBJECTIVES.get(objective.name)
    if registered is not None:
        raise ObjectiveError(
            f"objective {objective.__qualname__} is named '{objective.name}', which "
            f"{type(registered).__qualname__} is registered as already; give it another name"
        )
    OBJECTIVES[objective.name] = objective()
    if objective.answers_by_head:
        HEAD_OBJECTIVES.add(objective.name)
    return OBJECTIVES[objective.name]


def objective_of(config: RunConfig) -> Objective:
    """The objective a run trains with: the one its config chooses (`objective:`), or the one its kind of example
    or its mixture trains by (`tunelab.kinds.objective_name`)."""
    return objective_named(objective_name(config))


def objective_named(name: str) -> Objective:
    """The registered objective called `name`, or an error naming the registered ones (and the closest)."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    guess = difflib.get_close_matches(name, list(OBJECTIVES), n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    raise ObjectiveError(f"unknown objective '{name}'.{hint} Objectives: {', '.join(OBJECTIVES)}")


register_objective(Classifier)
register_objective(TextToText)
register_objective(MultiHead)
register_objective(TaskAdapters)
register_objective(LanguageModel)
register_objective(ChatObjective)
register_objective(PreferenceObjective)
register_objective(RewardObjective)
