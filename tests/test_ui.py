"""The web app's pages and JSON, through FastAPI's test client on a tiny run; the browser walk is in
test_ui_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tunelab.eval import human
from tunelab.eval.human import SystemOutputs
from tunelab.runs import RunDir
from tunelab.ui.app import create_ui, run_ui
from tunelab.ui.index import UiError, read_metrics, scan

from helpers import SHARED_DATA, cli, session_home
from serving import endpoint_outcomes, expected_outcomes, tiny_targets


@pytest.fixture
def tiny_run(tiny_encoder, sentiment_file, tmp_path, monkeypatch) -> RunDir:
    """A tiny classifier trained under tmp_path/runs, with the working directory at tmp_path (as a user runs it)."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "task": "classification",
                "model": {"name": tiny_encoder},
                "data": {"train": str(sentiment_file), "max_length": 32},
                "training": {"max_steps": 6, "batch_size": 8, "logging_steps": 2, "precision": "fp32"},
            }
        )
    )
    assert cli(f"train {config}") == 0
    (run,) = (tmp_path / "runs").iterdir()
    return RunDir(run)


def test_the_index_finds_runs_but_not_what_is_inside_them(tiny_run, tmp_path):
    found = scan([tmp_path / "runs", tmp_path / "missing"])
    assert list(found.runs) == [f"runs/{tiny_run.path.name}"]  # not its checkpoints or model folder
    summary = found.runs[f"runs/{tiny_run.path.name}"]
    evaluation = json.loads(tiny_run.eval_path.read_text())
    (task,) = evaluation["tasks"]
    metric = evaluation["tasks"][task]["metric"]
    assert (summary.state, summary.method, summary.tasks) == ("complete", "lora", [task])
    assert summary.scores[0].tuned == evaluation["tasks"][task]["tuned"]["metrics"][metric]["value"]
    assert summary.scores[0].base == evaluation["tasks"][task]["base"]["metrics"][metric]["value"]
    assert summary.trainable_percent == json.loads(tiny_run.state_path.read_text())["trainable"]["trainable_percent"]
    with pytest.raises(UiError, match="no run 'runs/other'"):
        found.run("runs/other")


def test_pages_show_the_run_and_its_metrics(tiny_run, tmp_path):
    client = TestClient(create_ui([tmp_path / "runs"]))
    run_id = f"runs/{tiny_run.path.name}"
    runs = client.get("/runs")
    assert runs.status_code == 200 and f'href="/run/{run_id}"' in runs.text
    page = client.get(f"/run/{run_id}")
    assert page.status_code == 200
    assert "<table>" in page.text and "accuracy" in page.text  # the evaluation table, as HTML
    assert "Mixture plan" in page.text and "per epoch" in page.text
    progress = client.get(f"/api/run/{run_id}").json()
    logged = [json.loads(line) for line in tiny_run.metrics_path.read_text().splitlines()]
    assert progress["state"] == "complete" and progress["finished"] and progress["metrics"] == logged
    assert [e["step"] for e in progress["metrics"] if "loss" in e] == [1, 2, 4, 6]

    for missing in ("/run/runs/nope", "/api/run/etc/passwd", "/compare/x", "/compare-plot/runs"):
        answer = client.get(missing)
        assert answer.status_code == 404 and "under the app" in answer.text, missing
    outside = client.get("/run/../../etc/passwd")
    assert outside.status_code == 404 and "root:" not in outside.text


