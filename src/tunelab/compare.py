"""`tunelab compare`: one task, data, seed and budget trained with each method, and what each cost and gained.

Every method runs as its own `tunelab train` process: a method that crashes (or
is refused, like qlora without CUDA) becomes a row with its error instead of
ending the comparison, and each process's peak memory is its own. The config's
`training.learning_rate` is not shared: one rate cannot suit full fine-tuning
and prompt tuning alike, so each method gets its default (DEFAULT_LEARNING_RATES)
unless `--learning-rates` names one.

Output, in `<output_dir>/<config name>/`: `summary.md`, `summary.json`,
`summary.png`, the per-method configs and logs, and the complete run directories.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from tunelab.config import ConfigError, RunConfig, build_config, config_to_yaml
from tunelab.methods import MethodError
from tunelab.models.reference import check_reference
from tunelab.pipeline import check_runnable
from tunelab.runs import RunDir, write_atomic, write_json

PRIMARY_METRIC = {"classification": "accuracy", "causal_lm": "rougeL", "seq2seq": "rougeL"}
"""The test metric each task's comparison is ranked by (all metrics are kept in summary.json)."""

LOG_TAIL_LINES = 15
"""Lines of a failed method's log quoted in its row when the run left no error of its own."""


def parse_learning_rates(text: str) -> dict[str, float]:
    """'full=3e-5,lora=1e-3' -> {'full': 3e-05, 'lora': 0.001}."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, sep, value = item.partition("=")
        try:
            rates[method.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--learning-rates item '{item}' is not METHOD=RATE (e.g. lora=2e-3)")
    return rates


def _new_directory(output_dir: Path, name: str) -> Path:
    """`output_dir/name`, or `name-2`, `name-3`, ... so an earlier comparison is never overwritten."""
    path, suffix = output_dir / name, 1
    while path.exists():
        suffix += 1
        path = output_dir / f"{name}-{suffix}"
    path.mkdir(parents=True)
    return path


def method_config(config: RunConfig, method: str, learning_rates: dict[str, float], runs_dir: Path,
                  evaluate_base: bool) -> RunConfig:
    """The shared config with only the method, its learning rate and where its run goes changed."""
    raw = config.model_dump(mode="json")
    raw["name"] = method
    raw["output_dir"] = str(runs_dir / method)
    raw["method"]["name"] = method
    raw["training"]["learning_rate"] = learning_rates.get(method)
    raw["eval"]["evaluate_base"] = evaluate_base
    return build_config(raw, f"the config for method '{method}'")


def _log_tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _failed(method: str, error: str, **extra) -> dict:
    return {"method": method, "status": "failed", "error": error, **extra}


def _row_from_run(method: str, run: RunDir, task: str) -> dict:
    state = run.state()
    evaluation = json.loads(run.eval_path.read_text(encoding="utf-8"))
    tuned = evaluation["tuned"]
    epochs = state.get("epochs_trained") or 0
    return {
        "method": method,
        "status": "ok",
        "metric": tuned.get(PRIMARY_METRIC[task]),
        "metrics": tuned,
        "trainable_params": state["trainable"]["trainable_params"],
        "total_params": state["trainable"]["total_params"],
        "trainable_percent": state["trainable"]["trainable_percent"],
        "learning_rate": state.get("learning_rate"),
        "train_seconds": round(state["train_seconds"], 2),
        "seconds_per_epoch": round(state["train_seconds"] / epochs, 2) if epochs else None,
        "peak_rss_mb": state.get("peak_rss_mb"),
        "peak_gpu_mb": state.get("peak_gpu_mb"),
        "saved_mb": round(state.get("saved_weights_bytes", 0) / 2**20, 3),
        "run_dir": str(run.path),
        **_forgetting(run),
    }


def _forgetting(run: RunDir) -> dict:
    """The run's average forgetting and forgotten tasks, when it was trained with `eval.retention_suite`."""
    suite = run.config().eval.retention_suite
    path = run.path / "eval" / f"forgetting-{suite}.json"
    if not suite or not path.exists():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    return {"forgetting": report["average_forgetting"], "forgotten_tasks": report["tasks_forgotten"]}


