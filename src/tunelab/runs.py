"""The run directory: the product of a run, and the only thing later commands read.

Layout of `<output_dir>/<name>-<timestamp>/`:

    config.yaml     resolved config (every default filled in)
    run.json        state (running | interrupted | failed | complete; `error` says why a run failed, with the
                    step), the training process (`host`, `pid`), the base (`base_model` as configured,
                    `base_source` the folder or hub id it was read from here), labels, trainable parameters, peak
                    memory, `train_seconds` (every attempt's training time, summed, kept up to date while
                    training), `attempts`, `best_step` (the step whose weights `model/` holds, when validation
                    chose them), where the trackers of training.report_to wrote
    metrics.jsonl   one line per log/eval event: step, loss, learning rate, eval metrics
    base_eval.json  test metrics of the model before tuning, zero-shot (written before training, kept on resume)
    few_shot_eval.json  the same, few-shot (`eval.baselines: [few_shot]`; written before training, kept on resume)
    checkpoints/    Trainer checkpoints while training (removed once the run completes)
    model/          what training changed, as the method saves it (safetensors: the full model, a PEFT
                    adapter, a bottleneck adapter, or the changed tensors of head/bitfit) and the tokenizer
    merged/         the tuned model with its update folded in, written when a next run names this one as its
                    model.name (a two-stage recipe); full fine-tuning needs none
    eval.json       final test metrics, tuned and base, same data and metric (and the judge's win rate)
    eval/           reports written after training: forgetting, and judge.jsonl (`eval.judge`: each test prompt's
                    base and tuned answers with the judge's scores)
    data/           report.json and report.md (duplicates, conflicts, labels, token lengths, leakage and
                    contamination, as printed at the start), and removed.jsonl when data.dedup or
                    data.drop_overlap is on (every training record removed, with why)
    tensorboard/    TensorBoard event files, when training.report_to names tensorboard
    README.md       model card

Every file is written to a temporary name and renamed into place, and `run.json`
says 'complete' only after everything else is written, so a killed run never
looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, config_to_yaml, load_config
from tunelab.errors import TunelabError
from tunelab.kinds import objective_name


class RunError(TunelabError, RuntimeError):
    """A run directory that cannot be used for what was asked, with what to do instead."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM and marked interrupted, with the one line that says where it stopped and
    how to go on. A KeyboardInterrupt, so that a command running several runs (compare, sweep) stops with it."""

    def __init__(self, line: str, exit_status: int = 130):
        super().__init__(line)
        self.line, self.exit_status = line, exit_status


def checkpoint_step_of(checkpoint: str | Path) -> int:
    """The step a Trainer checkpoint folder (`checkpoint-N`) was saved at."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def write_atomic(path: Path, text: str) -> None:
    """Write text so that readers see either the old file or the whole new one. The temporary file is created
    as any other file is, so it gets the mode the umask gives (tempfile.mkstemp's is 0600, which run.json and
    the exports' tunelab-export.json kept beside their 0644 neighbours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        with open(temporary, "x", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def staged_folder(output: Path) -> Iterator[Path]:
    """A hidden folder beside `output` to write an export into, renamed into place only when everything is
    written and removed when writing fails; a killed process leaves only the hidden folder, which the next
    attempt replaces. An existing non-empty `output` is refused, never overwritten."""
    if output.exists() and any(output.iterdir()):
        raise RunError(f"{output} already exists and is not empty; choose a new --output folder")
    staging = output.with_name(f".{output.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        output.rmdir()
    staging.rename(output)


def run_words(config: RunConfig) -> dict[str, str]:
    """What a run trains, as run.json, the runs index and a chain of runs record it: its kind of example (a
    mixture's tasks declare their own) and its objective. Runs written before recorded a `task_type` instead
    (`config.vocabulary.OLD_TASK_TYPES` reads it as a kind)."""
    return {"kind": "mixture" if config.mixture is not None else config.data.kind, "objective": objective_name(config)}


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object a line, written atomically: predictions, cleaned copies and removed records."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _has_trainer_state(checkpoint: Path) -> bool:
    """Whether the checkpoint's trainer_state.json is whole. The Trainer writes it in place, not atomically,
    so a kill can leave it empty or cut; such a checkpoint cannot be resumed from."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config: RunConfig) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(config.output_dir) / f"{config.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(config.output_dir) / f"{config.name}-{stamp}-{suffix}"
        path.mkdir(parents=True)
        run = cls(path)
        write_atomic(run.config_path, config_to_yaml(config))
        run.update_state(
            state="running",
            started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            **run_words(config),
            method=config.method.name,
            base_model=config.model.name,
        )
        return run

    config_path = property(lambda self: self.path / "config.yaml")
    state_path = property(lambda self: self.path / "run.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    base_eval_path = property(lambda self: self.path / "base_eval.json")
    few_shot_eval_path = property(lambda self: self.path / "few_shot_eval.json")
    eval_path = property(lambda self: self.path / "eval.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model_dir = property(lambda self: self.path / "model")
    card_path = property(lambda self: self.path / "README.md")
    data_dir = property(lambda self: self.path / "data")
    masks_path = property(lambda self: self.path / "data" / "masks.md")
    """The first training conversations with the tokens that train marked (conversational kinds only)."""
    tensorboard_dir = property(lambda self: self.path / "tensorboard")

    def config(self) -> RunConfig:
        return load_config(self.config_path, quiet=True)

    def state(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise RunError(
                f"run directory {self.path} does not exist; runs are under the config's output_dir (default runs/)"
            )
        if not self.state_path.exists():
            raise RunError(f"{self.path} is not a tunelab run directory (no run.json)")
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    def start_attempt(self, **fields: Any) -> None:
        """Mark the run running in this process, with `fields`. run.json names the host and process id, by which
        the web app tells a run still training from one whose process was killed; what an earlier attempt left
        (its error, the step it was interrupted at) goes."""
        current = self.state()
        for stale in ("error", "interrupted_at_step"):
            current.pop(stale, None)
        write_json(
            self.state_path,
            {**current, **fields, "state": "running", "host": socket.gethostname(), "pid": os.getpid()},
        )

    def update_state(self, **fields: Any) -> None:
        current = self.state() if self.state_path.exists() else {}
        current.update(fields)
        write_json(self.state_path, current)

    def require_complete(self) -> dict[str, Any]:
        """The run's state, or a clear error when training did not finish."""
        state = self.state()
        if state.get("state") != "complete":
            raise RunError(
                f"run {self.path} is not complete (state: {state.get('state')}); "
                f"finish it with `tunelab train --resume {self.path}`"
            )
        return state

    def append_metrics(self, entry: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def keep_metrics_until(self, step: int) -> None:
        """Drop the log lines after `step`: a resumed run logs the steps after its checkpoint again, once."""
        if self.metrics_path.exists():
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
            write_atomic(self.metrics_path, "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a checkpoint a kill
        interrupted is passed over, including one killed while that file was being written."""
        if not self.checkpoints.exists():
            return None
        complete = [p for p in self.checkpoints.glob("checkpoint-*") if _has_trainer_state(p)]
        found = sorted(complete, key=checkpoint_step_of)
        return found[-1] if found else None

    def checkpoint_step(self) -> int | None:
        """The step of the newest complete checkpoint: where `train --resume` continues from."""
        checkpoint = self.last_checkpoint()
        return checkpoint_step_of(checkpoint) if checkpoint else None

    def resume_line(self) -> str:
        """Where `train --resume` would continue this run, in words."""
        step = self.checkpoint_step()
        start = f"from step {step}" if step is not None else "over from step 0 (no checkpoint was saved)"
        return f"resume with tunelab train --resume {self.path} (it continues {start})"

    @contextmanager
    def marks_failure(self):
        """Record an interruption or a crash in run.json, so a half-written run never looks complete. A Ctrl-C that
        was not turned into a checkpoint (a second one, or one before training) comes out as a `RunInterrupted`
        naming the step a resume continues from, not as a traceback from wherever it landed."""
        try:
            yield
        except RunInterrupted:
            self.update_state(state="interrupted")
            raise
        except KeyboardInterrupt:
            self.update_state(state="interrupted")
            raise RunInterrupted(f"aborted without saving this step; {self.resume_line()}") from None
        except Exception as exc:
            self.update_state(state="failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def save_model(self, save_weights, tokenizer) -> None:
        """Save final weights (with the method's `save_weights(directory)`) via a staging folder renamed into place."""
        staging = self.path / "model.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        save_weights(staging)
        tokenizer.save_pretrained(staging)
        if self.model_dir.exists():
            shutil.rmtree(self.model_dir)
        staging.rename(self.model_dir)


def chain_step(run: RunDir) -> dict[str, Any]:
    """What a complete run contributes to the chain of a run built on it: where it is, what it tuned from and
    how, on what data, and its headline score before and after."""
    config = run.config()
    evaluation = json.loads(run.eval_path.read_text(encoding="utf-8")) if run.eval_path.exists() else {}
    scores = {
        name: {
            "metric": task["metric"],
            **{
                role: task[role]["metrics"][task["metric"]]["value"]
                for role in ("base", "tuned")
                if task["metric"] in (task.get(role) or {}).get("metrics", {})
            },
        }
        for name, task in evaluation.get("tasks", {}).items()
    }
    return {
        "run": str(run.path.resolve()),
        "name": config.name,
        "base_model": config.model.name,
        **run_words(config),
        "method": config.method.name,
        "data": config.data.train if config.mixture is None else "mixture",
        "scores": scores,
    }


def run_chain(run: RunDir) -> list[dict[str, Any]]:
    """The runs a run stands on and the run itself, first to last, each as `chain_step` describes it."""
    return [*run.require_complete().get("chain", []), chain_step(run)]
