"""The pipeline, left to right: config -> data -> model + method -> trainer -> evaluation -> run directory.

Each CLI command calls one function here. Everything after training reads only
the run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

from transformers import set_seed

from tunelab import distributed
from tunelab.card import render_card
from tunelab.config import RunConfig
from tunelab.data.cache import encode_cached
from tunelab.data.readers import DataError, read_file
from tunelab.data.splits import TaskData, load_task_data
from tunelab.data.validate import check_records, enforce
from tunelab.eval.evaluate import evaluate, score_records
from tunelab.eval.forgetting import forgetting_report, render_forgetting
from tunelab.eval.predict import classify, generate
from tunelab.eval.suites import build_report, load_suite, write_suite_report
from tunelab.eval.targets import Target
from tunelab.methods import MethodError, apply_method, base_load_options, check_method, method_module
from tunelab.models.loading import check_family, load_model, load_tokenizer, resolve_source
from tunelab.models.reference import check_reference
from tunelab.runs import RunDir, RunError, write_atomic, write_json
from tunelab.train.memory import peak_memory, reset_peak
from tunelab.train.trainer import build_trainer, choose_precision


def _encode_split(config: RunConfig, records, tokenizer, labels, name: str) -> list[dict]:
    """Token ids of a split, tokenised once and then read from the token cache while data and tokenizer stay the same."""
    encoded, cached = encode_cached(config.task, records, tokenizer, config.data, labels)
    if cached:
        print(f"{name}: {len(records)} examples read from the token cache")
    if encoded.truncated:
        print(f"{name}: {encoded.truncated} of {len(records)} examples truncated to "
              f"data.max_length={config.data.max_length} / data.max_target_length={config.data.max_target_length}")
    return encoded.examples


def _load_base(config: RunConfig, labels: list[str] | None, **options):
    """The pretrained model the run starts from; the seed fixes a classifier's new head, so every load is the same."""
    set_seed(config.training.seed)
    return load_model(config.task, resolve_source(config.model.name, config.model.revision), labels, config.model.revision,
                      config.model.trust_remote_code, **options)


def _load_for_config(config: RunConfig, labels: list[str] | None, precision: str = "fp32"):
    """The base to train, loaded as the method and the training precision want it, and its tokenizer."""
    source = resolve_source(config.model.name, config.model.revision)
    tokenizer = load_tokenizer(source, config.model.revision, config.model.trust_remote_code)
    return _load_base(config, labels, **base_load_options(config, precision)), tokenizer


def _saved_weights_bytes(directory: Path) -> int:
    """Size on disk of the saved weights (the tokenizer, the same for every method, is left out)."""
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def check_runnable(config: RunConfig) -> None:
    """Refuse, before any data or model loads, a model that names nothing loadable or cannot do the task, or a
    method that cannot run here."""
    check_reference(config.model.name, config.model.revision)
    check_family(config.model.name, config.task)
    check_method(config)
    if config.eval.retention_suite:
        load_suite(config.eval.retention_suite)


def _run_dir(config: RunConfig, resume: RunDir | None) -> RunDir:
    """The run's directory: rank 0 creates it (or takes the one being resumed), every other rank gets its path."""
    run = resume or (RunDir.create(config) if distributed.is_main_process() else None)
    return RunDir(distributed.share_from_main(str(run.path) if run else None))