def train_in_subprocess(config: RunConfig, directory: Path) -> tuple[RunDir | None, dict]:
    """Run `tunelab train` on `config` in its own process; (the complete run or None, its log facts or failure row).

    The run's config and log are kept under `directory` as configs/<name>.yaml and logs/<name>.log."""
    name = config.name
    config_path = directory / "configs" / f"{name}.yaml"
    write_atomic(config_path, config_to_yaml(config))
    log = directory / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(config_path)],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = round(time.perf_counter() - started, 1)
    runs = sorted(Path(config.output_dir).glob(f"{name}-*"))
    run = RunDir(runs[-1]) if runs else None
    if process.returncode != 0 or run is None or run.state().get("state") != "complete":
        error = (run.state().get("error") if run else None) or _log_tail(log) or f"exit code {process.returncode}"
        return None, _failed(name, error, log=str(log), wall_seconds=wall)
    return run, {"log": str(log), "wall_seconds": wall}


def run_method(config: RunConfig, directory: Path) -> dict:
    """Train one method in its own process and turn its run directory (or its failure) into a row."""
    method = config.method.name
    try:
        check_runnable(config)
    except (ConfigError, MethodError) as exc:
        return _failed(method, str(exc))
    run, facts = train_in_subprocess(config, directory)
    if run is None:
        return facts
    return {**_row_from_run(method, run, config.task), **facts}


def _base_metrics(rows: list[dict]) -> dict | None:
    """The base model's test metrics, from the first run that evaluated it."""
    for row in rows:
        if row["status"] == "ok":
            path = Path(row["run_dir"]) / "base_eval.json"
            if path.exists():
                return json.loads(path.read_text(encoding="utf-8"))
    return None


def machine_description() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {"device": device, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__}


def compare_methods(config: RunConfig, methods: list[str], output_dir: Path, learning_rates: dict[str, float],
                    source: str = "config") -> Path:
    """Run every method on the same config; write summary.md/.json/.png and return the summary.md path."""
    if not methods:
        raise ConfigError("--methods is empty; name at least one method, e.g. --methods full,lora")
    unknown_rates = set(learning_rates) - set(methods)
    if unknown_rates:
        raise ConfigError(f"--learning-rates names {', '.join(sorted(unknown_rates))}, which --methods does not run")
    check_reference(config.model.name, config.model.revision)  # once, not as a failed row per method
    directory = _new_directory(output_dir, config.name)
    write_atomic(directory / "config.yaml", config_to_yaml(config))
    if config.training.learning_rate is not None:
        print(f"note: training.learning_rate={config.training.learning_rate} is not shared across methods; "
              "each uses its default unless --learning-rates sets it")
    rows: list[dict] = []
    for index, method in enumerate(methods, 1):
        print(f"[{index}/{len(methods)}] {method} ...", flush=True)
        try:
            method_cfg = method_config(config, method, learning_rates, directory / "runs",
                                       evaluate_base=_base_metrics(rows) is None)
        except ConfigError as exc:
            row = _failed(method, str(exc))
        else:
            row = run_method(method_cfg, directory)
        rows.append(row)
        outcome = (f"{PRIMARY_METRIC[config.task]}={row['metric']:.4f}, {row['trainable_percent']:.3f}% trainable"
                   if row["status"] == "ok" else "failed: " + row["error"].splitlines()[-1][:200])
        print(f"[{index}/{len(methods)}] {method}: {outcome}", flush=True)
        write_summary(directory, config, source, rows, pending=methods[index:])
    return directory / "summary.md"


