"""`tunelab compare CONFIG --mixtures ...`: single-task specialists and multi-task mixtures in one table.

Each mixture is a `+`-joined list of the config's mixture tasks ("sst2", "rte", "sst2+rte+cola"); it is
trained as its own `tunelab train` process with the config's settings for those tasks (max_examples,
weights) and the config's held-out tasks, so every cell of the table is the same task scored the same way.
Output, in `<output_dir>/<config name>/`: `summary.md`, `summary.json`, the per-mixture configs, logs and runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunelab.compare import _failed, _new_directory, machine_description, train_in_subprocess
from tunelab.config import ConfigError, MixtureTask, RunConfig, build_config, config_to_yaml
from tunelab.models.reference import check_reference
from tunelab.runs import write_atomic, write_json
from tunelab.tasks import load_task


def parse_mixtures(text: str) -> list[list[str]]:
    """'sst2;rte;sst2+rte' or 'sst2,rte,sst2+rte' -> [['sst2'], ['rte'], ['sst2', 'rte']]."""
    mixtures = [[t.strip() for t in item.split("+") if t.strip()] for item in text.replace(";", ",").split(",")]
    mixtures = [m for m in mixtures if m]
    if not mixtures:
        raise ConfigError("--mixtures is empty; give e.g. --mixtures 'sst2,rte,sst2+rte'")
    return mixtures


def mixture_config(config: RunConfig, tasks: list[str]) -> RunConfig:
    """The config with its mixture narrowed to `tasks` (keeping each task's own settings)."""
    entries = {load_task(entry.task).name: entry for entry in config.mixture.tasks}
    chosen = [entries.get(load_task(name).name, MixtureTask(task=name)) for name in tasks]
    label = "+".join(load_task(name).name for name in tasks)
    raw = config.model_dump(mode="json")
    raw["name"] = label
    raw["mixture"]["tasks"] = [entry.model_dump(mode="json") for entry in chosen]
    return build_config(raw, f"the config for mixture '{label}'")


def _scoring_base_once(planned: RunConfig, earlier: list[RunConfig]) -> RunConfig:
    """Score the base model on a task only in the first mixture that trains or holds out that task."""
    seen = {load_task(e.task).name for c in earlier for e in c.mixture.tasks} | (
        {load_task(t).name for t in planned.mixture.eval_only} if earlier else set())
    mine = {load_task(e.task).name for e in planned.mixture.tasks}
    if not (mine - seen):
        return planned.model_copy(update={"eval": planned.eval.model_copy(update={"evaluate_base": False})})
    return planned


def _primary(task: dict, side: str) -> float | None:
    result = task[side]
    return None if result is None or "skipped" in result else result["metrics"][task["metric"]]["value"]


def _row(label: str, run, facts: dict) -> dict:
    evaluation = json.loads(run.eval_path.read_text(encoding="utf-8"))
    state = run.state()
    return {"mixture": label, "status": "ok", "run_dir": str(run.path), **facts,
            "train_seconds": round(state["train_seconds"], 1), "steps": state["steps"],
            "scores": {name: _primary(task, "tuned") for name, task in evaluation["tasks"].items()},
            "base": {name: _primary(task, "base") for name, task in evaluation["tasks"].items() if task["base"]},
            "held_out": [name for name, task in evaluation["tasks"].items() if task["held_out"]],
            "metrics": {name: task["metric"] for name, task in evaluation["tasks"].items()}}


def compare_mixtures(config: RunConfig, mixtures: list[list[str]], output_dir: Path, source: str = "config") -> Path:
    """Train every mixture; write summary.md/.json after each and return the summary.md path."""
    if config.mixture is None or config.mixture.stages:
        raise ConfigError("--mixtures needs a config with a mixture.tasks list (no curriculum stages)")
    check_reference(config.model.name, config.model.revision)
    configs = [mixture_config(config, tasks) for tasks in mixtures]  # every task resolves before anything runs
    configs = [_scoring_base_once(planned, configs[:i]) for i, planned in enumerate(configs)]
    directory = _new_directory(output_dir, config.name)
    write_atomic(directory / "config.yaml", config_to_yaml(config))
    rows: list[dict] = []
    for index, planned in enumerate(configs, 1):
        label = planned.name
        print(f"[{index}/{len(configs)}] mixture {label} ...", flush=True)
        run, facts = train_in_subprocess(planned.model_copy(update={"output_dir": str(directory / "runs")}), directory)
        rows.append(_row(label, run, facts) if run else {**facts, "mixture": label})
        write_mixture_summary(directory, config, source, rows, [c.name for c in configs[index:]])
    return directory / "summary.md"


def write_mixture_summary(directory: Path, config: RunConfig, source: str, rows: list[dict], pending: list[str]) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    tasks = list(dict.fromkeys(name for row in ok for name in row["scores"]))
    base = {name: next((r["base"][name] for r in ok if name in r["base"]), None) for name in tasks}  # from the run that scored it
    metrics = {name: next(r["metrics"][name] for r in ok if name in r["metrics"]) for name in tasks}
    held_out = {name for r in ok for name in r["held_out"]}
    summary = {"config": source, "name": config.name, "model": config.model.name, "method": config.method.name,
               "architecture": config.mixture.architecture, "strategy": config.mixture.strategy,
               "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "base": base,
               "metrics": metrics, "held_out": sorted(held_out), "mixtures": rows, "pending": pending}
    write_json(directory / "summary.json", summary)
    header = [f"{t} ({metrics[t]}{', held out' if t in held_out else ''})" for t in tasks]
    lines = [f"# Mixture comparison: {config.name}", "",
             f"- model `{config.model.name}`, {config.mixture.architecture}, method {config.method.name}, "
             f"sampling {config.mixture.strategy}; config `{source}`",
             f"- machine: {summary['machine']['device']}, torch {summary['machine']['torch']}; {summary['date']}",
             "- each cell: the task's primary test metric (blank: that run did not score the task)", "",
             "| mixture | " + " | ".join(header) + " | train s |", "| --- |" + " ---: |" * (len(tasks) + 1),
             "| base model | " + " | ".join(_cell(base[t]) for t in tasks) + " | |"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['mixture']} | failed: {row['error'].splitlines()[-1][:120]} |")
            continue
        lines.append(f"| {row['mixture']} | " + " | ".join(_cell(row["scores"].get(t)) for t in tasks) + f" | {row['train_seconds']:.0f} |")
    if pending:
        lines += ["", f"Still to run: {', '.join(pending)}."]
    write_atomic(directory / "summary.md", "\n".join(lines) + "\n")


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
