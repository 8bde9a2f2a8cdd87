"""The pipeline, left to right: config -> data -> model + method -> trainer -> evaluation -> run directory.

Each CLI command calls one function here. Everything after training reads only
the run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from transformers import set_seed

from tunelab.card import render_card
from tunelab.config import RunConfig
from tunelab.data.encode import encode
from tunelab.data.readers import DataError, read_file
from tunelab.data.splits import TaskData, load_task_data
from tunelab.data.validate import check_records, enforce
from tunelab.eval.evaluate import evaluate
from tunelab.eval.predict import classify, generate
from tunelab.methods import apply_method
from tunelab.models.loading import check_family, load_model, load_tokenizer, resolve_source
from tunelab.runs import RunDir, write_atomic, write_json
from tunelab.train.trainer import build_trainer, choose_precision


def _encode_split(config: RunConfig, records, tokenizer, labels, name: str) -> list[dict]:
    encoded = encode(config.task, records, tokenizer, config.data, labels)
    if encoded.truncated:
        print(f"{name}: {encoded.truncated} of {len(records)} examples truncated to "
              f"data.max_length={config.data.max_length} / data.max_target_length={config.data.max_target_length}")
    return encoded.examples


def _load_for_config(config: RunConfig, labels: list[str] | None):
    source = resolve_source(config.model.name)
    tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
    set_seed(config.training.seed)  # the new head's initialisation depends on it
    model = load_model(config.task, source, labels, config.model.revision, config.model.trust_remote_code)
    return model, tokenizer


def train(config: RunConfig, resume: RunDir | None = None) -> RunDir:
    """Train a model as configured (or finish an interrupted run) and write a complete run directory."""
    check_family(config.model.name, config.task)
    data: TaskData = load_task_data(config)  # every data error surfaces before a model loads
    for note in data.notes:
        print(f"data: {note}")
    precision = choose_precision(config.training.precision)
    print(f"precision: {precision} (training.precision={config.training.precision})")
    run = resume or RunDir.create(config)
    print(f"run directory: {run.path}")
    run.update_state(state="running", precision=precision, labels=data.labels, data_notes=data.notes,
                     examples={"train": len(data.train), "validation": len(data.validation), "test": len(data.test)})
    try:
        model, tokenizer = _load_for_config(config, data.labels)
        train_examples = _encode_split(config, data.train, tokenizer, data.labels, "train")
        validation_examples = _encode_split(config, data.validation, tokenizer, data.labels, "validation")
        if config.eval.evaluate_base and not run.base_eval_path.exists():
            print("evaluating the base model on the test data ...")
            write_json(run.base_eval_path, evaluate(model, tokenizer, data.test, config, data.labels))
        model, trainable = apply_method(model, config)
        print(f"method {config.method.name}: {trainable}")
        run.update_state(trainable=trainable.as_dict())
        trainer = build_trainer(model, tokenizer, config, run, train_examples, validation_examples, precision)
        checkpoint = run.last_checkpoint() if resume else None
        if checkpoint:
            print(f"resuming from {checkpoint}")
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - started + run.state().get("train_seconds", 0.0)
        model = trainer.model
        print("evaluating the tuned model on the test data ...")
        tuned = evaluate(model, tokenizer, data.test, config, data.labels)
        base = json.loads(run.base_eval_path.read_text()) if run.base_eval_path.exists() else None
        run.save_model(model, tokenizer)
        evaluation = {"tuned": tuned, "base": base, "trainable": trainable.as_dict(), "method": config.method.name}
        write_json(run.eval_path, evaluation)
        run.update_state(train_seconds=train_seconds, best_checkpoint=trainer.state.best_model_checkpoint)
        write_atomic(run.card_path, render_card(config, run.state(), evaluation))
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        run.update_state(state="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    except KeyboardInterrupt:
        run.update_state(state="interrupted")
        raise
    except Exception as exc:
        run.update_state(state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return run


def load_run(run: RunDir):
    """The tuned model of a complete run, with its tokenizer, config and labels."""
    state = run.require_complete()
    config = run.config()
    labels = state.get("labels")
    if config.method.name == "full":
        model = load_model(config.task, str(run.model_dir), labels)
    else:
        from peft import PeftModel

        base = load_model(config.task, resolve_source(config.model.name), labels,
                          config.model.revision, config.model.trust_remote_code)
        model = PeftModel.from_pretrained(base, run.model_dir)
    tokenizer = load_tokenizer(str(run.model_dir))
    model.eval()
    return model, tokenizer, config, labels


def _read_checked(path: str, config: RunConfig, labels, with_target: bool) -> list:
    records = read_file(path)
    records = enforce(check_records(records, config.task, config.data, labels, with_target), path, config.data.skip_invalid)
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def evaluate_run(run: RunDir, data_path: str) -> dict[str, float]:
    """The run's tuned model scored on a labelled file, mapped with the run's field names."""
    model, tokenizer, config, labels = load_run(run)
    return evaluate(model, tokenizer, _read_checked(data_path, config, labels, with_target=True), config, labels)


def predict_run(run: RunDir, input_path: str, output_path: str) -> int:
    """Write one JSON line per input record: the record plus its prediction. Returns the count."""
    model, tokenizer, config, labels = load_run(run)
    records = _read_checked(input_path, config, labels, with_target=False)
    if config.task == "classification":
        predictions = classify(model, tokenizer, records, config, labels)
        rows = [{**r.fields, "prediction": p["label"], "scores": p["scores"]} for r, p in zip(records, predictions)]
    else:
        texts = generate(model, tokenizer, records, config)
        rows = [{**r.fields, "prediction": t} for r, t in zip(records, texts)]
    write_atomic(Path(output_path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(rows)
