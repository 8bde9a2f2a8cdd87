"""`tunelab sweep`: a hyperparameter search over one config, with Optuna.

The config's `sweep:` section says what to search (`tunelab.config.SweepConfig`). A trial is the config with the
trial's values set as `key.sub=value` overrides set them, trained by `pipeline.train` into its own run directory
under `<sweep>/trials/`. A Trainer callback hands every validation's metric to Optuna, whose median pruner may stop
the trial there; TPE (seeded) proposes each next trial from the finished ones.

A trial's value is the validation metric of the weights its run kept: at its best checkpoint (a one-task run
returns to the one this same metric picks), else at its last validation. Trials skip the base model's scores and
the retention suite, which cost time and change nothing in training; `best.yaml` is the config with the best
trial's values and keeps both, so `tunelab train best.yaml` trains what the best trial trained and keeps the
checkpoint with its value.

The study lives in `<sweep>/study.db` (SQLite), so the same command run again continues it: finished trials are
kept, a trial a killed process left running is marked failed and run again with its values, and `--trials N`
counts the finished trials of the whole study. One process at a time works on a sweep folder (a lock says so).

Written to the sweep folder after every trial: `trials.md` and `trials.json` (per trial its state, values, metric,
run directory and time), `sweep.png` (the metric against each searched setting) and `best.yaml`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from transformers import TrainerCallback

from tunelab import pipeline
from tunelab.compare import machine_description
from tunelab.config import ConfigError, RunConfig, SweepConfig, SweepParam, config_to_yaml, with_values
from tunelab.errors import TunelabError
from tunelab.runs import RunDir, write_atomic, write_json
from tunelab.train.objectives import objective_of

STUDY = "sweep"
"""The study's name in study.db: one study per sweep folder."""

TPE_STARTUP_TRIALS = 5
"""Random trials before TPE models the space; Optuna's default of 10 would leave a 20-trial sweep half random."""

FAILURES_IN_A_ROW = 3
"""Failed trials in a row that stop a sweep: by then the config or the machine is at fault, not the values."""


class SweepError(TunelabError, RuntimeError):
    """A sweep that cannot go on as asked, with what to do instead."""


def sweep_metric(config: RunConfig) -> str:
    """The metric the sweep optimises, refused before anything trains when the run's validation never logs it."""
    if config.sweep is None:
        raise ConfigError("the config has no sweep: section; add one with a space to search (README, sweeps)")
    objective = objective_of(config)
    metric = config.sweep.metric or objective.best_metric(config).removeprefix("eval_")
    logged = objective.validation_metrics(config)
    if metric not in logged:
        raise ConfigError(
            f"this run's validation logs {', '.join(logged)}, not '{metric}'; set sweep.metric to one of them"
        )
    return metric


