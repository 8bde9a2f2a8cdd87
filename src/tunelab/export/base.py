"""What every export format shares: the error it raises, and how it declares a `tunelab export` option."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import TunelabError


class ExportError(TunelabError, ValueError):
    """A run that cannot be written in the asked format, or an export that cannot be used as asked, with what to
    do instead."""


@dataclass(frozen=True)
class ExportOption:
    """A `tunelab export` option that one format reads: `--NAME` on the command line, passed to the format's
    `export` as the keyword NAME when given (the default is `export`'s own)."""

    name: str
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")
