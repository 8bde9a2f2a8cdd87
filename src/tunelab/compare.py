"""`tunelab compare`: variants of one config trained side by side, and what each cost and gained.

A variant is the config with one thing changed: its method (`--methods full,lora,...`: same task, data,
seed and budget), its mixture (`--mixtures sst2,rte,sst2+rte`: single-task specialists against multi-task
mixtures, each with the config's settings for its tasks and its held-out tasks) or its training-set size
(`--sizes 0,100,250,500,1000`: a learning curve, each size the first N training records, so every smaller set
is inside the larger ones; 0 is the untrained base model). All run through one runner and one table and plot.

Every variant runs as its own `tunelab train` process: a variant that crashes (or is refused, like qlora
without CUDA) becomes a row with its error instead of ending the comparison, and each process's peak memory
is its own. The config's `training.learning_rate` is not shared across methods: one rate cannot suit full
fine-tuning and prompt tuning alike, so each method gets its default (its METHOD_TRAITS row) unless
`--learning-rates` names one. The base model is scored once, by the first variant that trains or holds out
each task.

Output, in `<output_dir>/<config name>/`: `summary.md`, `summary.json`, `summary.png`, the per-variant configs
and logs, and the complete run directories.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.config import ConfigError, MixtureTask, RunConfig, build_config, config_to_yaml
from tunelab.data.splits import load_task_data
from tunelab.eval.gain import primary_score
from tunelab.methods import MethodError
from tunelab.models.reference import check_reference
from tunelab.pipeline import check_runnable
from tunelab.runs import RunDir, run_words, write_atomic, write_json
from tunelab.tasks import data_task_name, load_task
from tunelab.train.objectives import objective_of

LOG_TAIL_LINES = 15
"""Lines of a failed variant's log quoted in its row when the run left no error of its own."""


@dataclass
class Variant:
    label: str
    config: RunConfig | None
    """None when the variant could not even be configured (`error` says why)."""
    error: str | None = None


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


def parse_mixtures(text: str) -> list[list[str]]:
    """'sst2;rte;sst2+rte' or 'sst2,rte,sst2+rte' -> [['sst2'], ['rte'], ['sst2', 'rte']]."""
    mixtures = [[t.strip() for t in item.split("+") if t.strip()] for item in text.replace(";", ",").split(",")]
    mixtures = [m for m in mixtures if m]
    if not mixtures:
        raise ConfigError("--mixtures is empty; give e.g. --mixtures 'sst2,rte,sst2+rte'")
    return mixtures


def _variant_config(config: RunConfig, label: str, **changes) -> RunConfig:
    """The shared config with its name and `changes` (dotted section -> value) applied."""
    raw = config.model_dump(mode="json")
    raw["name"] = label
    for key, value in changes.items():
        section, _, field = key.partition(".")
        raw[section][field] = value
    return build_config(raw, f"the config for '{label}'")


def method_variants(config: RunConfig, methods: list[str], learning_rates: dict[str, float]) -> list[Variant]:
    """The config once per method, each with its own learning rate (its default unless given)."""
    if not methods:
        raise ConfigError("--methods is empty; name at least one method, e.g. --methods full,lora")
    unknown_rates = set(learning_rates) - set(methods)
    if unknown_rates:
        raise ConfigError(f"--learning-rates names {', '.join(sorted(unknown_rates))}, which --methods does not run")
    if config.training.learning_rate is not None:
        print(
            f"note: training.learning_rate={config.training.learning_rate} is not shared across methods; "
            "each uses its default unless --learning-rates sets it"
        )
    variants = []
    for method in methods:
        try:
            variants.append(
                Variant(
                    method,
                    _variant_config(
                        config, method, **{"method.name": method, "training.learning_rate": learning_rates.get(method)}
                    ),
                )
            )
        except ConfigError as exc:
            variants.append(Variant(method, None, str(exc)))
    return variants


def mixture_variants(config: RunConfig, mixtures: list[list[str]]) -> list[Variant]:
    """The config once per mixture of its tasks, each task keeping its own settings (max_examples, weights).
    Every task must resolve before anything trains."""
    if config.mixture is None or config.mixture.stages:
        raise ConfigError("--mixtures needs a config with a mixture.tasks list (no curriculum stages)")
    entries = {load_task(entry.task).name: entry for entry in config.mixture.tasks}
    variants = []
    for names in mixtures:
        chosen = [entries.get(load_task(name).name, MixtureTask(task=name)) for name in names]
        label = "+".join(load_task(name).name for name in names)
        variants.append(
            Variant(
                label,
                _variant_config(
                    config, label, **{"mixture.tasks": [entry.model_dump(mode="json") for entry in chosen]}
                ),
            )
        )
    return variants


