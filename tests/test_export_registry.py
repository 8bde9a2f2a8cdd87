"""Export formats are registered like methods: a format defined here, in the test file, becomes a `tunelab export
--format` choice with its help and its option by one `register_export_format` call, and the registration refuses
the mistakes that would otherwise surface as a confusing command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab import export, pipeline
from tunelab.cli import main
from tunelab.config import build_config
from tunelab.export import EXPORT_FORMATS, register_export_format
from tunelab.export.base import ExportError, ExportOption
from tunelab.runs import RunDir

from helpers import cli


class ToyFormat:
    """A format that writes the run's name, shouted or not, into one file of the new folder."""

    NAME = "toy"
    DESCRIPTION = "a text file naming the run (a format defined in a test)"
    OPTIONS = (ExportOption("shout", "write the name in capitals", choices=("yes", "no")),)

    @staticmethod
    def export(run: RunDir, output: Path, task: str | None = None, shout: str = "no") -> Path:
        output.mkdir(parents=True)
        name = run.path.name.upper() if shout == "yes" else run.path.name
        (output / "toy.txt").write_text(f"{name} task={task}\n", encoding="utf-8")
        return output


@pytest.fixture
def toy_registered(monkeypatch):
    """The toy format in a copy of the registry, so no other test sees it."""
    monkeypatch.setattr(export, "EXPORT_FORMATS", dict(EXPORT_FORMATS))
    register_export_format(ToyFormat)
    return ToyFormat


def test_a_format_defined_in_a_test_exports_through_the_command_line(toy_registered, tmp_path, capsys):
    run = tmp_path / "my-run"
    run.mkdir()
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "{gguf,onnx,transformers,toy}" in shown and "toy: a text file naming the run" in shown
    assert "--shout {yes,no}" in shown and "--format toy: write the name in capitals" in shown

    assert main(["export", str(run), "--format", "toy", "--shout", "yes", "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == f"toy export written to {tmp_path / 'out'}"
    assert (tmp_path / "out" / "toy.txt").read_text(encoding="utf-8") == "MY-RUN task=None\n"

    assert main(["export", str(run), "--format", "toy", "--task", "sst2", "--output", str(tmp_path / "quiet")]) == 0
    assert (tmp_path / "quiet" / "toy.txt").read_text(encoding="utf-8") == "my-run task=sst2\n"


def test_an_option_of_another_format_is_refused_with_what_each_format_takes(toy_registered, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "toy", "--quant", "q8_0", "--output", str(tmp_path / "o")]) == 2
    assert "--quant is for --format gguf; --format toy takes --shout" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "gguf", "--shout", "yes", "--output", str(tmp_path / "o")]) == 2
    assert "--shout is for --format toy; --format gguf takes --quant" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _format(**changes) -> type:
    return type("Broken", (ToyFormat,), changes)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_format(NAME="gguf"), "'gguf' is registered twice"),
        (_format(NAME="Toy Format"), "NAME must be a lowercase word"),
        (_format(DESCRIPTION="two\nlines"), "DESCRIPTION must be one line"),
        (_format(OPTIONS=(ExportOption("quant", "clash"),)), "--quant is already --format gguf's"),
        (_format(OPTIONS=(ExportOption("output", "clash"),)), "--output is one of `tunelab export`'s own arguments"),
        (_format(OPTIONS=(ExportOption("loud", "not taken"),)), "declares --loud, which its export does not take"),
        (_format(OPTIONS=["shout"]), "OPTIONS must be a tuple of ExportOption"),
        (_format(export=staticmethod(lambda path, task=None: path)), "export must take (run, output, task=None"),
        (_format(export=None), "has no export(run, output, task=None, **options) function"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_registration_refuses_a_format_that_would_not_work(monkeypatch, broken, message):
    monkeypatch.setattr(export, "EXPORT_FORMATS", dict(EXPORT_FORMATS))
    with pytest.raises(ExportError) as refused:
        register_export_format(broken)
    assert message in str(refused.value)


def test_the_registry_loads_no_model_library():
    """The command line reads the registry on every command, so `tunelab --help` stays instant: the formats import
    torch, onnxruntime and the pipeline only when they export."""
    heavy = "[m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx', 'onnxruntime', 'gguf')]"
    probe = f"import sys, tunelab.cli, tunelab.export; tunelab.cli.build_parser(); print({heavy})"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_transformers_format_writes_the_folder_tunelab_merge_writes(tiny_encoder, sentiment_file, tmp_path):
    run = pipeline.train(
        build_config(
            {
                "name": "tiny-merged",
                "task": "classification",
                "output_dir": str(tmp_path / "runs"),
                "model": {"name": tiny_encoder},
                "data": {"train": str(sentiment_file), "max_length": 32},
                "method": {"name": "lora"},
                "training": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-2, "precision": "fp32"},
                "eval": {"baselines": []},
            }
        )
    )
    assert cli(f"export {run.path} --format transformers --output {tmp_path / 'exported'}") == 0
    assert cli(f"merge {run.path} --output {tmp_path / 'merged'}") == 0
    exported, merged = tmp_path / "exported", tmp_path / "merged"
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in merged.iterdir())
    weights, merged_weights = load_file(exported / "model.safetensors"), load_file(merged / "model.safetensors")
    assert weights.keys() == merged_weights.keys()
    assert all(torch.equal(weights[name], merged_weights[name]) for name in weights)