def train(config: RunConfig, resume: RunDir | None = None) -> RunDir:
    """Train a model as configured (or finish an interrupted run) and write a complete run directory.

    Under torchrun / accelerate launch every rank loads the data and model and trains; rank 0 alone writes
    the run directory and evaluates, and the other ranks return once training ends.
    """
    if config.mixture is not None:
        from tunelab.multitask import train_mixture

        if resume is not None:
            raise RunError("multi-task runs cannot be resumed yet; start the run again")
        return train_mixture(config)
    check_runnable(config)
    data: TaskData = load_task_data(config)  # every data error surfaces before a model loads
    for note in data.notes:
        print(f"data: {note}")
    precision = choose_precision(config.training.precision)
    print(f"precision: {precision} (training.precision={config.training.precision})")
    distributed.start()
    main = distributed.is_main_process()
    run = _run_dir(config, resume)
    print(f"run directory: {run.path}")
    if main:
        run.update_state(state="running", precision=precision, labels=data.labels, data_notes=data.notes,
                         world_size=distributed.world_size(),
                         examples={"train": len(data.train), "validation": len(data.validation), "test": len(data.test)})
    with run.marks_failure() if main else nullcontext():
        model, tokenizer = _load_for_config(config, data.labels, precision)
        train_examples = _encode_split(config, data.train, tokenizer, data.labels, "train")
        validation_examples = _encode_split(config, data.validation, tokenizer, data.labels, "validation")
        # decided once, by rank 0: another rank looking for the file could see it already written and skip the barrier
        if distributed.share_from_main(config.eval.evaluate_base and not run.base_eval_path.exists()):
            if main:
                print("evaluating the base model on the test data ...")
                write_json(run.base_eval_path, evaluate(model, tokenizer, data.test, config, data.labels))
            distributed.barrier()
        model, trainable = apply_method(model, config)
        print(f"method {config.method.name}: {trainable}")
        if main:
            run.update_state(trainable=trainable.as_dict())
        # The Trainer saves checkpoints from rank 0, except that each rank writes its own RNG state file into
        # them (rng_state_<rank>.pth): that is its resume machinery, so the run directory tolerates it.
        trainer = build_trainer(model, tokenizer, config, run, train_examples, validation_examples, precision)
        checkpoint = distributed.share_from_main(run.last_checkpoint() if resume else None)
        if checkpoint:
            print(f"resuming from {checkpoint}")
        window = reset_peak()
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if not main:  # training was the last collective step; what follows is rank 0's alone
            return run
        train_seconds = time.perf_counter() - started + run.state().get("train_seconds", 0.0)
        memory = peak_memory(window)
        model = trainer.model
        print("evaluating the tuned model on the test data ...")
        tuned = evaluate(model, tokenizer, data.test, config, data.labels)
        base = json.loads(run.base_eval_path.read_text()) if run.base_eval_path.exists() else None
        method = method_module(config.method.name)
        run.save_model(lambda directory: method.save(model, directory), tokenizer)
        evaluation = {"tuned": tuned, "base": base, "trainable": trainable.as_dict(), "method": config.method.name}
        write_json(run.eval_path, evaluation)
        run.update_state(train_seconds=train_seconds, epochs_trained=round(trainer.state.epoch or 0, 4),
                         learning_rate=config.learning_rate(), saved_weights_bytes=_saved_weights_bytes(run.model_dir),
                         best_checkpoint=trainer.state.best_model_checkpoint, **memory)
        forgetting = _retention_report(config, model, tokenizer, data.labels, run) if config.eval.retention_suite else None
        write_atomic(run.card_path, render_card(config, run.state(), evaluation, forgetting))
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        run.update_state(state="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run


def _retention_report(config: RunConfig, model, tokenizer, labels, run: RunDir) -> str:
    """Base vs tuned on the retention suite, written to the run's eval/ folder; returns the Markdown table."""
    batch = config.training.eval_batch_size
    tuned = Target(f"{config.name} (tuned)", model, tokenizer, config.task, labels, batch)

    def base() -> Target:  # a fresh copy of the pretrained weights, loaded only when the report needs it
        return Target(config.model.name, _load_base(config, labels).to(model.device).eval(), tokenizer, config.task, labels, batch)

    suite = load_suite(config.eval.retention_suite)
    report = forgetting_report(base, tuned, suite, config.eval.retention_limit, seed=config.training.seed)
    table = render_forgetting(report)
    write_atomic(run.path / "eval" / f"forgetting-{suite.name}.md", table)
    write_json(run.path / "eval" / f"forgetting-{suite.name}.json", report)
    print(table)
    return table


def load_run(run: RunDir):
    """The tuned model of a complete run, with its tokenizer, config and labels.

    A full fine-tune is its own checkpoint; every other method is rebuilt from a
    fresh base (loaded in full precision, also for qlora) and what it saved.
    """
    state = run.require_complete()
    config = run.config()
    if config.mixture is not None and config.mixture.architecture != "text_to_text":
        raise RunError(f"{run.path} is a {config.mixture.architecture} multi-task run: its per-task scores are in eval.json; "
                       "loading it for eval/predict/merge is supported for text_to_text mixtures only")
    labels = state.get("labels")
    method = method_module(config.method.name)
    if getattr(method, "SAVES_WHOLE_MODEL", False):
        base = load_model(config.task, str(run.model_dir), labels)
    else:
        base = _load_base(config, labels)
    model = method.load(base, run.model_dir)
    tokenizer = load_tokenizer(str(run.model_dir))
    model.eval()
    return model, tokenizer, config, labels


def merge_run(run: RunDir, output: Path) -> Path:
    """Write a standalone transformers model (safetensors + tokenizer) with the run's update folded in.

    The folder is written under a temporary name and renamed into place, and an
    existing non-empty folder is never overwritten.
    """
    if output.exists() and any(output.iterdir()):
        raise RunError(f"{output} already exists and is not empty; choose a new --output folder")
    model, tokenizer, config, _ = load_run(run)
    merged = method_module(config.method.name).merge(model)
    staging = output.with_name(f".{output.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return output


def _read_checked(path: str, config: RunConfig, labels, with_target: bool) -> list:
    records = read_file(path)
    records = enforce(check_records(records, config.task, config.data, labels, with_target), path, config.data.skip_invalid)
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def evaluate_run(run: RunDir, data_path: str, output: Path | None = None, samples: int = 1000, seed: int = 0) -> Path:
    """Score the run's tuned model on a labelled file, read with the run's field names, and write the report a
    suite task gets (`data-<file>.json/.md/.outputs.jsonl`, every metric with its 95% interval) to `output`
    (default the run's eval/ folder); returns the JSON path."""
    model, tokenizer, config, labels = load_run(run)
    records = _read_checked(data_path, config, labels, with_target=True)
    name = Path(data_path).name
    results = {name: score_records(model, tokenizer, records, config, labels, name, samples, seed)}
    report = build_report(f"data-{Path(data_path).stem}", str(run.path), results, seed, samples)
    return write_suite_report(output or run.path / "eval", report, results)


def _predictions(model, tokenizer, records, config: RunConfig, labels) -> list[dict]:
    """Per record: the prediction (label or generated text), plus label scores for classifiers."""
    if config.task == "classification":
        return [{"prediction": p["label"], "scores": p["scores"]} for p in classify(model, tokenizer, records, config, labels)]
    return [{"prediction": text} for text in generate(model, tokenizer, records, config)]


def _write_rows(output_path: str, rows: list[dict]) -> None:
    write_atomic(Path(output_path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def predict_run(run: RunDir, input_path: str, output_path: str) -> int:
    """Write one JSON line per input record: the record plus its prediction. Returns the count."""
    if run.config().mixture is not None:
        raise RunError(f"{run.path} is a multi-task run with no single prompt template; score it with "
                       "`tunelab eval RUN --suite ...` (or a suite YAML of the tasks you want)")
    model, tokenizer, config, labels = load_run(run)
    records = _read_checked(input_path, config, labels, with_target=False)
    predictions = _predictions(model, tokenizer, records, config, labels)
    _write_rows(output_path, [{**r.fields, **p} for r, p in zip(records, predictions)])
    return len(records)


def _check_switchable(runs: list[RunDir]) -> tuple[RunConfig, list[str] | None]:
    """The shared config and labels of runs whose PEFT adapters can take turns on one base model."""
    configs = [run.config() for run in runs]
    states = [run.require_complete() for run in runs]
    first, first_labels = configs[0], states[0].get("labels")
    peft_types = set()
    for run, config, state in zip(runs, configs, states):
        adapter_config = run.model_dir / "adapter_config.json"
        if not adapter_config.exists():
            raise MethodError(f"run {run.path} (method {config.method.name}) saved no PEFT adapter; adapter switching "
                              "needs runs of lora, dora, rslora, qlora, ia3, prefix or prompt")
        if (config.model.name, config.task, state.get("labels")) != (first.model.name, first.task, first_labels):
            raise MethodError(f"run {run.path} was tuned from {config.model.name} ({config.task}, labels "
                              f"{state.get('labels')}), run {runs[0].path} from {first.model.name} ({first.task}, labels "
                              f"{first_labels}); adapters can only share the base model, task and labels they were trained with")
        peft_types.add(json.loads(adapter_config.read_text())["peft_type"])
    if len(peft_types) > 1:
        raise MethodError(f"these adapters are of different PEFT types ({', '.join(sorted(peft_types))}); PEFT switches "
                          "between adapters of one type on a model, so predict with each kind separately")
    return first, first_labels


def predict_with_adapters(adapters: dict[str, RunDir], input_path: str, output_path: str) -> int:
    """Predict with several adapter runs over one base model loaded once, switching adapters between passes.

    Each output line is the record plus `predictions`: {adapter name: prediction}.
    """
    names, runs = list(adapters), list(adapters.values())
    config, labels = _check_switchable(runs)
    model = method_module(config.method.name).load(_load_base(config, labels), runs[0].model_dir, adapter_name=names[0])
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(run.model_dir, adapter_name=name)
    model.eval()
    tokenizer = load_tokenizer(str(runs[0].model_dir))
    records = _read_checked(input_path, config, labels, with_target=False)
    by_adapter = {}
    for name in names:
        model.set_adapter(name)
        by_adapter[name] = _predictions(model, tokenizer, records, config, labels)
    rows = [{**record.fields, "predictions": {name: by_adapter[name][i] for name in names}} for i, record in enumerate(records)]
    _write_rows(output_path, rows)
    return len(records)
