"""Requests handed to the batcher and answered: within the request timeout, or streamed as server-sent events as
the answer is generated; a stream whose client goes away stops generating and is counted."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import Future

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.errors import TunelabError
from tunelab.eval.generate import Row
from tunelab.serve.batcher import Batcher, Job, QueueFull
from tunelab.serve.catalog import Served
from tunelab.serve.errors import queue_full, too_slow
from tunelab.serve.metrics import Metrics
from tunelab.serve.protocol import ApiError, ChatRequest, Generation
from tunelab.serve.settings import ServeSettings


class JobRunner:
    """The one way requests reach the model: jobs submitted to the batcher, bounded by the server's settings,
    their tokens counted in its metrics, and for each model id its requests in flight and when it was last asked
    (what a server that loads adapters needs to pick one to unload)."""

    def __init__(self, batcher: Batcher, settings: ServeSettings, metrics: Metrics):
        self.batcher, self.settings, self.metrics = batcher, settings, metrics
        self.in_flight: Counter[str] = Counter()
        """Requests submitted and not yet answered (queued, waiting for a slot or decoding), per model id."""
        self.last_used: dict[str, int] = {}
        """Per model id, when it was last asked for (a tick of `_clock`; never asked: absent)."""
        self._clock = itertools.count(1)
        self._lock = threading.Lock()  # the futures are answered on the worker thread

    def touch(self, model_id: str) -> None:
        """Count `model_id` as used now."""
        self.last_used[model_id] = next(self._clock)

    def _submit(self, job: Job) -> Future:
        """Hand `job` to the batcher (a 429 when its queue is full), counted in flight until its future is done."""
        model_id = job.served.id
        with self._lock:
            self.in_flight[model_id] += 1
        try:
            future = self.batcher.submit(job)
        except QueueFull:
            self._answered(model_id)
            raise queue_full(self.settings) from None
        self.touch(model_id)
        future.add_done_callback(lambda _: self._answered(model_id))
        return future

    def _answered(self, model_id: str) -> None:
        with self._lock:
            self.in_flight[model_id] -= 1
            if not self.in_flight[model_id]:
                del self.in_flight[model_id]

    async def answer(self, job: Job):
        """The batcher's result for `job`, within the request timeout."""
        future = self._submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.settings.timeout_s)
        except asyncio.TimeoutError:
            job.cancel()
            raise too_slow(self.settings) from None
        except TunelabError as error:
            raise ApiError(400, str(error)) from None

    def generation_job(self, entry: Served, body: Generation, ids: list[int], on_text=None) -> Job:
        """The job generating an answer to `ids`, refused with a 400 when the prompt or its budget is over the
        server's limits."""
        settings = self.settings
        prompt = "messages" if isinstance(body, ChatRequest) else "prompt"
        if not ids:
            raise ApiError(400, "the prompt has no tokens: send some text for the model to continue", param=prompt)
        if len(ids) > settings.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; the limit is {settings.max_prompt_tokens} (--max-prompt-tokens)",
                param=prompt,
                code="context_length_exceeded",
            )
        budget = body.budget() or min(settings.default_max_tokens, settings.max_tokens_cap)
        if budget > settings.max_tokens_cap:
            raise ApiError(
                400,
                f"max_tokens {budget} is over this server's limit of {settings.max_tokens_cap} (--max-tokens-cap)",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        return Job(
            entry,
            Row(ids, budget, list(body.stop or []), on_text),
            body.sampling(),
            deadline=time.monotonic() + settings.timeout_s,
        )

    def abandon(self, entry: Served, job: Job) -> None:
        """A stream's client went away before its answer ended: stop generating it (the batcher drops it, or its
        row ends at the next token), and count it and the tokens it had cost."""
        job.cancel()
        self.metrics.abandoned.labels(entry.id).inc()

        def spent(future: Future) -> None:
            if not future.cancelled() and future.exception() is None:
                self.metrics.generated_tokens.labels(entry.id).inc(future.result().tokens)

        job.future.add_done_callback(spent)

    def stream(self, request: Request, entry: Served, body: Generation, ids: list[int], chunk) -> StreamingResponse:
        """Server-sent events: each new piece of the answer as it is generated, then the finish reason (and the
        usage when asked), then [DONE]."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        end = object()
        job = self.generation_job(
            entry, body, ids, on_text=lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
        )
        self._submit(job)
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, end))

        async def events():
            ended = False
            try:
                yield f"data: {json.dumps(chunk(None, None, first=True))}\n\n"
                while True:
                    try:
                        piece = await asyncio.wait_for(pieces.get(), timeout=max(0.0, job.deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        job.cancel()
                        error = too_slow(self.settings)
                        yield f"data: {json.dumps(error.body())}\n\n"
                        break
                    if piece is end:
                        if job.future.cancelled() or job.future.exception() is not None:
                            failure = job.future.exception() if not job.future.cancelled() else "cancelled"
                            yield f"data: {json.dumps(ApiError(500, str(failure), type='server_error').body())}\n\n"
                            break
                        result = job.future.result()
                        yield f"data: {json.dumps(chunk(None, result.finish))}\n\n"
                        counted = self.metrics.usage(request, entry, len(ids), result.tokens)
                        if body.stream_options and body.stream_options.include_usage:
                            yield f"data: {json.dumps({**chunk(None, None), 'choices': [], 'usage': counted})}\n\n"
                        break
                    yield f"data: {json.dumps(chunk(piece, None))}\n\n"
                yield "data: [DONE]\n\n"
                ended = True
            finally:  # the client went away: the stream was cancelled, or closed, before its end
                if not ended and not job.future.done():
                    self.abandon(entry, job)

        return StreamingResponse(events(), media_type="text/event-stream")
