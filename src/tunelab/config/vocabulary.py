"""Configs written before issue 30's one vocabulary still load: each old key is read as the new one, with one
`note:` line naming the new key.

`task_type:` (or the older `task:`) declared both a kind of example and a model family; the kind is now `data.kind`
and the family is read from the model. `mixture.architecture:` chose how a mixture trains; that is now the top-level
`objective:`, which a `data:` run may choose too.
"""

from __future__ import annotations

import difflib
from typing import Any

OLD_TASK_TYPES = {
    "classification": "classification",
    "causal_lm": "generation",
    "seq2seq": "generation",
    "language_modeling": "language_modeling",
}
"""Each old `task_type` as the `data.kind` it declared (causal_lm and seq2seq named a model family too)."""


def read_old_keys(data: Any, notes: bool) -> Any:
    """A raw config with its old keys written as the new ones; `notes` prints one `note:` line per old key (a run
    directory's own saved config is read quietly: it is a record the user does not edit)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "task_type" in data and "task" in data:
        raise ValueError("task and task_type are both old spellings of data.kind; give data.kind only")
    said = []
    for old in ("task_type", "task"):
        if old in data:
            said.append(_read_task_type(data, old))
    mixture = data.get("mixture")
    if isinstance(mixture, dict) and "architecture" in mixture:
        said.append(_read_architecture(data, dict(mixture)))
    if notes:
        for line in said:
            print(f"note: {line}")
    return data


def _read_task_type(data: dict, old: str) -> str:
    value = data.pop(old)
    section = data.get("data")
    if isinstance(section, dict) and "kind" in section:
        raise ValueError(f"{old} is the old spelling of data.kind; give data.kind only (drop {old}: {value})")
    if value not in OLD_TASK_TYPES:
        guess = difflib.get_close_matches(str(value), list(OLD_TASK_TYPES), n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        raise ValueError(
            f"{old}: not a task type (got {value!r}).{hint} It is the old spelling of data.kind: write the kind of "
            "example there instead (classification, generation, tagging, language_modeling)"
        )
    if data.get("mixture") is not None and value == "language_modeling" and data.get("objective") is None:
        data["objective"] = "language_model"  # refused with a mixture, as this config always was
        return f"{old}: {value} is now written objective: language_model (the model family comes from the model)"
    if data.get("mixture") is not None:
        return (
            f"{old}: {value} is no longer read for a mixture: its tasks declare their kinds and the model family "
            "comes from the model; drop it (choose how the mixture trains with objective:)"
        )
    kind = OLD_TASK_TYPES[value]
    if section is None or isinstance(section, dict):
        data["data"] = {**(section or {}), "kind": kind}
    else:  # a DataConfig given as it is
        data["data"] = section.model_copy(update={"kind": kind})
    return f"{old}: {value} is now written data.kind: {kind} (the model family comes from the model)"


def _read_architecture(data: dict, mixture: dict) -> str:
    architecture = mixture.pop("architecture")
    if data.get("objective") is not None:
        raise ValueError(
            f"mixture.architecture is the old spelling of objective; give objective only (drop architecture: "
            f"{architecture})"
        )
    data["mixture"] = mixture
    data["objective"] = architecture
    return f"mixture.architecture: {architecture} is now written objective: {architecture} (a top-level key)"