def _label(choice: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists and mappings as their JSON text."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def _value(param: SweepParam, stored: Any) -> Any:
    """The config value of what Optuna stored for a setting."""
    if param.choices is None:
        return stored
    return next(choice for choice in param.choices if _label(choice) == stored)


def suggest(trial: optuna.Trial, space: dict[str, SweepParam]) -> dict[str, Any]:
    """The trial's value for each searched key (an enqueued trial gets the values it was enqueued with)."""
    for key, param in space.items():
        if param.choices is not None:
            trial.suggest_categorical(key, [_label(choice) for choice in param.choices])
        elif param.draws_integers():
            trial.suggest_int(key, param.low, param.high, step=param.step or 1, log=param.log)
        else:
            trial.suggest_float(key, float(param.low), float(param.high), step=param.step, log=param.log)
    return values_of(trial.params, space)


def values_of(params: dict[str, Any], space: dict[str, SweepParam]) -> dict[str, Any]:
    """The config values of the parameters Optuna stored for a trial (a trial interrupted early has fewer)."""
    return {key: _value(space[key], params[key]) for key in space if key in params}


def _without_extras() -> dict[str, Any]:
    """What a trial skips: the base model's scores and the retention suite, which take time and change nothing
    in training."""
    return {"eval.baselines": [], "eval.retention_suite": None}


def best_config(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The swept config with a trial's values and no sweep section: what best.yaml holds, which `tunelab train`
    runs as it is. An explicit sweep.metric also picks the checkpoint the run keeps."""
    changes = {**values, "sweep": None}
    if config.sweep.metric:
        changes["training.metric_for_best"] = config.sweep.metric
    return with_values(config, changes, f"the config with the trial's values {values}")


def trial_config(config: RunConfig, directory: Path, number: int, values: dict[str, Any]) -> RunConfig:
    """What trial `number` trains: best_config's, into `<sweep>/trials/trial-<number>-<time>`, without extras."""
    where = {"name": f"trial-{number:03d}", "output_dir": str(directory / "trials"), **_without_extras()}
    return with_values(best_config(config, values), where, f"the config of trial {number}")


def trial_run(directory: Path, number: int) -> RunDir | None:
    """The run directory trial `number` trained into, if it got that far."""
    found = sorted((directory / "trials").glob(f"trial-{number:03d}-*"))
    return RunDir(found[-1]) if found else None


class ReportToTrial(TrainerCallback):
    """Hands each validation's metric to the Optuna trial and stops the run when the pruner gives up on it.

    Values are reported by validation index, so trials of any batch size or length meet at their k-th validation
    (one per epoch). Raising TrialPruned from the Trainer, as transformers' own Optuna search does, ends training
    at once, and the run directory is never marked complete.
    """

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.values: dict[int, float] = {}
        """Optimiser step -> the metric at that step's validation."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:  # a mixture validates each task apart: another task's set
            return
        index = len(self.values)
        self.values[state.global_step] = float(value)
        self.trial.report(float(value), index)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"at validation {index + 1} (step {state.global_step}) its {self.metric} {value:.4f} was worse than "
                "the median of earlier trials there"
            )

    def kept_value(self, run: RunDir) -> float:
        """The metric of the weights the run kept: at its best checkpoint, else at its last validation."""
        if not self.values:
            raise SweepError(
                f"the run logged no validation {self.metric}: a sweep needs validation data "
                "(data.validation, or data.validation_fraction of train)"
            )
        best = run.state().get("best_step")
        value = self.values[best if best is not None else max(self.values)]
        if math.isnan(value):
            raise SweepError(f"validation {self.metric} is NaN: the training diverged")
        return value


def _mark_pruned(directory: Path, number: int, reason: str) -> None:
    """A pruned trial's run says so (never complete), and its checkpoints, which nothing resumes, go."""
    run = trial_run(directory, number)
    if run is not None:
        run.update_state(state="pruned", error=None, pruned=reason)
        shutil.rmtree(run.checkpoints, ignore_errors=True)


def _objective(config: RunConfig, directory: Path, metric: str):
    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, config.sweep.space)
        print(f"\n[trial {trial.number}] {_describe(values)}", flush=True)
        reporter = ReportToTrial(trial, metric)
        try:
            run = pipeline.train(trial_config(config, directory, trial.number, values), callbacks=[reporter])
            return reporter.kept_value(run)
        except optuna.TrialPruned as exc:
            _mark_pruned(directory, trial.number, str(exc))
            raise
        except KeyboardInterrupt:  # run again, with the same values, when the sweep resumes
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    return objective


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_cell(value)}" for key, value in values.items())


def _fingerprint(config: RunConfig) -> dict[str, Any]:
    """The config a study belongs to: everything but the trial budget, which a resumed sweep may change."""
    raw = config.model_dump(mode="json")
    raw["sweep"].pop("trials")
    return raw


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {key: item for k, v in value.items() for key, item in _flat(v, f"{prefix}.{k}" if prefix else k).items()}


