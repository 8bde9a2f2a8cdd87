"""`key.sub=value` overrides, and the two dict operations that apply them: a dotted key becomes nested sections,
and nested sections merge over a config's own."""

from __future__ import annotations

from typing import Any

import yaml

from tunelab.config.errors import ConfigError


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ['training.epochs=1', 'data.train=x.jsonl'] into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. training.epochs=1)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(
                f"override '{item}': the value is not valid YAML ({problem}); quote it, e.g. {key}='\"...\"'"
            ) from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key inside '{part}', which is not a section")
        node[parts[-1]] = value
    return nested


def merge_sections(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, section by section: a key `extra` leaves out keeps its value in `base`."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def nest_keys(values: dict[str, Any]) -> dict[str, Any]:
    """{'method.lora.r': 8} -> {'method': {'lora': {'r': 8}}}, the shape overrides merge in."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, last = key.split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return nested
