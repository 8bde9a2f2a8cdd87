"""ONNX export of a classifier run, and prediction from the exported folder with onnxruntime.

The folder is self-contained, so it ships without the run directory and answers without torch model code:

    model.onnx           the merged classifier; inputs as the tokenizer produces them (input_ids, attention_mask,
                         token_type_ids for BERT-style tokenizers), int64, dynamic batch and sequence axes; output
                         `logits` (batch x labels)
    config.json          the model config, id2label / label2id = the run's labels in head order
    tokenizer files      tokenizer.save_pretrained
    tunelab-export.json  the run it came from, the task spec its records are read with (fields, label set),
                         labels, max_length and batch size; written last, so a folder without it is no export

`tunelab predict FOLDER --engine onnx` reads records, encodes and batches them exactly as `tunelab predict RUN`
does, so its rows are the same (scores within float rounding).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from tunelab.data.encode import encode
from tunelab.data.readers import Record
from tunelab.data.taskset import task_specs
from tunelab.eval.generate import pad_batch
from tunelab.eval.predict import classify_with
from tunelab.eval.runner import input_limit, skip_reason
from tunelab.eval.targets import Target, trained_target
from tunelab.export import ExportError
from tunelab.models.loading import load_tokenizer
from tunelab.pipeline import merged_model
from tunelab.runs import RunDir, staged_folder, write_atomic, write_json
from tunelab.tasks import TaskSpec, read_for_task
from tunelab.train.objectives import objective_of
from tunelab.train.trained import LoadedRun, load_run

MODEL_FILE = "model.onnx"
EXPORT_FILE = "tunelab-export.json"
OPSET = 18
"""The opset torch's dynamo exporter targets natively; onnxruntime 1.18 and later run it."""

_EXAMPLE_TEXTS = ("a short example", "a somewhat longer example sentence for the trace")
"""The traced batch: two rows of several tokens, because torch.export specialises an axis it traces at size 1."""


def _require_classifier(run: RunDir) -> None:
    """Refuse, before any model loads, a run whose model answers by generating: ONNX covers one forward pass."""
    run.require_complete()
    config = run.config()
    objective = objective_of(config)
    if not objective.answers_by_head:
        raise ExportError(
            f"run {run.path} is a {config.task_type} run ({objective.name}); ONNX export covers classifier runs "
            "(a classification head, or multi_head runs with --task). Export a decoder run with "
            f"`tunelab export {run.path} --format gguf`, or write any mergeable run as a transformers folder "
            f"with `tunelab merge {run.path} --output DIR`"
        )


def _classifier_task(loaded: LoadedRun, task: str | None) -> tuple[TaskSpec, Target]:
    """The task the export answers and the run's classifier for it, refused as `tunelab predict` refuses it."""
    spec = task_specs(loaded.config, loaded.labels).pick(task)
    target = trained_target(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, str(loaded.run.path))
    target = target.for_task(spec.name)
    reason = skip_reason(target, spec)
    if reason:
        raise ExportError(f"cannot export task {spec.name}: {reason}")
    return spec, target


def _example_batch(tokenizer, spec: TaskSpec, max_length: int) -> dict[str, torch.Tensor]:
    """A padded batch encoded as prediction encodes records: it fixes the graph's input names and order."""
    records = [Record({field: text for field in spec.input_fields}, "example") for text in _EXAMPLE_TEXTS]
    examples = encode("classification", records, tokenizer, spec.data_config(max_length), with_target=False).examples
    return pad_batch(examples, tokenizer.pad_token_id, left=False, device="cpu")


