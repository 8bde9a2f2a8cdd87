"""The run page's `tunelab forgetting` hint: a command that works for that run (its base and the run filled in,
parsed by tunelab's own parser), or none for a classifier, which forgetting cannot measure."""

from __future__ import annotations

import html
import re
import shlex

import pytest
from fastapi.testclient import TestClient

from tunelab.cli import build_parser
from tunelab.config import build_config
from tunelab.eval.targets import load_target
from tunelab.runs import RunDir
from tunelab.ui.app import create_ui


def _run(tmp_path, task_type: str, model: str, **state) -> str:
    """A run directory under tmp_path/runs as training leaves it (config and state; no weights: the page reads
    neither), and its id on the pages."""
    data = {"train": "train.jsonl"}
    if task_type != "classification":
        data.update(prompt_field="q", response_field="a")
    config = build_config(
        {"name": f"tiny-{task_type}", "task": task_type, "output_dir": "runs", "model": {"name": model}, "data": data}
    )
    run = RunDir.create(config)
    run.update_state(state="complete", **state)
    return run.path.as_posix()


def _hint(tmp_path, run_id: str) -> str | None:
    page = TestClient(create_ui([tmp_path / "runs"])).get(f"/run/{run_id}")
    assert page.status_code == 200
    shown = re.search(r'<code id="forgetting-command">(.*?)</code>', page.text)
    return html.unescape(shown.group(1)) if shown else None


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_a_generating_run_shows_a_forgetting_command_that_works(tmp_path, tiny_decoder):
    run_id = _run(tmp_path, "causal_lm", tiny_decoder)
    command = _hint(tmp_path, run_id)
    argv = shlex.split(command)
    assert argv[0] == "tunelab"
    args = build_parser().parse_args(argv[1:])  # argparse exits on a command it cannot parse
    assert (args.command, args.base, args.tuned) == ("forgetting", tiny_decoder, run_id)
    assert load_target(args.base).generates  # the base answers the suite's tasks
    assert RunDir(args.tuned).require_complete()


def test_a_run_built_on_an_earlier_run_names_that_run_as_its_base(tmp_path, tiny_decoder):
    earlier = str(tmp_path / "runs" / "stage-one")
    run_id = _run(tmp_path, "causal_lm", "runs/stage-one", chain=[{"run": earlier, "name": "stage-one"}])
    args = build_parser().parse_args(shlex.split(_hint(tmp_path, run_id))[1:])
    assert (args.base, args.tuned) == (earlier, run_id)


def test_a_classifier_run_shows_no_forgetting_command(tmp_path, tiny_encoder):
    run_id = _run(tmp_path, "classification", tiny_encoder)
    assert _hint(tmp_path, run_id) is None
    page = TestClient(create_ui([tmp_path / "runs"])).get(f"/run/{run_id}").text
    assert "tunelab forgetting" not in page and "not classifiers" in page
