"""A standalone transformers folder (safetensors + tokenizer) with the run's update folded in, the same folder
`tunelab merge` writes (`run_commands.merge_run`, which a two-stage recipe also trains on): it loads with
`from_pretrained` in plain transformers, vLLM or TGI, without tunelab or PEFT."""

from __future__ import annotations

from pathlib import Path

from tunelab.runs import RunDir

NAME = "transformers"
DESCRIPTION = "a standalone transformers folder with the update folded in, as `tunelab merge` writes it"
OPTIONS = ()


def export(run: RunDir, output: Path, task: str | None = None) -> Path:
    """Write the merged model of `run` (of `task`'s head or adapter for a multi-task run) into `output`."""
    from tunelab.run_commands import merge_run

    return merge_run(run, output, task)
