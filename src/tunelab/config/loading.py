"""A run's config from its YAML file and `key.sub=value` overrides, validated with errors that say what to fix,
and written back as YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.chat_templates import is_template_file
from tunelab.config.errors import ConfigError, describe_error
from tunelab.config.overrides import merge_sections, nest_keys, parse_overrides
from tunelab.config.run import RunConfig


def with_values(config: RunConfig, values: dict[str, Any], source: str) -> RunConfig:
    """The config with dotted keys set to values, merged and validated as `key.sub=value` overrides are."""
    return build_config(merge_sections(config.model_dump(mode="json"), nest_keys(values)), source)


def build_config(data: dict[str, Any], source: str = "config", quiet: bool = False) -> RunConfig:
    """Validate a raw config dict, turning pydantic's errors into messages that say what to fix; `quiet` reads old
    keys without their notes."""
    try:
        return RunConfig.model_validate(data, context={"quiet": quiet})
    except ValidationError as exc:
        problems = "\n".join(f"  - {describe_error(e, RunConfig)}" for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n{problems}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), quiet: bool = False) -> RunConfig:
    """Read a YAML config (or start from defaults when path is None), apply overrides, validate. `quiet` reads a
    run directory's own saved config: one written before the new keys loads without a note the user cannot act on
    (the run is a record, not a file to edit)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections (model:, data:, ...), got {type(loaded).__name__}"
            )
        raw = loaded or {}
    tried = _resolve_paths(raw, path.parent, "data", DATA_PATHS) if path is not None else {}
    if path is not None:
        _resolve_paths(raw, path.parent, "eval", EVAL_PATHS)  # a path found nowhere is refused where it is read
    if overrides:
        source += " with overrides " + " ".join(overrides)
    changes = parse_overrides(list(overrides))
    config = build_config(merge_sections(raw, changes), source, quiet)
    overridden = changes.get("data") if isinstance(changes.get("data"), dict) else {}
    config.data._tried.update({key: places for key, places in tried.items() if key not in overridden})
    return config


DATA_PATHS = ("train", "validation", "test", "chat_template")
"""The `data:` keys that name files or folders, resolved against the config file's folder (a built-in chat
template's name is left as it is)."""


EVAL_PATHS = ("judge",)
"""The `eval:` keys that name folders (the judge's run directory), resolved as data paths are."""


def _resolve_paths(raw: dict[str, Any], folder: Path, section: str, keys: tuple[str, ...]) -> dict[str, list[str]]:
    """Make the config file's relative paths under `section` (its `keys`) absolute, read from the config's folder (as
    Axolotl and LLaMA-Factory read their data paths), so a config runs from any working directory. A path found only
    under the working directory (the rule before) is still read from there, with a note; a path found in neither
    place becomes its config-folder reading, and the places tried are returned (key -> absolute paths) for the error
    that follows."""
    data = raw.get(section)
    tried: dict[str, list[str]] = {}
    if not isinstance(data, dict):
        return tried
    for key in keys:
        value = data.get(key)
        if not isinstance(value, str) or not value or value.startswith(("hf:", "~")) or Path(value).is_absolute():
            continue
        if key == "chat_template" and not is_template_file(value):
            continue
        beside, here = os.path.normpath(folder.absolute() / value), os.path.normpath(Path.cwd() / value)
        if not os.path.exists(beside) and os.path.exists(here):
            print(
                f"note: {section}.{key} {value} is not in the config's folder ({beside}); read from the working "
                f"directory instead ({here}). Write it relative to the config file's folder."
            )
            data[key] = here
            continue
        data[key] = beside
        if not os.path.exists(beside):
            tried[key] = [f"{beside} (the config's folder)", f"{here} (the working directory)"]
    return tried


def config_to_yaml(config: RunConfig) -> str:
    """The fully resolved config as YAML, as saved in the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
