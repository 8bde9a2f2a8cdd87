"""Concurrent requests gathered into batches and answered by one worker thread.

A request waits at most `window` seconds for others to join it, up to `max_batch`; the gathered requests are
grouped by model id (one adapter per forward pass) and each group is generated together through tunelab's
batched generator, every row ending on its own budget and stop strings, so a greedy answer is the one the request
gets alone. A sampled request (temperature above 0) runs in a batch of its own, so its seed reproduces it.
One thread owns the models: PEFT switches adapters by changing the shared model, which concurrent forward
passes must not see. A failure answers the requests of its group with the error; the worker carries on.
A job cancelled while it waits is dropped; one cancelled while it generates ends at the next token, so a client
that went away stops costing the requests behind it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from tunelab.eval.generate import Row, generate_rows
from tunelab.eval.rewards import reward_scores
from tunelab.eval.runner import classifier_predictions
from tunelab.records import Record
from tunelab.serve.catalog import Served
from tunelab.tasks import TaskSpec


class QueueFull(Exception):
    """Too many requests are waiting; the client should retry."""


@dataclass
class Job:
    served: Served
    row: Row | None = None
    """A generation request: its prompt, budget, stop strings and (streaming) text callback."""
    sampling: dict | None = None
    records: list[Record] = field(default_factory=list)
    """A classification request: its records, read with `spec`'s text fields."""
    spec: TaskSpec | None = None
    sequences: list[list[int]] = field(default_factory=list)
    """A score request: the token ids of each conversation whose last answer a reward model scores."""
    deadline: float = float("inf")
    future: Future = field(default_factory=Future)

    def cancel(self) -> None:
        """Nobody waits for the answer any more: dropped if still queued, or its row ends at the next token."""
        self.future.cancel()
        if self.row is not None:
            self.row.cancelled.set()

    def group(self) -> tuple:
        """Jobs that can share one forward pass: same model id and kind, greedy (a sampled job is alone)."""
        return (
            self.served.id,
            self.row is None,
            id(self) if self.sampling else None,
            self.spec.name if self.spec else None,
        )


class Batcher:
    def __init__(
        self,
        max_batch: int = 8,
        window: float = 0.01,
        queue_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.max_batch, self.window = max_batch, window
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.on_batch = on_batch or (lambda size: None)
        self.worker = threading.Thread(target=self._work, name="tunelab-serve-worker", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def depth(self) -> int:
        return self.jobs.qsize()

    def _gather(self) -> list[Job]:
        batch = [self.jobs.get()]
        end = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.jobs.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while True:
            groups: dict[tuple, list[Job]] = {}
            for job in self._gather():
                groups.setdefault(job.group(), []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = [job for job in jobs if job.deadline > now and job.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.on_batch(len(live))
        try:
            with live[0].served.answering() as target:
                if live[0].sequences:
                    results = self._score(target, live)
                elif live[0].row is None:
                    results = self._classify(target, live)
                else:
                    results = generate_rows(
                        target.model,
                        target.tokenizer,
                        [job.row for job in live],
                        decoder_only=target.decoder,
                        sampling=live[0].sampling,
                    )
        except Exception as exc:  # the requests get the error; the worker, and every other request, carry on
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, result in zip(live, results):
            if not job.future.done():
                job.future.set_result(result)

    @staticmethod
    def _classify(target, jobs: list[Job]) -> list[list[dict]]:
        """One forward pass over every job's records, each job given back its own predictions."""
        predictions = classifier_predictions(target, jobs[0].spec, [record for job in jobs for record in job.records])
        return _per_job(predictions, [len(job.records) for job in jobs])

    @staticmethod
    def _score(target, jobs: list[Job]) -> list[list[float]]:
        """Every job's sequences scored together, each job given back its own scores."""
        sequences = [ids for job in jobs for ids in job.sequences]
        scores = reward_scores(target.model, target.tokenizer, sequences, target.batch_size)
        return _per_job(scores, [len(job.sequences) for job in jobs])


def _per_job(results: list, sizes: list[int]) -> list[list]:
    """Results of several jobs' items, computed together, split back into each job's (`sizes` items each)."""
    split, start = [], 0
    for size in sizes:
        split.append(results[start : start + size])
        start += size
    return split
