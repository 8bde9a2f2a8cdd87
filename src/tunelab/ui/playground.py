"""The playground's models: runs loaded on demand next to the models they were tuned from.

The playground does not generate by itself. It serves what it loads through the same OpenAI-compatible app as
`tunelab serve` (mounted under /serve), so a prompt, a record filled into a run's template and the streamed
answer go through exactly the code a deployed run answers with, and the page's requests are plain
`/v1/chat/completions`, `/v1/completions` and `/v1/classify` calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tunelab.render import template_fields
from tunelab.runs import RunDir
from tunelab.serve.app import create_app
from tunelab.serve.catalog import Catalog, Served
from tunelab.serve.settings import ServeSettings
from tunelab.ui.index import RunSummary, UiError


@dataclass
class PlaygroundModel:
    """One column of the playground: a served model id and what a request to it may send."""

    id: str
    label: str
    kind: str
    """'generate' (streamed chat or completion) or 'classify'."""
    fields: list[str]
    """The fields of the run's record (its template's, or a classifier's input fields); empty when it has none."""
    task: str | None

    def as_json(self) -> dict:
        return {"id": self.id, "label": self.label, "kind": self.kind, "fields": self.fields, "task": self.task}


def _fields(served: Served) -> tuple[list[str], str | None]:
    if len(served.tasks) != 1:
        return [], None
    name, spec = next(iter(served.tasks.items()))
    if served.kind == "classify":
        return list(spec.input_fields), name
    return (template_fields(spec.templates[0]) if spec.templates else []), name


class Playground:
    """The models loaded so far, served by one OpenAI-compatible app; loading is one at a time (a model takes
    seconds to load and memory to hold, and two loads of one run must not race)."""

    def __init__(self, settings: ServeSettings):
        self.catalog = Catalog()
        self.app = create_app(self.catalog, settings)
        self._loading = threading.Lock()

    def _column(self, served: Served, label: str) -> PlaygroundModel:
        fields, task = _fields(served)
        return PlaygroundModel(served.id, label, served.kind, fields, task)

    def load(self, run: RunSummary) -> list[PlaygroundModel]:
        """The base model for a generator (a classifier's base has no trained head to answer with), then the run,
        or each of a multi-task run's tasks."""
        if run.state != "complete":
            raise UiError(f"run {run.id} is {run.state}: only a complete run can answer in the playground")
        directory = RunDir(run.path)
        with self._loading:
            if not any(self._of_run(run.id)):
                self.catalog.add_run(run.id, directory)
            tuned = list(self._of_run(run.id))
            base = self.catalog.add_base(directory) if tuned[0].kind == "generate" else None
        columns = [self._column(self.catalog.models[base], f"base: {base}")] if base else []
        return columns + [self._column(served, f"tuned: {served.id}") for served in tuned]

    def _of_run(self, run_id: str):
        return (s for s in self.catalog.models.values() if s.id == run_id or s.id.startswith(f"{run_id}:"))
