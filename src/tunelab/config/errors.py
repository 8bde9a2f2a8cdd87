"""The config's error, and pydantic's validation errors told as what to fix: the key as the user wrote it, the bad
value, and a did-you-mean for misspelt keys and choices."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from tunelab.errors import TunelabError


class ConfigError(TunelabError, ValueError):
    """A configuration problem the user must fix; the message says what and how."""


def _section_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model under `root` that owns the field at `loc` (all but its last element)."""
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _user_loc(error: dict[str, Any]) -> tuple:
    """The error's location as the user wrote it: pydantic's union-member tags ('literal[...]', 'list[str]',
    'function-after[...]') dropped, except the last part of an unknown key, which is the user's own word."""
    loc = error["loc"]
    user_key = loc[-1:] if error["type"] == "extra_forbidden" else ()
    path = loc[: len(loc) - len(user_key)]
    return tuple(p for p in path if not str(p).startswith(("function-", "literal[", "list["))) + user_key


def describe_error(error: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error from validating `root`, as a line that names the key and says what to write instead."""
    loc = _user_loc(error)
    key = ".".join(str(p) for p in loc) or "(top level)"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        section = _section_at(loc, root)
        known = sorted(section.model_fields) if section else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" Did you mean '{'.'.join(map(str, loc[:-1] + (guess[0],)))}'?" if guess else ""
        return f"unknown key '{key}'.{hint} Known keys here: {', '.join(known)}"
    allowed = error.get("ctx", {}).get("expected")
    message = f"{key}: {error['msg']}" + (f" (got {value!r})" if loc else "")
    if allowed:
        choices = [c.strip(" '") for c in allowed.replace(" or ", ",").split(",") if c.strip(" '")]
        guess = difflib.get_close_matches(str(value), choices, n=1)
        if guess:
            message += f". Did you mean '{guess[0]}'?"
    return message
