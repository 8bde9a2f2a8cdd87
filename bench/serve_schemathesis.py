"""Schemathesis against a real `tunelab serve` (issue 33, item 5): the larger run of what the tests do small.

A server on 127.0.0.1 with an API key holds two short smollm2 LoRA runs of one base (so the shared base is served
too) and a minilm SST-2 LoRA classifier. For each operation in its `/openapi.json` and each generation mode
(positive: valid requests; negative: invalid ones), Hypothesis draws --examples requests, half of them naming a
served model so that fuzzing reaches the models and not only the 404 of an unknown name. Every answer is checked
as the tests check it (tests/serving.py `call_and_check`): status, content type, headers and body as the schema
publishes, no 5xx, an invalid request refused, one without the key a 401.

Prints, per endpoint and mode, the statuses seen and the failed checks; exits 1 if any check failed.

    python bench/serve_schemathesis.py                  # 300 examples per endpoint and mode
    python bench/serve_schemathesis.py --examples 20    # smoke
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))
from serving import (  # noqa: E402  (the tests', shared)
    call_and_check,
    fuzz_settings,
    running_server,
    schema_cases,
    served_schema,
    short_lora_run,
    short_sentiment_run,
)

KEY = "bench-secret"
SERVED = {"/v1/chat/completions": "a", "/v1/completions": "a", "/v1/score": "b", "/v1/classify": "sentiment"}
"""The served model a generated request names (for half of them) on each endpoint."""

LIMITS = ["--max-body-bytes", "4096", "--max-prompt-tokens", "64", "--max-tokens-cap", "4"]
"""The tests' limits: small bodies, prompts and answers keep each request quick, and the 413 and the prompt limit's
400 are reached too."""


def fuzz(operation, mode, examples: int) -> tuple[collections.Counter, int, dict[str, str]]:
    """`examples` generated requests to one operation in one mode: the statuses seen, how many requests named a
    served model, and each distinct failed
    check's title with the first report that showed it (the request as a curl command included). An operation
    that takes nothing has no invalid request: its negative mode sends none."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    statuses: collections.Counter = collections.Counter()
    named = 0
    failures: dict[str, str] = {}

    @given(case=schema_cases(operation, mode, SERVED))
    @fuzz_settings(max_examples=examples)
    def conforms(case):
        nonlocal named
        named += isinstance(case.body, dict) and case.body.get("model") == SERVED.get(case.path)
        response, failed = call_and_check(case, {"Authorization": f"Bearer {KEY}"})
        statuses[response.status_code] += 1
        for failure in failed.exceptions if failed else ():
            failures.setdefault(failure.title, failed.message)

    try:
        conforms()
    except Unsatisfiable:  # nothing to generate: an operation without parameters or body has no invalid request
        pass
    return statuses, named, failures


def targets(folder: Path, runs: list[str] | None) -> list[str]:
    """The server's targets: the given runs as a, b (and the classifier), or two short LoRA runs and a short
    classifier trained here."""
    if runs:
        return [f"{name}={run}" for name, run in zip(("a", "b", "sentiment"), runs, strict=False)]
    return [
        f"a={short_lora_run(folder, DATA / 'dialogsum', 1, 'fuzz-a').path}",
        f"b={short_lora_run(folder, DATA / 'dialogsum', 2, 'fuzz-b').path}",
        f"sentiment={short_sentiment_run(folder, DATA / 'sst2').path}",
    ]


def main() -> int:
    from schemathesis import GenerationMode

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300, help="generated requests per endpoint and mode")
    parser.add_argument(
        "--run",
        action="append",
        help="serve this run instead of training short ones: up to three, named a, b (generators of one base) and "
        "sentiment (a classifier), in that order",
    )
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="the server's --threads (default: all cores)"
    )
    args = parser.parse_args()
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    rows, failed = [], {}
    with tempfile.TemporaryDirectory(prefix="tunelab-schemathesis-") as folder:
        served = targets(Path(folder), args.run)
        options = ["--api-key", KEY, "--threads", str(args.threads), *LIMITS]
        options += ["--allow-adapter-loading", "--adapter-root", folder]  # the load/unload endpoints fuzzed too
        with running_server(served, *options) as url:
            for result in served_schema(url).get_all_operations():
                operation = result.ok()
                for mode in modes:
                    statuses, named, failures = fuzz(operation, mode, args.examples)
                    rows.append((operation.label, mode.value, statuses, named, failures))
                    failed.update(
                        {f"{operation.label} ({mode.value}): {title}": report for title, report in failures.items()}
                    )
    print(f"\nSchemathesis against `tunelab serve {' '.join(served)}`, {args.examples} examples per endpoint and mode")
    print("| endpoint | mode | requests | to a served model | statuses seen | failed checks |")
    print("| --- | --- | ---: | ---: | --- | --- |")
    for label, mode, statuses, named, failures in rows:
        seen = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        print(f"| {label} | {mode} | {sum(statuses.values())} | {named} | {seen} | {', '.join(failures) or 'none'} |")
    for name, report in failed.items():
        print(f"\n## {name}\n{report}")
    print(f"\n{len(failed)} distinct failed check(s)" if failed else "\nno 5xx and no answer that breaks the schema")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
