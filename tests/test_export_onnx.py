"""`tunelab export RUN --format onnx` and `tunelab predict FOLDER --engine onnx`: onnxruntime gives the run's logits
and `tunelab predict`'s rows, for a real minilm-l6 LoRA run on SST-2 and tiny classifier and multi-head runs;
what cannot be exported is refused with what to use instead, and no failed export looks complete."""

from __future__ import annotations

import json
import os
import random
import stat

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from tunelab import pipeline, run_commands
from tunelab.config import build_config, load_config
from tunelab.data.task_records import load_records
from tunelab.export.base import ExportError
from tunelab.export.onnx import EXPORT_FILE, MODEL_FILE
from tunelab.export.onnx import export as export_onnx
from tunelab.export.onnx_predict import OnnxClassifier, predict_onnx
from tunelab.runs import RunDir, RunError
from tunelab.tasks import TaskError, load_task
from tunelab.train.trained import load_run

from helpers import NEGATIVE, NOUNS, POSITIVE, SHARED_DATA, cli, session_home, write_jsonl
from serving import CONFIGS

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """conftest's per-test TUNELAB_HOME is not set up yet at module scope: the module's runs share it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        yield


def _sentiment_rows(count: int) -> list[dict]:
    rng = random.Random(0)
    return [
        {
            "text": f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}",
            "label": "positive" if i % 2 else "negative",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_classifier(home, tiny_encoder, tmp_path_factory) -> RunDir:
    """A LoRA classifier on the tiny BERT, trained for 4 steps."""
    folder = tmp_path_factory.mktemp("onnx-tiny")
    return pipeline.train(
        build_config(
            {
                "name": "tiny-classifier",
                "output_dir": str(folder / "runs"),
                "task": "classification",
                "model": {"name": tiny_encoder},
                "method": {"name": "lora"},
                "data": {"train": str(write_jsonl(folder / "sentiment.jsonl", _sentiment_rows(40))), "max_length": 32},
                "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 3e-3, "precision": "fp32"},
                "eval": {"baselines": []},
            }
        )
    )


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_rows(onnx_rows: list[dict], torch_rows: list[dict]) -> None:
    """Same records, keys and labels; every score within TOLERANCE."""
    assert len(onnx_rows) == len(torch_rows) > 0
    for ours, theirs in zip(onnx_rows, torch_rows):
        assert ours.keys() == theirs.keys()
        assert {k: v for k, v in ours.items() if k != "scores"} == {k: v for k, v in theirs.items() if k != "scores"}
        assert ours["scores"].keys() == theirs["scores"].keys()
        assert all(abs(ours["scores"][label] - theirs["scores"][label]) < TOLERANCE for label in theirs["scores"])


def test_a_non_empty_output_folder_is_refused_and_left_alone(tiny_classifier, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty; choose a new --output"):
        export_onnx(tiny_classifier, output)
    assert [p.name for p in output.iterdir()] == ["notes.txt"]


def test_an_interrupted_export_leaves_nothing_that_looks_complete(tiny_classifier, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    output = tmp_path / "export"
    monkeypatch.setattr(onnx.checker, "check_model", interrupted)  # model.onnx is written by then
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_classifier, output)
    assert not output.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="holds no ONNX export"):
        OnnxClassifier.load(output)
    monkeypatch.undo()
    assert export_onnx(tiny_classifier, output) == output
    assert {MODEL_FILE, EXPORT_FILE, "config.json", "tokenizer.json"} <= {p.name for p in output.iterdir()}


def test_tiny_classifier_export_predicts_the_rows_of_predict(tiny_classifier, tmp_path):
    output = export_onnx(tiny_classifier, tmp_path / "export")
    rows = [{"text": "the film was great", "id": 1}, {"text": "the cast was " + "very " * 40 + "dull", "id": 2}]
    inputs = write_jsonl(tmp_path / "inputs.jsonl", rows)
    run_commands.predict_run(tiny_classifier, str(inputs), str(tmp_path / "torch.jsonl"))
    assert cli(f"predict {output} --engine onnx --input {inputs} --output {tmp_path / 'onnx.jsonl'}") == 0
    _assert_same_rows(_rows(tmp_path / "onnx.jsonl"), _rows(tmp_path / "torch.jsonl"))
    assert json.loads((output / EXPORT_FILE).read_text())["max_length"] == 32  # the long row is cut as in training


def test_every_file_of_the_export_and_the_run_has_the_mode_the_umask_gives(tiny_classifier, tmp_path):
    """tunelab-export.json and run.json were 0600 (written through a temporary file) beside 0644 neighbours."""
    umask = os.umask(0)
    os.umask(umask)
    output = export_onnx(tiny_classifier, tmp_path / "export")
    files = [*output.iterdir(), tiny_classifier.path / "run.json"]
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: 0o666 & ~umask for path in files
    }


def test_predict_engine_onnx_on_a_run_directory_says_to_export_first(tiny_classifier, tmp_path, capsys):
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"text": "the film was great"}])
    assert cli(f"predict {tiny_classifier.path} --engine onnx --input {inputs} --output {tmp_path / 'out'}") == 2
    assert f"export it first with `tunelab export {tiny_classifier.path} --format onnx" in capsys.readouterr().err


def test_a_decoder_run_is_refused_before_its_model_loads(tiny_decoder, tmp_path):
    """A complete-looking decoder run with no weights: the refusal must come from its config alone."""
    config = build_config(
        {
            "name": "decoder",
            "output_dir": str(tmp_path / "runs"),
            "task": "causal_lm",
            "model": {"name": tiny_decoder},
            "method": {"name": "lora"},
            "data": {"train": "copy.jsonl", "prompt_template": "{question}", "response_field": "answer"},
        }
    )
    run = RunDir.create(config)
    run.update_state(state="complete")
    with pytest.raises(ExportError, match=r"text_to_text run \(data.kind generation\).*--format gguf"):
        export_onnx(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@needs_shared_data
def test_a_multi_head_run_exports_one_tasks_head(multi_head_run, tmp_path):
    """RTE reads a text pair (token_type_ids matter) and its premises run past the tiny model's 128 positions."""
    run = multi_head_run
    with pytest.raises(TaskError, match="--task"):
        export_onnx(run, tmp_path / "no-task")
    output = export_onnx(run, tmp_path / "rte", "rte")
    pairs = [{k: r.fields[k] for k in ("sentence1", "sentence2")} for r in load_records(load_task("rte"), 16, seed=0)]
    tokenizer = OnnxClassifier.load(output).tokenizer
    assert max(len(tokenizer(p["sentence1"], p["sentence2"])["input_ids"]) for p in pairs) > 128
    inputs = write_jsonl(tmp_path / "rte.jsonl", pairs)
    run_commands.predict_run(run, str(inputs), str(tmp_path / "torch.jsonl"), "rte")
    predict_onnx(output, str(inputs), str(tmp_path / "onnx.jsonl"), "rte")
    _assert_same_rows(_rows(tmp_path / "onnx.jsonl"), _rows(tmp_path / "torch.jsonl"))
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert "token_type_ids" in json.loads((output / EXPORT_FILE).read_text())["inputs"]
    with pytest.raises(ExportError, match="answers task rte, not sst2"):
        predict_onnx(output, str(inputs), str(tmp_path / "sst2.jsonl"), "sst2")