def parse_sizes(text: str) -> list[int]:
    """'0,100,250' -> [0, 100, 250]: distinct counts of training examples, in increasing order."""
    try:
        sizes = [int(item) for item in filter(None, (part.strip() for part in text.split(",")))]
    except ValueError:
        raise ConfigError(f"--sizes '{text}' is not a comma-separated list of whole numbers, e.g. 0,100,500") from None
    if not sizes or any(size < 0 for size in sizes) or sizes != sorted(set(sizes)):
        raise ConfigError(f"--sizes '{text}' must list increasing, distinct counts >= 0, e.g. 0,100,500")
    return sizes


def size_variants(config: RunConfig, sizes: list[int]) -> list[Variant]:
    """The config once per positive size, trained on the first `size` training records (`data.max_train_examples`).
    Size 0 is the base model, scored on the same test examples by the first variant (zero-shot). Sizes larger
    than the training data are refused up front: they would silently repeat the largest point."""
    if config.mixture is not None:
        raise ConfigError(
            "--sizes needs a single-task config (data.train); for a mixture, set each task's max_examples"
        )
    if not any(sizes):
        raise ConfigError("--sizes has no size above 0; give at least one training-set size, e.g. 0,100,500")
    uncapped = config.model_copy(update={"data": config.data.model_copy(update={"max_train_examples": None})})
    available = len(load_task_data(uncapped).train)
    too_large = [size for size in sizes if size > available]
    if too_large:
        raise ConfigError(
            f"--sizes asks for {too_large[0]} training examples, but {config.data.train} has {available} usable ones "
            "(after any validation/test split); give sizes up to that"
        )
    baselines = sorted({*config.eval.baselines, "zero_shot"}) if 0 in sizes else []
    return [
        Variant(
            f"n{size}",
            _variant_config(config, f"n{size}", **{"data.max_train_examples": size, "eval.baselines": baselines}),
        )
        for size in sizes
        if size
    ]


def _scored_tasks(config: RunConfig) -> set[str]:
    if config.mixture is None:
        return {data_task_name(config.data.train)}
    return {load_task(e.task).name for e in config.mixture.tasks} | {
        load_task(t).name for t in config.mixture.eval_only
    }


def _base_scored_once(variants: list[Variant]) -> None:
    """Only the first variant that scores a task scores the base model on it."""
    seen: set[str] = set()
    for variant in variants:
        if variant.config is None:
            continue
        tasks = _scored_tasks(variant.config)
        if tasks <= seen:
            variant.config = variant.config.model_copy(
                update={"eval": variant.config.eval.model_copy(update={"baselines": []})}
            )
        seen |= tasks


def _new_directory(output_dir: Path, name: str) -> Path:
    """`output_dir/name`, or `name-2`, `name-3`, ... so an earlier comparison is never overwritten."""
    path, suffix = output_dir / name, 1
    while path.exists():
        suffix += 1
        path = output_dir / f"{name}-{suffix}"
    path.mkdir(parents=True)
    return path


