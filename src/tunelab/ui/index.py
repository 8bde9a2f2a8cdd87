"""What the web app shows: the run directories and comparison folders under the roots it was given.

Nothing here is a database. Every page reads the files a run writes as it goes (`run.json`, `metrics.jsonl`,
`eval.json`, the card), so a run that is training shows its progress and a finished one its results, with no
second copy to keep in step. A page can only name a run the index found under a root, never another path.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.vocabulary import OLD_TASK_TYPES
from tunelab.errors import TunelabError

DEFAULT_ROOTS = ("runs", "compare", "sweeps")
"""Where `train`, `compare` and `sweep` write by default, relative to the working directory."""
MAX_DEPTH = 4
"""A comparison keeps its runs at compare/NAME/runs/VARIANT/RUN: deeper than that is not searched."""
FINISHED_STATES = ("complete", "failed", "interrupted", "pruned")
LOGGED_FAMILIES = ("rewards/", "logps/")
"""Training values the run page plots beside the loss: a preference run's implicit rewards and answer
log-probabilities (`rewards/chosen`, `logps/rejected`, ..., as TRL and LLaMA-Factory name them)."""
NOT_CURVES = ("runtime", "per_second", "_flos")
"""Validation timings: logged with every validation, but no measure of the model."""


class UiError(TunelabError, ValueError):
    """A request the app cannot answer as asked; the message says what to do instead."""


@dataclass
class Score:
    """A task's primary metric before tuning (zero-shot base) and after."""

    task: str
    metric: str
    base: float | None
    tuned: float | None


@dataclass
class RunSummary:
    """One row of the runs table."""

    id: str
    path: Path
    name: str
    state: str
    kind: str
    """The kind of example it trains on ('mixture' for a mixture); a run written before: its task type's kind."""
    objective: str
    """How it trains; '' for a run written before run.json recorded it."""
    method: str
    model: str
    tasks: list[str]
    scores: list[Score]
    trainable_percent: float | None
    train_seconds: float | None
    started: str
    finished: str | None
    updated: float
    """When the run last wrote its log or state (seconds since the epoch)."""
    error: str | None = None
    host: str | None = None
    """The machine the run's latest attempt trains (or trained) on, and its process id there."""
    pid: int | None = None
    attempts: int = 1

    @property
    def process(self) -> str:
        """Whether a 'running' run's process is 'alive' or 'gone' (killed without a chance to mark the run), or
        'elsewhere': on another machine, whose processes this one cannot see. 'unknown' for a run that recorded
        no process (from before runs did) and for runs that are not running."""
        if self.state != "running" or self.pid is None or self.host is None:
            return "unknown"
        if self.host != socket.gethostname():
            return "elsewhere"
        return "alive" if process_alive(self.pid) else "gone"

    @property
    def stopped(self) -> bool:
        return self.process == "gone"

    @property
    def status(self) -> str:
        """The state as the app shows it: a 'running' run whose process is gone says so."""
        return "stopped (killed?)" if self.stopped else self.state

    @property
    def state_class(self) -> str:
        return "stopped" if self.stopped else self.state

    @property
    def resume_command(self) -> str | None:
        """What continues the run from its last checkpoint, for a run stopped before it was complete (a failed run
        would fail again as it is: its error says what to change)."""
        return f"tunelab train --resume {self.id}" if self.stopped or self.state == "interrupted" else None

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED_STATES or self.stopped


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ComparisonSummary:
    """One comparison folder written by `tunelab compare`."""

    id: str
    path: Path
    name: str
    kind: str
    model: str
    date: str
    variants: list[dict] = field(default_factory=list)


def read_json(path: Path) -> Any:
    """A JSON file, or None when it is absent or half-written (a run may be writing it right now)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def url_id(path: Path) -> str:
    """The id a page names a folder by: its path from the working directory, or its absolute path outside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def scores_of(evaluation: dict | None) -> list[Score]:
    """Each task's primary metric, base and tuned, from a run's eval.json."""
    scores = []
    for task, result in ((evaluation or {}).get("tasks") or {}).items():
        metric = result.get("metric")

        def value(side: str) -> float | None:
            scored = (result.get(side) or {}).get("metrics", {}).get(metric)
            return scored["value"] if scored else None

        scores.append(Score(task, metric, value("base"), value("tuned")))
    return scores