@pytest.fixture(scope="module")
def sentiment(home, tmp_path_factory) -> RunDir:
    """minilm-l6 + LoRA on 64 SST-2 sentences, 4 steps; inputs cut at 32 tokens, so long sentences are truncated."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} (the shared datasets) is not beside the checkout")
    sst2 = SHARED_DATA / "sst2"
    overrides = [
        "name=sentiment",
        f"output_dir={tmp_path_factory.mktemp('onnx-minilm')}",
        f"data.train={sst2 / 'train.jsonl'}",
        f"data.validation={sst2 / 'validation.jsonl'}",
        f"data.test={sst2 / 'test.jsonl'}",
        "data.max_train_examples=64",
        "data.max_eval_examples=16",
        "data.max_length=32",
        "training.max_steps=4",
        "eval.baselines=[]",
    ]
    return pipeline.train(load_config(CONFIGS / "sentiment-minilm-lora.yaml", overrides))


@pytest.fixture(scope="module")
def sentiment_export(sentiment, tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx-export") / "sentiment-onnx"
    assert cli(f"export {sentiment.path} --format onnx --output {output}") == 0
    return output


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """16 SST-2 test sentences from the shortest to near the longest (a few beyond 32 tokens)."""
    records = load_records(load_task("sst2"), seed=0)
    texts = sorted((str(r.fields["text"]) for r in records), key=len)
    return texts[:: len(texts) // 15][:16]


@pytest.mark.integration
def test_onnxruntime_gives_the_runs_logits_on_one_padded_batch(sentiment, sentiment_export, sentences):
    loaded = load_run(sentiment)  # the run as tunelab predicts with it: base + unmerged LoRA
    batch = loaded.tokenizer(sentences, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 5 and batch["input_ids"].shape[1] == 32
    with torch.inference_mode():
        expected = loaded.model(**batch).logits.numpy()
    session = onnxruntime.InferenceSession(str(sentiment_export / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [graph_input.name for graph_input in session.get_inputs()]
    assert set(names) == set(batch)
    logits = session.run(["logits"], {name: batch[name].numpy() for name in names})[0]
    assert logits.shape == expected.shape == (16, 2)
    assert np.abs(logits - expected).max() < TOLERANCE
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.integration
def test_the_export_folder_describes_itself(sentiment, sentiment_export):
    model = onnx.load(str(sentiment_export / MODEL_FILE))
    onnx.checker.check_model(model)
    axes = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert axes == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}
    labels = sentiment.state()["labels"]
    assert json.loads((sentiment_export / "config.json").read_text())["label2id"] == {
        label: i for i, label in enumerate(labels)
    }
    export = json.loads((sentiment_export / EXPORT_FILE).read_text())
    assert export["labels"] == labels and export["max_length"] == 32 and export["run"] == str(sentiment.path.resolve())
    assert export["task_spec"]["input_fields"] == ["text"]


@pytest.mark.integration
def test_predict_engine_onnx_writes_the_rows_of_predict(sentiment, sentiment_export, sentences, tmp_path):
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"text": text, "n": i} for i, text in enumerate(sentences)])
    assert cli(f"predict {sentiment.path} --input {inputs} --output {tmp_path / 'torch.jsonl'}") == 0
    command = f"predict {sentiment_export} --engine onnx --input {inputs} --output {tmp_path / 'onnx.jsonl'}"
    assert cli(command) == 0
    _assert_same_rows(_rows(tmp_path / "onnx.jsonl"), _rows(tmp_path / "torch.jsonl"))
