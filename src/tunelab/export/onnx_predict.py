"""Prediction from an ONNX export folder (`onnx`) with onnxruntime: `tunelab predict FOLDER --engine onnx` reads
records, encodes and batches them exactly as `tunelab predict RUN` does, so its rows are the same (scores within
float rounding), without torch model code or the run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from tunelab.data.task_records import read_for_task
from tunelab.eval.predict import classify_with
from tunelab.export.base import ExportError
from tunelab.export.onnx import EXPORT_FILE, MODEL_FILE
from tunelab.models.loading import load_tokenizer
from tunelab.records import Record
from tunelab.runs import write_atomic
from tunelab.tasks import TaskSpec


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
    """Write one JSON line per input record, the record plus its prediction, as `run_commands.predict_run` writes
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
