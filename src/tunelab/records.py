"""A record and the error that names one: what every layer that reads, checks or scores examples passes around.

At the bottom, beside errors and render, so that task files (`tunelab.tasks`), kinds of example
(`tunelab.kinds`) and data reading (`tunelab.data`) share one Record without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import TunelabError


class DataError(TunelabError, ValueError):
    """Data that cannot be used as it is; the message names file, line and field."""


@dataclass
class Record:
    fields: dict[str, Any]
    where: str
    """'path:line' for files, 'hf:name[split] row N' for hub datasets."""
    problem: str | None = field(default=None)
    """Why the record could not even be parsed (malformed JSON, bad bytes); None when it parsed."""