def _log_tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _failed(label: str, error: str, **extra) -> dict:
    return {"variant": label, "status": "failed", "error": error, **extra}


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
        process = subprocess.run(
            [sys.executable, "-m", "tunelab.cli", "train", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    wall = round(time.perf_counter() - started, 1)
    runs = sorted(Path(config.output_dir).glob(f"{name}-*"))
    run = RunDir(runs[-1]) if runs else None
    if process.returncode != 0 or run is None or run.state().get("state") != "complete":
        error = (run.state().get("error") if run else None) or _log_tail(log) or f"exit code {process.returncode}"
        return None, _failed(name, error, log=str(log), wall_seconds=wall)
    return run, {"log": str(log), "wall_seconds": wall}


def _primary(task: dict, side: str) -> float | None:
    result = task[side]
    scored = (result or {}).get("metrics", {})
    return scored[task["metric"]]["value"] if task["metric"] in scored else None


def _forgetting(run: RunDir) -> dict:
    """The run's average retention change (tuned - base) and forgotten tasks, when it was trained with
    `eval.retention_suite`."""
    suite = run.config().eval.retention_suite
    path = run.path / "eval" / f"forgetting-{suite}.json"
    if not suite or not path.exists():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    return {"retention_change": report["average_change"], "forgotten_tasks": report["tasks_forgotten"]}


def _row(label: str, run: RunDir) -> dict:
    """A finished variant's figures: its scores per task and overall, and what it cost."""
    state = run.state()
    evaluation = json.loads(run.eval_path.read_text(encoding="utf-8"))
    tasks = evaluation["tasks"]
    epochs = state.get("epochs_trained") or 0
    return {
        "variant": label,
        "status": "ok",
        "run_dir": str(run.path),
        "score": primary_score(evaluation),
        "base_score": primary_score(evaluation, "base"),
        "scores": {name: _primary(task, "tuned") for name, task in tasks.items()},
        "base": {name: _primary(task, "base") for name, task in tasks.items() if task["base"]},
        "metrics": {name: task["metric"] for name, task in tasks.items()},
        "held_out": [name for name, task in tasks.items() if task["held_out"]],
        "tuned": {name: task["tuned"] for name, task in tasks.items()},
        "trainable_params": state["trainable"]["trainable_params"],
        "total_params": state["trainable"]["total_params"],
        "trainable_percent": state["trainable"]["trainable_percent"],
        "learning_rate": state.get("learning_rate"),
        "train_seconds": round(state["train_seconds"], 2),
        "steps": state.get("steps"),
        "seconds_per_epoch": round(state["train_seconds"] / epochs, 2) if epochs else None,
        "peak_rss_mb": state.get("peak_rss_mb"),
        "peak_gpu_mb": state.get("peak_gpu_mb"),
        "saved_mb": round(state.get("saved_weights_bytes", 0) / 2**20, 3),
        **_forgetting(run),
    }


def run_variant(variant: Variant, directory: Path) -> dict:
    """Train one variant in its own process and turn its run directory (or its failure) into a row."""
    if variant.config is None:
        return _failed(variant.label, variant.error)
    try:
        check_runnable(variant.config)
    except (ConfigError, MethodError) as exc:
        return _failed(variant.label, str(exc))
    run, facts = train_in_subprocess(variant.config, directory)
    if run is None:
        return {**facts, "variant": variant.label}
    return {**_row(variant.label, run), **facts}


def machine_description() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def compare(config: RunConfig, variants: list[Variant], output_dir: Path, kind: str, source: str = "config") -> Path:
    """Train every variant into `<output_dir>/<config name>/runs/<variant>`; rewrite summary.md/.json/.png after
    each (so a long comparison shows its results as they come, and an interrupted one keeps them) and return the
    summary.md path. The model is checked once, not as a failed row per variant."""
    check_reference(config.model.name, config.model.revision)
    directory = _new_directory(output_dir, config.name)
    write_atomic(directory / "config.yaml", config_to_yaml(config))
    for variant in variants:
        if variant.config is not None:
            variant.config = variant.config.model_copy(update={"output_dir": str(directory / "runs" / variant.label)})
    _base_scored_once(variants)
    rows: list[dict] = []
    for index, variant in enumerate(variants, 1):
        print(f"[{index}/{len(variants)}] {variant.label} ...", flush=True)
        row = run_variant(variant, directory)
        if kind == "size":  # a learning curve's point: its variant's training-set cap
            row["train_examples"] = variant.config.data.max_train_examples
        rows.append(row)
        outcome = (
            f"score {row['score']:.2f}, {row['trainable_percent']:.3f}% trainable"
            if row["status"] == "ok" and row["score"] is not None
            else "ok"
            if row["status"] == "ok"
            else "failed: " + row["error"].splitlines()[-1][:200]
        )
        print(f"[{index}/{len(variants)}] {variant.label}: {outcome}", flush=True)
        write_summary(directory, config, source, kind, rows, pending=[v.label for v in variants[index:]])
    return directory / "summary.md"


def _columns(rows: list[dict]) -> list[str]:
    """The tasks scored by any finished variant, trained tasks first."""
    ok = [r for r in rows if r["status"] == "ok"]
    tasks = list(dict.fromkeys(name for row in ok for name in row["scores"]))
    held_out = {name for row in ok for name in row["held_out"]}
    return [t for t in tasks if t not in held_out] + [t for t in tasks if t in held_out]


def write_summary(
    directory: Path, config: RunConfig, source: str, kind: str, rows: list[dict], pending: list[str]
) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    tasks = _columns(rows)
    summary = {
        "config": source,
        "name": config.name,
        "kind": kind,
        "data_kind": run_words(config)["kind"],
        "model": config.model.name,
        "objective": objective_of(config).name,
        "seed": config.training.seed,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "tasks": {
            t: {
                "metric": next(r["metrics"][t] for r in ok if t in r["metrics"]),
                "held_out": any(t in r["held_out"] for r in ok),
            }
            for t in tasks
        },
        "base": {t: next((r["base"][t] for r in ok if t in r["base"]), None) for t in tasks},
        "base_score": next((r["base_score"] for r in ok if r["base_score"] is not None), None),
        "variants": rows,
        "pending": pending,
    }
    write_json(directory / "summary.json", summary)
    write_atomic(directory / "summary.md", render_summary(summary, config))
    plot_summary(summary, directory / "summary.png")


def _difference(score: float | None, reference: float | None) -> float | None:
    return None if score is None or reference is None else score - reference


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def _trained(summary: dict) -> str:
    """'classification, classifier': what the compared runs train; a summary written before says its task type."""
    return f"{summary['data_kind']}, {summary['objective']}" if "data_kind" in summary else summary["task_type"]


def render_summary(summary: dict, config: RunConfig) -> str:
    tasks = summary["tasks"]
    budget = (
        f"max_steps {config.training.max_steps}" if config.training.max_steps else f"{config.training.epochs:g} epochs"
    )
    what = (
        f"data: train `{config.data.train}` (cap {config.data.max_train_examples or 'none'}), "
        f"test `{config.data.test or 'split from train'}` (cap {config.data.max_eval_examples or 'none'})"
        if config.mixture is None
        else f"{summary['objective']}, sampling {config.mixture.strategy}"
    )
    lines = [
        f"# {summary['kind'].capitalize()} comparison: {summary['name']}",
        "",
        f"- model `{summary['model']}`, {_trained(summary)}, method {'per row' if summary['kind'] == 'method' else config.method.name}; "
        f"config `{summary['config']}`",
        f"- {what}",
        f"- same seed ({summary['seed']}) and budget ({budget}, batch {config.training.batch_size}) for every variant",
        f"- machine: {summary['machine']['device']}, torch {summary['machine']['torch']}; {summary['date']}",
        "- each task cell: its primary test metric (0-100 scale; blank where that variant did not score the task)",
        "",
    ]
    header = [f"{t} ({info['metric']}{', held out' if info['held_out'] else ''})" for t, info in tasks.items()]
    forgetting = any("retention_change" in row for row in summary["variants"])
    curve = summary["kind"] == "size"
    columns = [
        "train examples" if curve else summary["kind"],
        *header,
        "vs base",
        *(["vs previous size"] if curve else []),
        "trainable params",
        "trainable %",
        "learning rate",
        "s / epoch",
        "peak RSS MB",
        "peak GPU MB",
        "saved MB",
    ]
    if forgetting:
        columns += [f"retention change ({config.eval.retention_suite}, tuned - base)", "forgotten tasks"]
    lines += ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    lines.append(
        f"| {'0 (base model)' if curve else 'base model'} | "
        + " | ".join(_fmt(summary["base"][t], ".2f") for t in tasks)
        + " |"
        + " |" * (len(columns) - len(tasks) - 1)
    )
    failures = []
    previous = summary["base_score"]
    for row in summary["variants"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | failed |" + " |" * (len(columns) - 2))
            failures.append(f"- **{row['variant']}**: " + row["error"].replace("\n", "\n  "))
            continue
        change, step = _difference(row["score"], summary["base_score"]), _difference(row["score"], previous)
        previous = row["score"]
        cells = [
            f"{row['train_examples']:,}" if curve else row["variant"],
            *(_fmt(row["scores"].get(t), ".2f") for t in tasks),
            _fmt(change, "+.2f"),
            *([_fmt(step, "+.2f")] if curve else []),
            f"{row['trainable_params']:,}",
            f"{row['trainable_percent']:.3f}",
            _fmt(row["learning_rate"], "g"),
            _fmt(row["seconds_per_epoch"], ".1f"),
            _fmt(row["peak_rss_mb"], ".0f"),
            _fmt(row["peak_gpu_mb"], ".0f"),
            f"{row['saved_mb']:.2f}",
        ]
        if forgetting:
            cells += [_fmt(row.get("retention_change"), "+.2f"), ", ".join(row.get("forgotten_tasks", [])) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    if curve:
        lines += [
            "",
            "vs previous size: the change in headline score from the next smaller training set (the base model for "
            "the smallest); where it falls toward the noise of the test set, the curve has flattened.",
        ]
    lines += [
        "",
        "vs base: the variant's headline score (its one task's metric, or the macro average over its trained "
        "tasks) minus the base model's. Peak RSS covers training alone (model loading and evaluation excluded) "
        "where the OS allows it; saved MB is the weights the variant writes (tokenizer excluded).",
    ]
    if failures:
        lines += ["", "## Failed variants", "", *failures]
    if summary["pending"]:
        lines += ["", f"Still to run: {', '.join(summary['pending'])}."]
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict, path: Path) -> None:
    """Four panels: headline score vs trainable % (log; for a learning curve, vs training-set size), time per
    epoch, peak memory, saved size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["variants"] if r["status"] == "ok" and r["score"] is not None]
    names = [r["variant"] for r in rows]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    quality, speed, memory, size = axes.flat
    if summary["kind"] == "size":
        _plot_learning_curve(quality, summary, rows)
    else:
        _plot_quality_vs_share(quality, summary, rows)
    speed.bar(names, [r["seconds_per_epoch"] or 0 for r in rows], color="tab:orange")
    speed.set(ylabel="seconds per epoch", title="training time")
    on_gpu = any(r["peak_gpu_mb"] for r in rows)
    width = 0.4 if on_gpu else 0.8
    positions = range(len(rows))
    memory.bar(
        [x - width / 2 * on_gpu for x in positions],
        [r["peak_rss_mb"] or 0 for r in rows],
        width,
        color="tab:green",
        label="peak RSS",
    )
    if on_gpu:
        memory.bar(
            [x + width / 2 for x in positions],
            [r["peak_gpu_mb"] or 0 for r in rows],
            width,
            color="tab:purple",
            label="peak GPU",
        )
    memory.set_xticks(list(positions), names)
    memory.legend()
    memory.set(ylabel="MB", title="peak memory in training")
    size.bar(names, [max(r["saved_mb"], 1e-3) for r in rows], color="tab:red")
    size.set(yscale="log", ylabel="MB (log)", title="saved weights")
    for axis in (speed, memory, size):
        axis.tick_params(axis="x", rotation=45)
    figure.suptitle(
        f"{summary['name']}: {summary['model']} ({summary.get('objective') or summary['architecture']}), {summary['machine']['device']}"
    )
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=110)
    plt.close(figure)
    os.replace(partial, path)


def _plot_quality_vs_share(quality, summary: dict, rows: list[dict]) -> None:
    """Method and mixture comparisons: each variant's headline score against its trainable share."""
    for row in rows:
        quality.scatter(max(row["trainable_percent"], 1e-4), row["score"])
        quality.annotate(
            row["variant"],
            (max(row["trainable_percent"], 1e-4), row["score"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    if summary["base_score"] is not None:
        quality.axhline(summary["base_score"], linestyle="--", color="grey", label="base model")
        quality.legend(loc="lower right")
    quality.set(
        xscale="log",
        xlabel="trainable parameters (%)",
        ylabel="test score (0-100)",
        title="quality vs trainable share",
    )


def _plot_learning_curve(quality, summary: dict, rows: list[dict]) -> None:
    """Learning curves: headline score against training-set size, the base model at 0 (a symmetric log axis,
    linear up to the smallest size, so 0 and 100 ... 2,000 all show)."""
    points = ([(0, summary["base_score"])] if summary["base_score"] is not None else []) + [
        (row["train_examples"], row["score"]) for row in rows
    ]
    quality.plot([x for x, _ in points], [y for _, y in points], marker="o")
    for x, y in points:
        quality.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=8, ha="center")
    smallest = min((x for x, _ in points if x), default=1)
    quality.set_xscale("symlog", linthresh=smallest)
    quality.set_xticks([x for x, _ in points], [f"{x:,}" for x, _ in points])
    quality.set(xlabel="training examples", ylabel="test score (0-100)", title="learning curve")
