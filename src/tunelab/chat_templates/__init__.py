"""Chat templates tunelab ships, for a model that has none (a base model such as gemma3-270m) or one to replace.

`data.chat_template` names one of them (`chatml`, `gemma`, `llama3`) or a Jinja file. The template read is set on
the run's tokenizer, so it is saved with the run and reaches `serve`, the GGUF file and the Modelfile unchanged.
Kept at the bottom layer, beside `tunelab.render`, because the config checks the name and every stage renders it.
"""

from __future__ import annotations

from pathlib import Path

BUILT_IN = ("chatml", "gemma", "llama3")
"""The templates shipped in this folder, by name."""

FOLDER = Path(__file__).parent


def is_template_file(setting: str) -> bool:
    """Whether a `data.chat_template` setting names a Jinja file rather than a built-in template."""
    return setting not in BUILT_IN


def chat_template_text(setting: str) -> str:
    """The Jinja source of a `data.chat_template` setting: a built-in template's, or the file's. ValueError, saying
    what is accepted, for a name that is neither."""
    path = FOLDER / f"{setting}.jinja" if setting in BUILT_IN else Path(setting)
    if not path.is_file():
        raise ValueError(
            f"data.chat_template {setting!r} is neither a built-in template ({', '.join(BUILT_IN)}) nor a Jinja "
            "file that exists"
        )
    return path.read_text(encoding="utf-8")
