"""The registry of kinds of example: a task file's `kind:` names one, and the code asks it what the kind does.

Registering a kind is one line below (or one `register_kind` call, which a test uses for a kind it defines).
Task files written before the kinds were merged still load: `OLD_KINDS` reads each old name as the kind it
now is, with the metric it was judged by when the file names none.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from tunelab.kinds.base import Kind, KindError
from tunelab.kinds.chat import Chat
from tunelab.kinds.classification import Classification
from tunelab.kinds.generation import Generation
from tunelab.kinds.language_modeling import LanguageModeling
from tunelab.kinds.preference import PreferenceKind
from tunelab.kinds.reward import RewardKind
from tunelab.kinds.tagging import Tagging

KINDS: dict[str, Kind] = {}
"""Every registered kind by name, in registration order."""

REQUIRED_ATTRIBUTES = ("name", "needs", "primary_metric", "inline_metrics")


def register_kind(kind: type[Kind]) -> Kind:
    """Add a kind (its class) to the registry, refusing a name already taken or a kind that leaves out what every
    kind supplies (`Kind`'s abstract methods and `REQUIRED_ATTRIBUTES`); the registered instance is returned."""
    if not (inspect.isclass(kind) and issubclass(kind, Kind)):
        raise KindError(f"{kind!r} is not a kind of example: register a subclass of tunelab.kinds.base.Kind")
    missing = sorted(kind.__abstractmethods__) + [a for a in REQUIRED_ATTRIBUTES if not hasattr(kind, a)]
    if missing:
        raise KindError(f"kind {kind.__name__} is incomplete: it must supply {', '.join(missing)}")
    if kind.name in KINDS:
        raise KindError(
            f"a kind named {kind.name!r} is already registered ({type(KINDS[kind.name]).__name__}); "
            "give the new kind another name"
        )
    KINDS[kind.name] = kind()
    return KINDS[kind.name]


register_kind(Classification)
register_kind(Generation)
register_kind(Tagging)
register_kind(LanguageModeling)
register_kind(Chat)
register_kind(PreferenceKind)
register_kind(RewardKind)

OLD_KINDS: dict[str, tuple[str, str]] = {
    "summarisation": ("generation", "rougeL"),
    "translation": ("generation", "bleu"),
    "qa": ("generation", "squad_f1"),
    "ner": ("tagging", "entity_f1"),
}
"""Task kinds before they were merged: each old name's kind now, and the metric it was judged by by default."""


def kind_named(name: str) -> Kind:
    """The registered kind called `name`, or an error naming the kinds there are (and the closest one)."""
    if name in KINDS:
        return KINDS[name]
    guess = difflib.get_close_matches(name, list(KINDS) + list(OLD_KINDS), n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    raise KindError(f"unknown kind of example '{name}'.{hint} Kinds: {', '.join(KINDS)}")


def kind_of_run(config: Any) -> Kind:
    """The kind of example a `data:` run (a `RunConfig`) trains on: its `data.kind`."""
    return kind_named(config.data.kind)


MIXTURE_OBJECTIVE = "text_to_text"
"""How a mixture trains unless its config chooses an objective: every task an instruction to one model."""


HEAD_OBJECTIVES: set[str] = set()
"""The objectives that answer through a classification head, filled by `tunelab.train.objectives` as each
registers: the layers below train (methods, model loading) ask `answers_by_head` while the run is set up."""


def answers_by_head(config: Any) -> bool:
    """Whether a run (a `RunConfig`) answers through a classification head (a classifier, a multi-head model),
    so its base is a sequence classifier and its method keeps the head trainable."""
    return objective_name(config) in HEAD_OBJECTIVES


def objective_name(config: Any) -> str:
    """The objective a run (a `RunConfig`) trains with: the one its config chooses, else a mixture's default, else
    the one its kind of example trains by (`Kind.objective`). `tunelab.train.objectives.objective_of` looks it up."""
    if config.objective is not None:
        return config.objective
    return MIXTURE_OBJECTIVE if config.mixture is not None else kind_of_run(config).objective


def perturbed_kinds() -> str:
    """The kinds robustness and bias may perturb, for a message that says which to use."""
    return " or ".join(name for name, kind in KINDS.items() if kind.perturbed)
