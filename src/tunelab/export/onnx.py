"""ONNX export of a classifier run; `onnx_predict` answers from the exported folder with onnxruntime.

The folder is self-contained, so it ships without the run directory and answers without torch model code:

    model.onnx           the merged classifier; inputs as the tokenizer produces them (input_ids, attention_mask,
                         token_type_ids for BERT-style tokenizers), int64, dynamic batch and sequence axes; output
                         `logits` (batch x labels)
    config.json          the model config, id2label / label2id = the run's labels in head order
    tokenizer files      tokenizer.save_pretrained
    tunelab-export.json  the run it came from, the task spec its records are read with (fields, label set),
                         labels, max_length and batch size; written last, so a folder without it is no export
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.export.base import ExportError
from tunelab.records import Record
from tunelab.runs import RunDir, staged_folder, write_json

if TYPE_CHECKING:
    import torch

    from tunelab.eval.targets import Target
    from tunelab.tasks import TaskSpec
    from tunelab.train.trained import LoadedRun

NAME = "onnx"
DESCRIPTION = "ONNX for onnxruntime, and `tunelab predict DIR --engine onnx` (classifier runs)"
OPTIONS = ()

MODEL_FILE = "model.onnx"
EXPORT_FILE = "tunelab-export.json"
OPSET = 18
"""The opset torch's dynamo exporter targets natively; onnxruntime 1.18 and later run it."""

_EXAMPLE_TEXTS = ("a short example", "a somewhat longer example sentence for the trace")
"""The traced batch: two rows of several tokens, because torch.export specialises an axis it traces at size 1."""


def _require_classifier(run: RunDir) -> None:
    """Refuse, before any model loads, a run whose model answers by generating: ONNX covers one forward pass."""
    from tunelab.train.objectives import objective_of

    run.require_complete()
    config = run.config()
    objective = objective_of(config)
    if not objective.answers_by_head:
        raise ExportError(
            f"run {run.path} is a {objective.name} run (data.kind {config.data.kind}); ONNX export covers classifier runs "
            "(a classification head, or multi_head runs with --task). Export a decoder run with "
            f"`tunelab export {run.path} --format gguf`, or write any mergeable run as a transformers folder "
            f"with `tunelab merge {run.path} --output DIR`"
        )


def _classifier_task(loaded: LoadedRun, task: str | None) -> tuple[TaskSpec, Target]:
    """The task the export answers and the run's classifier for it, refused as `tunelab predict` refuses it."""
    from tunelab.data.taskset import task_specs
    from tunelab.eval.runner import skip_reason
    from tunelab.eval.targets import trained_target

    spec = task_specs(loaded.config, loaded.labels).pick(task)
    target = trained_target(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, str(loaded.run.path))
    target = target.for_task(spec.name)
    reason = skip_reason(target, spec)
    if reason:
        raise ExportError(f"cannot export task {spec.name}: {reason}")
    return spec, target


def _example_batch(tokenizer, spec: TaskSpec, max_length: int) -> dict[str, torch.Tensor]:
    """A padded batch encoded as prediction encodes records: it fixes the graph's input names and order."""
    from tunelab.data.encode import encode
    from tunelab.eval.generate import pad_batch

    records = [Record({field: text for field in spec.input_fields}, "example") for text in _EXAMPLE_TEXTS]
    examples = encode("classification", records, tokenizer, spec.data_config(max_length), with_target=False).examples
    return pad_batch(examples, tokenizer.pad_token_id, left=False, device="cpu")


def _write_onnx(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> None:
    """Trace with the dynamo exporter (torch.export), the one torch maintains; the TorchScript exporter is
    deprecated and was not needed for the encoders tested (BERT-style)."""
    import onnx
    import torch

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


def export(run: RunDir, output: Path, task: str | None = None) -> Path:
    """Write a classifier run (a multi_head run: the head of `task`) as an ONNX folder; returns the folder.

    The model is the run's merged classifier (`run_commands.merged_model`), traced with torch's dynamo exporter and
    checked with onnx.checker. The folder is staged (`runs.staged_folder`): complete or absent, and an
    existing non-empty one is never overwritten.
    """
    import torch

    from tunelab.eval.runner import input_limit
    from tunelab.run_commands import merged_model
    from tunelab.train.trained import load_run

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
