"""Model references that name nothing loadable are refused in seconds, before anything is created, saying why."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from tunelab import cli
from tunelab.models.reference import _hub_problem, check_reference
from tunelab.models.registry import ModelNotAvailable

ROOT = Path(__file__).resolve().parents[1]
KNOWN = "known-org/known-model"


class FakeHub(BaseHTTPRequestHandler):
    """The hub's model-info endpoint for one known model; every other id is 'Repository not found'.
    `requests` records the model lookups made."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path.startswith("/api/models/"):  # the client also asks other endpoints on its own
            FakeHub.requests.append(self.path)
        known = self.path.split("?")[0] == f"/api/models/{KNOWN}"
        body = json.dumps({"id": KNOWN, "sha": "0" * 40} if known else {"error": "Repository Not Found"}).encode()
        self.send_response(200 if known else 404)
        if not known:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point the hub client at `endpoint`, with an empty hub cache and no remembered lookups."""

    def point(endpoint: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        _hub_problem.cache_clear()

    yield point
    _hub_problem.cache_clear()


@pytest.fixture
def fake_hub(hub_at):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHub.requests = []
    hub_at(f"http://127.0.0.1:{server.server_address[1]}")
    yield FakeHub.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def unreachable_hub(hub_at):
    """A loopback port with nothing listening: every connection is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hub_at(f"http://127.0.0.1:{port}")


def test_a_model_the_hub_has_is_accepted(fake_hub):
    check_reference(KNOWN)
    assert fake_hub == [f"/api/models/{KNOWN}"]


def test_a_model_the_hub_lacks_is_refused_with_the_hubs_answer(fake_hub):
    with pytest.raises(ModelNotAvailable, match="(?s)not a registry name.*not a local folder.*hub has no such model"):
        check_reference("known-org/no-such-model")


def test_a_misspelt_registry_name_gets_a_did_you_mean_when_the_hub_is_unreachable(unreachable_hub):
    with pytest.raises(ModelNotAvailable, match="(?s)did you mean 'minilm-l6'.*hub could not be reached"):
        check_reference("minilm-l12")


def test_offline_mode_is_named(hub_at, monkeypatch):
    hub_at("http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailable, match="HF_HUB_OFFLINE"):
        check_reference("some-org/some-model")


@pytest.mark.parametrize(
    "reference, message",
    [
        ("./runs/missing-run", "nor a Hugging Face hub id"),
        ("a/b/c", "nor a Hugging Face hub id"),
        ("pyproject.toml", "is a file"),
    ],
)
def test_what_cannot_be_a_hub_id_is_refused_without_asking_the_hub(reference, message, fake_hub, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ModelNotAvailable, match=message):
        check_reference(reference)
    assert fake_hub == []


def test_registry_names_and_folders_need_no_hub(fake_hub, tiny_encoder):
    check_reference("minilm-l6")
    check_reference(tiny_encoder)
    assert fake_hub == []


def _refused(capsys, argv: list[str]) -> str:
    """Run the command line in-process: it must return 2 with a one- or two-line message, never raise."""
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error and len(error.strip().splitlines()) <= 2, error
    return error


def test_train_refuses_an_unknown_model_before_a_run_directory_exists(unreachable_hub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    error = _refused(
        capsys,
        ["train", "configs/sentiment-minilm-lora.yaml", "model.name=minilm-l12", f"output_dir={tmp_path / 'runs'}"],
    )
    assert "did you mean 'minilm-l6'" in error
    assert not (tmp_path / "runs").exists()


def test_eval_and_compare_refuse_an_unknown_model(unreachable_hub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "did you mean 'minilm-l6'" in _refused(
        capsys, ["eval", "minilm-l12", "--suite", "glue-mini", "--output", str(tmp_path / "eval")]
    )
    assert "did you mean 'minilm-l6'" in _refused(
        capsys,
        [
            "compare",
            "configs/sentiment-minilm-lora.yaml",
            "model.name=minilm-l12",
            "--methods",
            "lora",
            "--output-dir",
            str(tmp_path / "compare"),
        ],
    )
    assert not list(tmp_path.iterdir())


def test_predict_names_a_run_directory_that_does_not_exist(capsys, tmp_path):
    error = _refused(
        capsys,
        ["predict", str(tmp_path / "runs" / "nope"), "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl")],
    )
    assert "does not exist" in error and not (tmp_path / "o.jsonl").exists()