def _mixture_tasks(config_text: str) -> list[str]:
    """A mixture's task names from a run's config.yaml, read without validating it, for a run not yet scored."""
    import yaml

    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        return []
    tasks = (config.get("mixture") or {}).get("tasks") or []
    return [str(t.get("task")) for t in tasks if isinstance(t, dict)]


def summarise_run(path: Path) -> RunSummary:
    state = read_json(path / "run.json") or {}
    evaluation = read_json(path / "eval.json")
    scores = scores_of(evaluation)
    tasks = [s.task for s in scores]
    if not tasks and (path / "config.yaml").exists():
        tasks = _mixture_tasks((path / "config.yaml").read_text(encoding="utf-8"))
    return RunSummary(
        id=url_id(path),
        path=path,
        name=path.name,
        state=state.get("state", "unknown"),
        kind=state.get("kind") or OLD_TASK_TYPES.get(state.get("task_type", ""), ""),
        objective=state.get("objective", ""),
        method=state.get("method", ""),
        model=str(state.get("base_model", "")),
        tasks=tasks,
        scores=scores,
        trainable_percent=(state.get("trainable") or {}).get("trainable_percent"),
        train_seconds=state.get("train_seconds"),
        started=state.get("started", ""),
        finished=state.get("finished"),
        updated=max((f.stat().st_mtime for f in (path / "metrics.jsonl", path / "run.json") if f.exists()), default=0),
        error=state.get("error"),
        host=state.get("host"),
        pid=state.get("pid"),
        attempts=state.get("attempts", 1),
    )


def summarise_comparison(path: Path) -> ComparisonSummary:
    summary = read_json(path / "summary.json") or {}
    return ComparisonSummary(
        id=url_id(path),
        path=path,
        name=summary.get("name", path.name),
        kind=summary.get("kind", ""),
        model=str(summary.get("model", "")),
        date=summary.get("date", ""),
        variants=summary.get("variants", []),
    )


@dataclass
class Index:
    """The runs and comparisons found under the roots, newest first."""

    runs: dict[str, RunSummary]
    comparisons: dict[str, ComparisonSummary]

    def run(self, run_id: str) -> RunSummary:
        if run_id not in self.runs:
            raise UiError(f"no run '{run_id}' under the app's roots; the runs page lists the ones there are")
        return self.runs[run_id]

    def comparison(self, comparison_id: str) -> ComparisonSummary:
        if comparison_id not in self.comparisons:
            raise UiError(f"no comparison '{comparison_id}' under the app's roots; the compare page lists them")
        return self.comparisons[comparison_id]


def scan(roots: list[Path]) -> Index:
    """Every run directory (it holds run.json) and comparison folder (summary.json) under the roots, at most
    MAX_DEPTH folders down; nothing inside a run is searched (its checkpoints are not runs)."""
    runs: dict[str, RunSummary] = {}
    comparisons: dict[str, ComparisonSummary] = {}
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.resolve().parts)
        for folder, children, files in os.walk(root):
            here = Path(folder)
            if "run.json" in files:
                summary = summarise_run(here)
                runs.setdefault(summary.id, summary)
                children.clear()
                continue
            if "summary.json" in files:
                comparison = summarise_comparison(here)
                comparisons.setdefault(comparison.id, comparison)
            if len(here.resolve().parts) - base_depth >= MAX_DEPTH:
                children.clear()
            children.sort()
    newest = sorted(runs.values(), key=lambda r: r.started, reverse=True)
    return Index({r.id: r for r in newest}, dict(sorted(comparisons.items())))


def read_metrics(path: Path) -> list[dict]:
    """The entries of a run's metrics.jsonl; a last line the Trainer is still writing waits for the next read."""
    try:
        lines = (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    return entries


def curves(entries: list[dict]) -> dict[str, list[list[float]]]:
    """The run page's curves, by the logged name: [step, value] points of the training loss, of the LOGGED_FAMILIES
    and of every validation value (`eval_...`) but the timings, in the order they were logged."""
    series: dict[str, list[list[float]]] = {}
    for entry in entries:
        for name, value in entry.items():
            training = name == "loss" or name.startswith(LOGGED_FAMILIES)
            plotted = training or (name.startswith("eval_") and not name.endswith(NOT_CURVES))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if plotted and number and isinstance(entry.get("step"), int):
                series.setdefault(name, []).append([entry["step"], value])
    return series