def _check_same_config(study: optuna.Study, config: RunConfig, directory: Path) -> None:
    """A study continues only with the config (and overrides) it started with: trials of two configs are not
    comparable."""
    fingerprint = _fingerprint(config)
    started = study.user_attrs.get("config")
    if started is None:
        study.set_user_attr("config", fingerprint)
        return
    before, now = _flat(started), _flat(fingerprint)
    keys = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    changed = [f"{key}: {before.get(key)!r} then, {now.get(key)!r} now" for key in keys]
    if changed:
        raise ConfigError(
            f"the sweep in {directory} was started with another config ({'; '.join(changed[:5])}); "
            "continue it with the same config and overrides, or give a new --output"
        )


def _retried(trials: list[FrozenTrial]) -> set[int]:
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def _retry_killed(study: optuna.Study, directory: Path) -> None:
    """Trials still RUNNING were left by a killed process (the lock keeps out a live one): each is marked failed
    and queued again with its values, and its run directory says it was interrupted."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        study.tell(trial.number, state=TrialState.FAIL)
        run = trial_run(directory, trial.number)
        if run is not None and run.state().get("state") == "running":
            run.update_state(state="interrupted")
        print(f"trial {trial.number} was interrupted; it runs again with the same values")


def finished(study: optuna.Study) -> int:
    """Trials that ran to an outcome: complete, pruned, or failed by themselves (not interrupted and queued again)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )


def _pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials, n_warmup_steps=sweep.warmup_evaluations)


