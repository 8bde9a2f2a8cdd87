"""Deployment formats written from a complete run directory, registered by name: `tunelab export RUN --format NAME`
picks one module here, and the command's choices, help and options are read from this registry.

Every format module provides the same four things, so the command never branches on the format:

- ``NAME``: the `--format` value;
- ``DESCRIPTION``: one line for `tunelab export --help`: what the format is for and which runs it takes;
- ``OPTIONS``: the `ExportOption`s only this format reads (an empty tuple when it reads none);
- ``export(run, output, task=None, **options)``: write the run (for a multi-task run, the head or adapter of
  `task`) into the new folder `output` and return it, or raise ``ExportError`` saying what to do instead.

A format module imports only light modules at its top: the command line reads this registry on every command, so
torch, onnxruntime and the pipeline are imported inside the functions that use them.

Adding a format is one module and one ``register_export_format`` line.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunelab.config import ConfigError
from tunelab.export import gguf, onnx, transformers
from tunelab.export.base import ExportError, ExportOption

if TYPE_CHECKING:
    from tunelab.runs import RunDir

EXPORT_ARGUMENTS = ("run", "format", "output", "task")
"""`tunelab export`'s own arguments, which no format option may take the name of."""


class ExportFormat(Protocol):
    """What `tunelab export` reads of a format: usually a module, and any object with these attributes will do."""

    NAME: str
    DESCRIPTION: str
    OPTIONS: tuple[ExportOption, ...]

    def export(self, run: RunDir, output: Path, task: str | None = None, **options: Any) -> Path: ...


EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(export_format: ExportFormat) -> None:
    """Add a format (a module, or any object with the four attributes) to `tunelab export`, checked here so a
    mistake fails at import with what to fix, not as a confusing command line."""
    name = getattr(export_format, "NAME", None)
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ExportError(f"{export_format!r}: NAME must be a lowercase word (the --format value), not {name!r}")
    if name in EXPORT_FORMATS:
        raise ExportError(f"export format '{name}' is registered twice; give the new one another NAME")
    description = getattr(export_format, "DESCRIPTION", None)
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise ExportError(f"export format '{name}': DESCRIPTION must be one line for `tunelab export --help`")
    export = getattr(export_format, "export", None)
    if not callable(export):
        raise ExportError(f"export format '{name}' has no export(run, output, task=None, **options) function")
    parameters = inspect.signature(export).parameters
    if list(parameters)[:3] != ["run", "output", "task"]:
        raise ExportError(f"export format '{name}': export must take (run, output, task=None, ...)")
    for option in _checked_options(name, getattr(export_format, "OPTIONS", None)):
        if option.name not in parameters:
            raise ExportError(f"export format '{name}' declares {option.flag}, which its export does not take")
    EXPORT_FORMATS[name] = export_format


def _checked_options(name: str, options: object) -> tuple[ExportOption, ...]:
    """The format's options, each a new flag: not one of the command's arguments, nor another format's."""
    if not isinstance(options, tuple) or not all(isinstance(option, ExportOption) for option in options):
        raise ExportError(f"export format '{name}': OPTIONS must be a tuple of ExportOption (empty for none)")
    taken = {option.name: other for other, fmt in EXPORT_FORMATS.items() for option in fmt.OPTIONS}
    for option in options:
        if option.name in EXPORT_ARGUMENTS:
            raise ExportError(f"export format '{name}': {option.flag} is one of `tunelab export`'s own arguments")
        if option.name in taken:
            raise ExportError(f"export format '{name}': {option.flag} is already --format {taken[option.name]}'s")
    return options


def export_run(name: str, run: RunDir, output: Path, task: str | None = None, **given: Any) -> Path:
    """Write `run` as format `name` into `output`. `given` holds format options as the command line read them
    (None: not set); one that another format reads is refused rather than ignored."""
    export_format = EXPORT_FORMATS[name]
    owners = {option.name: fmt.NAME for fmt in EXPORT_FORMATS.values() for option in fmt.OPTIONS}
    options = {key: value for key, value in given.items() if value is not None}
    for key in options:
        if owners.get(key) != name:
            takes = ", ".join(option.flag for option in export_format.OPTIONS) or "no options"
            raise ConfigError(
                f"--{key.replace('_', '-')} is for --format {owners.get(key)}; --format {name} takes {takes}"
            )
    return export_format.export(run, output, task, **options)


register_export_format(gguf)
register_export_format(onnx)
register_export_format(transformers)