def test_a_half_written_last_metrics_line_waits_for_the_next_read(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    assert read_metrics(tmp_path / "absent") == []


def test_a_token_is_asked_for_once_then_kept_in_a_cookie(tmp_path):
    client = TestClient(create_ui([tmp_path], token="s3cret"), follow_redirects=False)
    assert client.get("/runs").status_code == 401
    assert client.get("/serve/v1/models").status_code == 401  # the playground's API too
    assert client.get("/runs?token=wrong").status_code == 401
    opened = client.get("/runs?token=s3cret")
    assert opened.status_code == 303 and opened.headers["location"].endswith("/runs")
    assert "httponly" in opened.headers["set-cookie"].lower()
    assert client.get("/runs").status_code == 200  # the cookie
    script = TestClient(create_ui([tmp_path], token="s3cret"))
    assert script.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(UiError, match="--host 0.0.0.0 would let other machines in: give --token"):
        run_ui([], "0.0.0.0", 7860, None)


def test_the_playground_refuses_what_it_cannot_load(tiny_run, tmp_path):
    client = TestClient(create_ui([tmp_path / "runs"]))
    assert client.post("/api/playground/load", json={"runs": []}).json() == {"error": "pick at least one run"}
    unknown = client.post("/api/playground/load", json={"runs": ["runs/nope"]})
    assert unknown.status_code == 400 and "no run 'runs/nope'" in unknown.json()["error"]
    RunDir(tiny_run.path).update_state(state="running")
    running = client.post("/api/playground/load", json={"runs": [f"runs/{tiny_run.path.name}"]})
    assert running.status_code == 400 and "only a complete run can answer" in running.json()["error"]


def _sheet(tmp_path, name: str) -> None:
    human.write_sheet(
        tmp_path / f"{name}.csv",
        ["first prompt", "second prompt"],
        SystemOutputs("sys-a", ["a one", "a two"]),
        SystemOutputs("sys-b", ["b one", "b two"]),
    )


def test_rating_in_the_browser_forms_stores_each_pair_and_refuses_a_partial_one(tmp_path):
    _sheet(tmp_path, "web-form")
    client = TestClient(create_ui([tmp_path]), follow_redirects=False)
    assert "web-form" in client.get("/rate").text
    page = client.get("/rate/web-form?rater=ann").text
    assert "Pair 1 of 2" in page and "sys-a" not in page and "sys-b" not in page  # blind
    items = list(dict.fromkeys(re.findall(r'name="([0-9a-z]+)\.fluency"', page)))
    assert len(items) == 2

    partial = {"rater": "ann", f"{items[0]}.fluency": "4", f"{items[0]}.coherence": "4"}
    refused = client.post("/rate/web-form", data=partial)
    assert refused.status_code == 400 and "answer 1: relevance needs a whole score from 1 to 5" in refused.text
    assert [r for r in human.sheet_progress() if r["name"] == "web-form"][0]["rated"] == {}

    scores = {f"{item}.{c}": "5" if i == 0 else "2" for i, item in enumerate(items) for c in human.CRITERIA}
    saved = client.post("/rate/web-form", data={"rater": "ann", **scores})
    assert saved.status_code == 303 and saved.headers["location"] == "/rate/web-form?rater=ann"
    assert "Pair 2 of 2" in client.get(saved.headers["location"]).text
    report = client.get("/rate/web-form/report").text
    assert "sys-a" in report and "alpha" in report.lower()
    assert client.get("/rate/nope?rater=ann").status_code == 400


PLAYGROUND = {
    "full run": {"base: {decoder}": "generate", "tuned: {run}": "generate"},
    "lora run": {"base: {decoder}": "generate", "tuned: {run}": "generate"},
    "classifier full": {"tuned: {run}": "classify"},
    "classifier head": {"tuned: {run}": "classify"},
    "classifier lora": {"tuned: {run}": "classify"},  # no base: with the adapter off, its head is untrained
    "multi-head mixture": {"tuned: {run}:sst2": "classify", "tuned: {run}:rte": "classify"},
    "task-adapters mixture": {
        "base: {decoder}": "generate",
        "tuned: {run}:sst2": "generate",
        "tuned: {run}:rte": "generate",
    },
}
"""The playground's columns for a run of each kind: {label: 'generate' or 'classify'}. A generator's base column is
the model folder it was tuned from (a registry model answers through the same code)."""


@pytest.fixture(scope="module")
def kinds(tiny_encoder, tiny_decoder, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A run of every kind, under FOLDER/runs: (FOLDER, {kind: run directory})."""
    folder = tmp_path_factory.mktemp("playground-kinds")
    with pytest.MonkeyPatch.context() as patch:  # conftest's per-test TUNELAB_HOME is not set up at module scope
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return folder, tiny_targets(folder, tiny_encoder, tiny_decoder)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="the tiny mixtures read sst2 and rte from ../shared/data")
@pytest.mark.parametrize("kind", list(PLAYGROUND))
def test_the_playground_answers_every_run_kind_and_its_base_on_their_endpoints(kind, kinds, tiny_decoder, monkeypatch):
    folder, targets = kinds
    monkeypatch.chdir(folder)  # the app names a run by its path from here, as it does for a user
    run = f"runs/{Path(targets[kind]).name}"
    client = TestClient(create_ui([folder / "runs"]))
    loaded = client.post("/api/playground/load", json={"runs": [run]})
    assert loaded.status_code == 200, loaded.json()
    columns = loaded.json()["models"]
    expected = {label.format(decoder=tiny_decoder, run=run): k for label, k in PLAYGROUND[kind].items()}
    assert {column["label"]: column["kind"] for column in columns} == expected

    def ask(endpoint: str, body: dict) -> tuple[int, dict]:
        answer = client.post(f"/serve{endpoint}", json=body)
        return answer.status_code, answer.json()

    models = {column["id"]: column["kind"] for column in columns}
    assert endpoint_outcomes(ask, models) == expected_outcomes(models)