def write_summary(directory: Path, config: RunConfig, source: str, rows: list[dict], pending: list[str]) -> None:
    """Write summary.json/.md/.png after every method, so a long comparison shows its results as they come
    (and an interrupted one keeps them); `pending` lists the methods still to run."""
    summary = {
        "config": source, "name": config.name, "task": config.task, "model": config.model.name,
        "metric": PRIMARY_METRIC[config.task], "seed": config.training.seed, "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"), "base": _base_metrics(rows), "methods": rows, "pending": pending,
    }
    write_json(directory / "summary.json", summary)
    write_atomic(directory / "summary.md", render_summary(summary, config))
    plot_summary(summary, directory / "summary.png")


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def render_summary(summary: dict, config: RunConfig) -> str:
    metric = summary["metric"]
    base = (summary["base"] or {}).get(metric)
    budget = f"max_steps {config.training.max_steps}" if config.training.max_steps else f"{config.training.epochs:g} epochs"
    lines = [
        f"# Method comparison: {summary['name']}",
        "",
        f"- model `{summary['model']}`, task {summary['task']}, config `{summary['config']}`",
        f"- data: train `{config.data.train}` (cap {config.data.max_train_examples or 'none'}), "
        f"test `{config.data.test or 'split from train'}` (cap {config.data.max_eval_examples or 'none'})",
        f"- same seed ({summary['seed']}), data and budget ({budget}, batch {config.training.batch_size}) for every method",
        f"- machine: {summary['machine']['device']}, torch {summary['machine']['torch']}; {summary['date']}",
        f"- base model (before tuning) test {metric}: {_fmt(base, '.4f')}",
        "",
        f"| method | test {metric} | vs base | trainable params | trainable % | learning rate | s / epoch "
        "| peak RSS MB | peak GPU MB | saved MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with_forgetting = any("forgetting" in row for row in summary["methods"])
    if with_forgetting:
        lines[-2] += f" avg forgetting ({config.eval.retention_suite}) | forgotten tasks |"
        lines[-1] += " ---: | --- |"
    failures = []
    for row in summary["methods"]:
        if row["status"] != "ok":
            lines.append(f"| {row['method']} | failed | | | | | | | | |")
            failures.append(f"- **{row['method']}**: " + row["error"].replace("\n", "\n  "))
            continue
        change = row["metric"] - base if base is not None and row["metric"] is not None else None
        lines.append(
            f"| {row['method']} | {_fmt(row['metric'], '.4f')} | {_fmt(change, '+.4f')} | {row['trainable_params']:,} "
            f"| {row['trainable_percent']:.3f} | {_fmt(row['learning_rate'], 'g')} | {_fmt(row['seconds_per_epoch'], '.1f')} "
            f"| {_fmt(row['peak_rss_mb'], '.0f')} | {_fmt(row['peak_gpu_mb'], '.0f')} | {row['saved_mb']:.2f} |"
            + (f" {_fmt(row.get('forgetting'), '+.2f')} | {', '.join(row.get('forgotten_tasks', [])) or 'none'} |"
               if with_forgetting else "")
        )
    lines += ["", "Peak RSS covers training alone (model loading and evaluation excluded) where the OS allows it; "
              "saved MB is the weights the method writes (tokenizer excluded)."]
    if failures:
        lines += ["", "## Failed methods", "", *failures]
    if summary["pending"]:
        lines += ["", f"Still to run: {', '.join(summary['pending'])}."]
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict, path: Path) -> None:
    """Four panels: metric vs trainable % (log), time per epoch, peak memory, saved size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["methods"] if r["status"] == "ok"]
    names = [r["method"] for r in rows]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    quality, speed, memory, size = axes.flat
    for row in rows:
        quality.scatter(max(row["trainable_percent"], 1e-4), row["metric"])
        quality.annotate(row["method"], (max(row["trainable_percent"], 1e-4), row["metric"]),
                         textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = (summary["base"] or {}).get(summary["metric"])
    if base is not None:
        quality.axhline(base, linestyle="--", color="grey", label="base model")
        quality.legend(loc="lower right")
    quality.set(xscale="log", xlabel="trainable parameters (%)", ylabel=f"test {summary['metric']}",
                title="quality vs trainable share")
    speed.bar(names, [r["seconds_per_epoch"] or 0 for r in rows], color="tab:orange")
    speed.set(ylabel="seconds per epoch", title="training time")
    on_gpu = any(r["peak_gpu_mb"] for r in rows)
    width = 0.4 if on_gpu else 0.8
    positions = range(len(rows))
    memory.bar([x - width / 2 * on_gpu for x in positions], [r["peak_rss_mb"] or 0 for r in rows], width,
               color="tab:green", label="peak RSS")
    if on_gpu:
        memory.bar([x + width / 2 for x in positions], [r["peak_gpu_mb"] or 0 for r in rows], width,
                   color="tab:purple", label="peak GPU")
    memory.set_xticks(list(positions), names)
    memory.legend()
    memory.set(ylabel="MB", title="peak memory in training")
    size.bar(names, [max(r["saved_mb"], 1e-3) for r in rows], color="tab:red")
    size.set(yscale="log", ylabel="MB (log)", title="saved weights")
    for axis in (speed, memory, size):
        axis.tick_params(axis="x", rotation=45)
    figure.suptitle(f"{summary['name']}: {summary['model']} ({summary['task']}), {summary['machine']['device']}")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=110)
    plt.close(figure)
    os.replace(partial, path)  # a reader never sees half a PNG