def open_study(config: RunConfig, directory: Path, metric: str) -> optuna.Study:
    """The sweep's study in `<directory>/study.db`, new or as an earlier process left it."""
    study = optuna.create_study(
        storage=f"sqlite:///{(directory / 'study.db').resolve()}",
        study_name=STUDY,
        direction=config.sweep.direction(metric),
        pruner=_pruner(config.sweep),
        load_if_exists=True,
    )
    _check_same_config(study, config, directory)
    # Seeded by the trials so far: a resumed sweep draws new values, not the first run's again.
    study.sampler = optuna.samplers.TPESampler(
        seed=config.sweep.seed + len(study.trials), n_startup_trials=TPE_STARTUP_TRIALS
    )
    return study


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Held while a process works on the sweep folder; the system drops it when the process dies, even by kill -9."""
    with (directory / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(
                f"another `tunelab sweep` is working on {directory}; wait for it, or give another --output"
            ) from None
        yield


def sweep(
    config: RunConfig, directory: Path, trials: int | None = None, minutes: float | None = None, source: str = "config"
) -> Path:
    """Run the sweep in `directory` (continuing its study) until it holds `trials` finished trials (default
    sweep.trials, or no limit with `minutes`) or `minutes` have passed (a trial under way then runs to its end).
    Writes the trials table, plot and best.yaml after every trial; returns the path of trials.md."""
    metric = sweep_metric(config)
    pipeline.check_runnable(config)
    directory.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(directory):
        study = open_study(config, directory, metric)
        write_atomic(directory / "config.yaml", config_to_yaml(config))
        _retry_killed(study, directory)
        total = trials if trials is not None else (None if minutes else config.sweep.trials)
        remaining = None if total is None else total - finished(study)
        failures: list[FrozenTrial] = []

        def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            failures[:] = [*failures, trial] if trial.state == TrialState.FAIL else []
            if len(failures) >= FAILURES_IN_A_ROW:
                study.stop()
            _print_outcome(write_outputs(study, config, directory, metric, source), trial)

        try:
            if remaining is not None and remaining <= 0:
                print(f"{directory} already holds {finished(study)} finished trials; nothing to run")
            else:
                study.optimize(
                    _objective(config, directory, metric),
                    n_trials=remaining,
                    timeout=minutes * 60 if minutes else None,
                    catch=(Exception,),
                    callbacks=[after_trial],
                    gc_after_trial=True,
                )
        finally:
            write_outputs(study, config, directory, metric, source)
    if len(failures) >= FAILURES_IN_A_ROW:
        raise SweepError(
            f"{len(failures)} trials in a row failed, the last with: {failures[-1].user_attrs.get('error')}; "
            f"see {directory / 'trials.md'}, fix the config and sweep again into a new --output"
        )
    return directory / "trials.md"


def _print_outcome(summary: dict, trial: FrozenTrial) -> None:
    row = next(r for r in summary["trials"] if r["number"] == trial.number)
    outcome = {
        "complete": f"{summary['metric']} {_number(row['value'])}",
        "pruned": row["note"],
        "failed": f"failed: {(row['error'] or 'no error recorded').splitlines()[-1][:200]}",
    }.get(row["state"], row["state"])
    best = summary["best"]
    tail = f"; best so far: trial {best['number']}, {_number(best['value'])}" if best else ""
    print(f"[trial {trial.number}] {row['state']}: {outcome}{tail}", flush=True)


def _row(trial: FrozenTrial, directory: Path, space: dict[str, SweepParam], retried: set[int]) -> dict:
    state = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "interrupted" if trial.number in retried else "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]
    run = trial_run(directory, trial.number)
    return {
        "number": trial.number,
        "state": state,
        "params": values_of(trial.params, space),
        "value": trial.value if state == "complete" else None,
        "validations": [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
        "run_dir": str(run.path) if run else None,
        "seconds": round(trial.duration.total_seconds(), 1) if trial.duration and state != "interrupted" else None,
        "note": (run.state().get("pruned") if run and state == "pruned" else None),
        "error": trial.user_attrs.get("error"),
        "retry_of": trial.user_attrs.get("retry_of"),
    }


def _best(rows: list[dict], direction: str) -> dict | None:
    """The complete trial with the best value; the earliest of equals."""
    complete = [r for r in rows if r["state"] == "complete"]
    sign = 1 if direction == "minimize" else -1
    return min(complete, key=lambda r: (sign * r["value"], r["number"])) if complete else None


def write_outputs(study: optuna.Study, config: RunConfig, directory: Path, metric: str, source: str) -> dict:
    """trials.json, trials.md, sweep.png and best.yaml as the study stands; returns what trials.json holds."""
    trials = study.get_trials(deepcopy=False)
    rows = [_row(t, directory, config.sweep.space, _retried(trials)) for t in trials]
    direction = config.sweep.direction(metric)
    best = _best(rows, direction)
    summary = {
        "config": source,
        "name": config.name,
        "model": config.model.name,
        "method": config.method.name,
        "metric": metric,
        "direction": direction,
        "storage": str(directory / "study.db"),
        "space": {key: param.model_dump(exclude_defaults=True) for key, param in config.sweep.space.items()},
        "sampler": {"name": "TPE", "seed": config.sweep.seed, "startup_trials": TPE_STARTUP_TRIALS},
        "pruner": config.sweep.pruner,
        "finished": finished(study),
        "best": best,
        "machine": machine_description(),
        "trials": rows,
    }
    write_json(directory / "trials.json", summary)
    write_atomic(directory / "trials.md", render_trials(summary, config.sweep))
    if best is not None:
        write_atomic(directory / "best.yaml", _best_yaml(config, best, directory, metric))
    plot_trials(summary, config.sweep.space, directory / "sweep.png")
    return summary


def _best_yaml(config: RunConfig, best: dict, directory: Path, metric: str) -> str:
    header = (
        f"# The best trial (trial {best['number']}, validation {metric} {best['value']:.6g}) of the sweep in "
        f"{directory}.\n# Train it with: tunelab train {directory / 'best.yaml'}\n"
    )
    return header + config_to_yaml(best_config(config, best["params"]))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _cell(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, (list, dict))
        else f"{value:.4g}"
        if isinstance(value, float)
        else str(value)
    )


def render_trials(summary: dict, sweep: SweepConfig) -> str:
    rows, metric, best = summary["trials"], summary["metric"], summary["best"]
    counts = {
        state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "failed", "interrupted")
    }
    pruner = (
        f"median, once {sweep.startup_trials} trials have finished, from validation {sweep.warmup_evaluations + 1}"
        if sweep.pruner == "median"
        else "none"
    )
    lines = [
        f"# Sweep: {summary['name']}",
        "",
        f"- config `{summary['config']}`: model `{summary['model']}`, method {summary['method']}; "
        f"study `{summary['storage']}`",
        f"- metric: validation {metric}, {summary['direction']}d; a trial's value is that of the weights its run "
        "kept (its best checkpoint)",
        f"- {summary['finished']} finished trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed"
        + (f" ({counts['interrupted']} interrupted, run again)" if counts["interrupted"] else ""),
        f"- sampler TPE (seed {sweep.seed}, first {TPE_STARTUP_TRIALS} trials random); pruner {pruner}",
        f"- machine: {summary['machine']['device']}, torch {summary['machine']['torch']}",
        (
            f"- best: trial {best['number']}, {metric} {_number(best['value'])}; its config is best.yaml "
            f"(`tunelab train {Path(summary['storage']).parent / 'best.yaml'}`)"
            if best
            else "- best: none yet (no trial complete)"
        ),
        "",
    ]
    keys = list(sweep.space)
    columns = ["trial", "state", metric, *keys, "validations", "seconds", "run directory"]
    lines += ["| " + " | ".join(columns) + " |", "| ---: | --- | ---: |" + " --- |" * (len(columns) - 3)]
    for row in rows:
        state = "**best**" if best and row["number"] == best["number"] else row["state"]
        cells = [
            str(row["number"]),
            state,
            _number(row["value"]),
            *(_cell(row["params"][key]) if key in row["params"] else "" for key in keys),
            ", ".join(_number(v) for v in row["validations"]),
            "" if row["seconds"] is None else f"{row['seconds']:.0f}",
            f"`{row['run_dir']}`" if row["run_dir"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- **trial {r['number']}**: " + r["error"].replace("\n", "\n  ") for r in failed]
    return "\n".join(lines) + "\n"


def plot_trials(summary: dict, space: dict[str, SweepParam], path: Path) -> None:
    """One panel per searched setting: each complete trial's value against its value of the setting, pruned
    trials at their last validation, the best trial as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(space)
    width = min(3, len(keys))
    height = math.ceil(len(keys) / width)
    figure, axes = plt.subplots(height, width, figsize=(max(6.0, 4.4 * width), 3.6 * height), squeeze=False)
    shown = [
        (row, row["value"] if row["state"] == "complete" else row["validations"][-1])
        for row in summary["trials"]
        if row["state"] == "complete" or (row["state"] == "pruned" and row["validations"])
    ]
    best = summary["best"]
    for axis, key in zip(axes.flat, keys):
        param = space[key]
        labels = [_label(choice) for choice in param.choices] if param.choices is not None else None

        def x(value, labels=labels):
            return labels.index(_label(value)) if labels else value

        for state, style in (
            ("complete", {"marker": "o", "color": "tab:blue"}),
            ("pruned", {"marker": "x", "color": "grey"}),
        ):
            points = [(x(row["params"][key]), y) for row, y in shown if row["state"] == state and key in row["params"]]
            if points:
                axis.scatter(
                    *zip(*points), label=state if state == "complete" else "pruned (last validation)", **style
                )
        if best is not None:
            axis.scatter(
                x(best["params"][key]), best["value"], marker="*", s=220, color="tab:red", label="best", zorder=3
            )
        if labels:
            axis.set_xticks(range(len(labels)), [str(label)[:24] for label in labels], rotation=20, fontsize=8)
        elif param.log:
            axis.set_xscale("log")
        axis.set(title=key, ylabel=f"validation {summary['metric']}")
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    if shown:
        axes.flat[0].legend(fontsize=8)
    figure.suptitle(f"{summary['name']}: validation {summary['metric']} ({summary['direction']}d) per setting")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)
