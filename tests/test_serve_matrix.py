"""`tunelab serve TARGET` for every kind of TARGET, a real server started once per kind: each model id it lists
answers on the endpoints of its kind (a 200 with a non-empty answer) and gets OpenAI's 400 on the others.

Every kind but the registry model is built on conftest's tiny models, where a real model would add only minutes;
the registry kind is the README's own example on smollm2-135m-instruct (test_serve_readme.py). Serving only
adapter runs once hid that every other kind answered 500 (issue 29).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.serve.catalog import Served

from helpers import SHARED_DATA, session_home
from serving import call, endpoint_outcomes, expected_outcomes, running_server, tiny_targets

pytestmark = [
    pytest.mark.integration,  # a server process per kind
    pytest.mark.skipif(not SHARED_DATA.exists(), reason="the tiny mixtures read sst2 and rte from ../shared/data"),
]
KEY = {"Authorization": "Bearer k"}

SERVES = {
    "model folder": {"{target}": "generate"},
    "full run": {"{name}": "generate"},
    "lora run": {"{name}": "generate", "{decoder}": "generate"},  # and its base, answering with the adapter off
    "classifier full": {"{name}": "classify"},
    "classifier head": {"{name}": "classify"},
    "classifier lora": {"{name}": "classify"},  # not its base: with the adapter off, its head is untrained (issue 29)
    "multi-head mixture": {"{name}:sst2": "classify", "{name}:rte": "classify"},
    "task-adapters mixture": {"{name}:sst2": "generate", "{name}:rte": "generate"},
    "merged model": {"{target}": "generate"},
}
"""What `tunelab serve TARGET` lists for each kind of TARGET: {model id: 'generate' or 'classify'}."""


@pytest.fixture(scope="module")
def targets(tiny_encoder, tiny_decoder, tmp_path_factory) -> dict[str, str]:
    with pytest.MonkeyPatch.context() as patch:  # conftest's per-test TUNELAB_HOME is not set up at module scope
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return tiny_targets(tmp_path_factory.mktemp("serve-matrix"), tiny_encoder, tiny_decoder)


def served_ids(kind: str, target: str, decoder: str) -> dict[str, str]:
    name = Path(target).name
    return {i.format(target=target, name=name, decoder=decoder): k for i, k in SERVES[kind].items()}


@pytest.mark.parametrize("kind", list(SERVES))
def test_every_kind_of_target_answers_on_its_endpoints_and_refuses_the_others(kind, targets, tiny_decoder):
    models = served_ids(kind, targets[kind], tiny_decoder)
    with running_server([targets[kind]], "--api-key", "k", startup_seconds=120) as url:
        status, listed, _ = call(url, "/v1/models", headers=KEY)
        assert status == 200 and {m["id"]: m["kind"] for m in listed["data"]} == models

        def ask(endpoint: str, body: dict) -> tuple[int, dict]:
            return call(url, endpoint, body, KEY)[:2]

        assert endpoint_outcomes(ask, models) == expected_outcomes(models)


def test_a_context_given_for_a_factory_is_refused_when_the_catalog_loads():
    """`answering` is called once per batch; a context in its place failed only on the first request, as a 500."""
    from contextlib import nullcontext

    with pytest.raises(TypeError, match="model 'm': answering must be a function returning a context"):
        Served("m", "generate", True, nullcontext(None), tokenizer=None)
