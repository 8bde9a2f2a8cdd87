"""A `data:` section's prompt for one record: its template filled, or its prompt field as it is."""

from __future__ import annotations

from typing import Any

from tunelab.config import DataConfig
from tunelab.render import fill_template


def render_prompt(fields: dict[str, Any], data: DataConfig) -> str:
    """The prompt text for one record."""
    if data.prompt_template:
        return fill_template(data.prompt_template, fields)
    return str(fields[data.prompt_field])
