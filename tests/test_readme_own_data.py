"""The README's "Your own data in three steps", run as written: its files saved under the names it gives, its
commands run by bash in that folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FILE_NAME = re.compile(r"`([\w.-]+\.(?:jsonl|yaml))`")
"""A file the README asks the reader to save: the last `name.jsonl` or `name.yaml` in the prose before its block."""


def own_data_section() -> list[tuple[str, str, str]]:
    """(language, the file name the prose before it gives, its text) for each code block of the section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own data in three steps") :]
    section = section[: section.index("\n## ", 1)]
    blocks = []
    for prose, language, body in re.findall(r"(.*?)```(\w*)\n(.*?)```", section, re.S):
        names = FILE_NAME.findall(prose)
        blocks.append((language, names[-1] if names else "", body))
    return blocks


@pytest.mark.integration
def test_the_readme_own_data_example_runs_as_written(tmp_path):
    blocks = own_data_section()
    files = {name: body for language, name, body in blocks if language != "sh"}
    (commands,) = [body for language, _, body in blocks if language == "sh"]
    assert "" not in files and len(files) == len(blocks) - 1, "every file block follows the name to save it as"
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    finished = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["state"] == "complete"
    assert (run / "eval" / "data-test.json").exists()
    predicted = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in files["new.jsonl"].splitlines()]
    assert [row["text"] for row in predicted] == texts
    assert all(row["prediction"] in {"positive", "negative"} for row in predicted)
