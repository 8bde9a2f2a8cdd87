"""The README's first serving example, run as written: `tunelab serve smollm2-135m-instruct --api-key KEY`, then
its curl chat completion, on a free loopback port instead of the default 8000. The same server is the serving
matrix's registry-model row (test_serve_matrix.py has the other kinds). The README's examples over runs are run
in test_serve_real.py, beside the runs they need."""

from __future__ import annotations

import shlex
import shutil

import pytest

from serving import call, endpoint_outcomes, expected_outcomes, readme_curl, readme_serving_blocks, running_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the README's example calls curl, which is not installed"),
]


def test_the_readmes_registry_model_example_answers_as_written():
    serve, ask = readme_serving_blocks()[0].strip().splitlines()
    arguments = shlex.split(serve)
    assert arguments[:3] == ["tunelab", "serve", "smollm2-135m-instruct"] and "--port" not in arguments
    with running_server(arguments[2:]) as url:  # the README's arguments, then --port
        reply = readme_curl(ask, url)
        assert "choices" in reply and "Paris" in reply["choices"][0]["message"]["content"], reply

        key = {"Authorization": f"Bearer {arguments[arguments.index('--api-key') + 1]}"}
        models = {"smollm2-135m-instruct": "generate"}
        outcomes = endpoint_outcomes(lambda endpoint, body: call(url, endpoint, body, key)[:2], models)
        assert outcomes == expected_outcomes(models)