def _write_onnx(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> None:
    """Trace with the dynamo exporter (torch.export), the one torch maintains; the TorchScript exporter is
    deprecated and was not needed for the encoders tested (BERT-style)."""
    batch_axis, sequence_axis = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():  # every input shares the two axes; torch warns once per extra use of a name
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            model,
            (),
            kwargs=batch,
            input_names=list(batch),
            output_names=["logits"],
            dynamic_shapes={name: {0: batch_axis, 1: sequence_axis} for name in batch},
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(run: RunDir, output: Path, task: str | None = None) -> Path:
    """Write a classifier run (a multi_head run: the head of `task`) as an ONNX folder; returns the folder.

    The model is the run's merged classifier (`pipeline.merged_model`), traced with torch's dynamo exporter and
    checked with onnx.checker. The folder is staged (`runs.staged_folder`): complete or absent, and an
    existing non-empty one is never overwritten.
    """
    _require_classifier(run)
    with staged_folder(output) as staging:
        loaded = load_run(run)
        spec, target = _classifier_task(loaded, task)
        max_length = input_limit(target, spec)
        model = merged_model(loaded, task).cpu().eval()
        model.config.id2label = dict(enumerate(target.labels))
        model.config.label2id = {label: i for i, label in enumerate(target.labels)}
        batch = _example_batch(loaded.tokenizer, spec, max_length)
        _write_onnx(model, batch, staging / MODEL_FILE)
        model.config.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        write_json(
            staging / EXPORT_FILE,
            {
                "run": str(run.path.resolve()),
                "task": spec.name,
                "labels": target.labels,
                "max_length": max_length,
                "batch_size": target.batch_size,
                "inputs": list(batch),
                "opset": OPSET,
                "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
                "task_spec": spec.model_dump(mode="json"),
            },
        )
    return output


@dataclass
class OnnxClassifier:
    """An exported classifier on onnxruntime (CPU), answering records as `eval.predict.classify` does."""

    session: onnxruntime.InferenceSession
    tokenizer: object
    spec: TaskSpec
    labels: list[str]
    max_length: int
    batch_size: int

    @classmethod
    def load(cls, folder: Path, threads: int = 0) -> OnnxClassifier:
        """The export in `folder`; `threads` sets onnxruntime's intra-op threads (0: its default, one per core)."""
        manifest = folder / EXPORT_FILE
        if not manifest.exists():
            hint = (
                f"it is a run directory: export it first with `tunelab export {folder} --format onnx --output DIR`, "
                "then predict from DIR"
                if (folder / "run.json").exists()
                else "give a folder written by `tunelab export RUN --format onnx`"
            )
            raise ExportError(f"{folder} holds no ONNX export ({EXPORT_FILE} is missing); {hint}")
        export = json.loads(manifest.read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        return cls(
            session,
            load_tokenizer(str(folder)),
            TaskSpec.model_validate(export["task_spec"]),
            export["labels"],
            export["max_length"],
            export["batch_size"],
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """The graph's logits for a padded batch (the tokenizer's tensors; inputs the graph lacks are dropped)."""
        names = [graph_input.name for graph_input in self.session.get_inputs()]
        return self.session.run(["logits"], {name: batch[name].numpy() for name in names})[0]

    def classify(self, records: list[Record]) -> list[dict]:
        """For each record: the predicted label and the probability of every label."""
        data = self.spec.data_config(self.max_length)
        return classify_with(
            lambda batch: torch.from_numpy(self.logits(batch)),
            self.tokenizer,
            records,
            data,
            self.batch_size,
            self.labels,
        )


def predict_onnx(folder: Path, input_path: str, output_path: str, task: str | None = None) -> int:
    """Write one JSON line per input record, the record plus its prediction, as `pipeline.predict_run` writes
    them; returns the count. `task`, when given, must be the task the folder was exported for."""
    classifier = OnnxClassifier.load(folder)
    if task is not None and task != classifier.spec.name:
        raise ExportError(
            f"{folder} answers task {classifier.spec.name}, not {task}; export that task with "
            f"`tunelab export RUN --format onnx --task {task} --output DIR`"
        )
    records = read_for_task(input_path, classifier.spec, with_target=False)
    rows = [
        {**record.fields, "prediction": p["label"], "scores": p["scores"]}
        for record, p in zip(records, classifier.classify(records))
    ]
    write_atomic(Path(output_path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(records)
