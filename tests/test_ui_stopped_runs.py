"""The web app tells a run still training from one whose process was killed (kill -9, a lost machine), by the
host and process id run.json records: a killed run no longer shows 'running' forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunelab.ui.app import create_ui
from tunelab.ui.index import scan


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_run(root: Path, name: str, host: str, pid: int) -> str:
    """A run directory as a training process leaves it while it trains; returns its id in the app."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    state = {"state": "running", "started": "2026-12-07T10:00:00", "method": "lora", "host": host, "pid": pid}
    (folder / "run.json").write_text(json.dumps(state))
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    return f"runs/{name}"


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return TestClient(create_ui([tmp_path / "runs"]))


def test_a_run_whose_process_is_gone_shows_stopped_with_the_resume_command(client, tmp_path):
    run_id = _running_run(tmp_path, "killed", socket.gethostname(), _dead_pid())
    summary = scan([tmp_path / "runs"]).run(run_id)
    assert (summary.status, summary.finished_state) == ("stopped (killed?)", True)

    page = client.get(f"/run/{run_id}").text
    assert 'id="run-state">stopped (killed?)</span>' in page and 'id="run-stopped"' in page
    assert f"<code>tunelab train --resume {run_id}</code>" in page
    assert "stopped (killed?)" in client.get("/runs").text
    progress = client.get(f"/api/run/{run_id}").json()
    assert progress["status"] == "stopped (killed?)" and progress["state_class"] == "stopped"
    assert progress["finished"]  # the page stops polling a run that will not write again


def test_a_run_whose_process_lives_shows_running(client, tmp_path):
    run_id = _running_run(tmp_path, "alive", socket.gethostname(), os.getpid())
    page = client.get(f"/run/{run_id}").text
    assert 'id="run-state">running</span>' in page and f"training as process {os.getpid()}" in page
    assert "--resume" not in page
    assert client.get(f"/api/run/{run_id}").json()["finished"] is False


def test_a_run_on_another_machine_is_not_guessed_about(client, tmp_path):
    run_id = _running_run(tmp_path, "remote", "gpu-node-7", _dead_pid())
    page = client.get(f"/run/{run_id}").text
    assert 'id="run-state">running</span>' in page and "stopped" not in page
    assert "training on gpu-node-7" in page and "cannot tell whether that process is still alive" in page
