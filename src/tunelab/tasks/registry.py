"""The task and suite files: built-in ones by name (this folder and `suites/`), any other by path."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from tunelab.tasks.spec import TaskError, TaskSpec

TASKS_DIR = Path(__file__).resolve().parent
SUITES_DIR = TASKS_DIR / "suites"


def data_root() -> Path:
    """Where task sources named by folder live: $TUNELAB_DATA, else a shared/data folder beside the checkout or cwd."""
    if os.environ.get("TUNELAB_DATA"):
        return Path(os.environ["TUNELAB_DATA"]).expanduser()
    candidates = [
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
        TASKS_DIR.parents[2].parent / "shared" / "data",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def read_yaml(path: Path, what: str) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise TaskError(f"{path} must hold a mapping describing a {what}")
    return loaded


def find_yaml(reference: str, folder: Path, what: str) -> Path:
    path = Path(reference).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise TaskError(f"{what} file {path} does not exist")
        return path
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    if reference not in known:
        guess = difflib.get_close_matches(reference, known, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        raise TaskError(
            f"unknown {what} '{reference}'.{hint} Built-in: {', '.join(known)}; or give a path to a YAML file"
        )
    return folder / f"{reference}.yaml"


def load_task(reference: str) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path."""
    path = find_yaml(reference, TASKS_DIR, "task")
    try:
        return TaskSpec.model_validate(read_yaml(path, "task"))
    except ValidationError as exc:
        problems = "\n".join(f"  - {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise TaskError(f"{path} is not a valid task:\n{problems}") from None


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
