"""The HTTP API: OpenAI's `/v1/models`, `/v1/chat/completions` (with server-sent events), `/v1/completions`,
tunelab's `/v1/classify`, and `/health` and Prometheus `/metrics` for operations.

Every limit answers with its status and names itself: the body size (413), prompt tokens and `max_tokens`
(400), a full queue (429 with Retry-After), the per-request timeout (504). A key, when set, is compared in
constant time. Errors keep OpenAI's shape, and nothing a request sends can stop the server: the model work
happens on the batcher's thread, and any failure there answers only the requests it concerned.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tunelab.config import template_fields
from tunelab.data.encode import decoder_prompt_ids
from tunelab.data.readers import Record
from tunelab.data.templates import has_chat_template
from tunelab.errors import TunelabError
from tunelab.eval.generate import Row
from tunelab.serve.batcher import Batcher, Job, QueueFull
from tunelab.serve.catalog import Catalog, Served
from tunelab.serve.protocol import (
    ApiError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    Generation,
    validation_error,
)

log = logging.getLogger("tunelab.serve")


@dataclass
class ServeSettings:
    """The server's limits and batching; every one has a `tunelab serve` option."""

    api_key: str | None = None
    max_batch: int = 8
    batch_window_ms: float = 10.0
    queue_size: int = 64
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 2048
    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    timeout_s: float = 120.0


class Metrics:
    """Prometheus counters of one server (its own registry, so two servers in one process do not mix)."""

    def __init__(self, depth):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunelab_requests", "Requests answered", ["endpoint", "model", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens read", ["model"], registry=self.registry)
        self.generated_tokens = Counter(
            "tunelab_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.latency = Histogram(
            "tunelab_request_seconds",
            "Request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.batch_size = Histogram(
            "tunelab_batch_size", "Requests per forward pass", registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        queue = Gauge("tunelab_queue_depth", "Requests waiting for the model", registry=self.registry)
        queue.set_function(depth)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _queue_full(settings: ServeSettings) -> ApiError:
    return ApiError(
        429,
        f"{settings.queue_size} requests are already waiting (--queue-size); retry shortly",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def _too_slow(settings: ServeSettings) -> ApiError:
    return ApiError(
        504,
        f"the request took longer than {settings.timeout_s:g} s (--timeout)",
        type="timeout",
        code="request_timeout",
    )


class BodyLimit:
    """ASGI middleware answering 413 to a body over `limit` bytes, read before the application sees it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                error = ApiError(
                    413,
                    f"the request body is over the {self.limit} byte limit (--max-body-bytes)",
                    code="body_too_large",
                )
                return await _error_response(error)(scope, receive, send)
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal replayed
            if replayed is None:
                return await receive()
            message, replayed = replayed, None
            return message

        return await self.app(scope, replay, send)


def create_app(catalog: Catalog, settings: ServeSettings) -> FastAPI:
    """The application serving `catalog` with `settings`; its batcher thread starts with it."""
    metrics_holder: dict = {}
    batcher = Batcher(
        settings.max_batch,
        settings.batch_window_ms / 1000,
        settings.queue_size,
        on_batch=lambda size: metrics_holder["metrics"].batch_size.observe(size),
    )
    metrics = metrics_holder["metrics"] = Metrics(batcher.depth)
    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None)
    app.state.models = list(catalog.models)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def account(request: Request, call_next):
        started = time.perf_counter()
        request.state.model, request.state.usage = "-", None
        response = await call_next(request)
        seconds = time.perf_counter() - started
        endpoint = request.url.path
        if endpoint.startswith("/v1/"):
            metrics.requests.labels(endpoint, request.state.model, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(seconds)
        usage = request.state.usage or {}
        log.info(
            '%s "%s %s" %d model=%s prompt_tokens=%s completion_tokens=%s %.0fms',
            request.client.host if request.client else "-",
            request.method,
            endpoint,
            response.status_code,
            request.state.model,
            usage.get("prompt_tokens", "-"),
            usage.get("completion_tokens", "-"),
            seconds * 1000,
        )
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return _error_response(validation_error(error.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("request failed")
        return _error_response(
            ApiError(500, f"the server failed on this request ({type(error).__name__}: {error})", type="server_error")
        )

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer KEY'", code="missing_api_key")
        if not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "the API key is not the server's", code="invalid_api_key")

    def served(request: Request, model: str, kind: str) -> Served:
        request.state.model = model
        if model not in catalog.models:
            raise ApiError(
                404, f"no model '{model}'; served: {', '.join(catalog.models)}", param="model", code="model_not_found"
            )
        entry = catalog.models[model]
        if entry.kind != kind:
            use = "/v1/classify" if entry.kind == "classify" else "/v1/chat/completions or /v1/completions"
            raise ApiError(
                400,
                f"model '{model}' is a {'classifier' if entry.kind == 'classify' else 'generator'}; use {use}",
                param="model",
                code="wrong_endpoint",
            )
        return entry

    async def answer(job: Job):
        """The batcher's result for `job`, within the request timeout."""
        try:
            future = batcher.submit(job)
        except QueueFull:
            raise _queue_full(settings) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise _too_slow(settings) from None
        except TunelabError as error:
            raise ApiError(400, str(error)) from None

    def record_prompt(entry: Served, body: Generation) -> str:
        try:
            spec = entry.task(body.task)
        except TunelabError as error:
            raise ApiError(400, str(error), param="task") from None
        if not spec.templates:
            raise ApiError(
                400, f"model '{entry.id}' has no prompt template to fill; send messages or a prompt", param="record"
            )
        missing = [name for name in template_fields(spec.templates[0]) if name not in body.record]
        if missing:
            raise ApiError(
                400,
                f"record lacks field(s) {', '.join(missing)} that the template of task {spec.name} "
                f"reads: {spec.templates[0]!r}",
                param="record",
            )
        return spec.prompt(Record(dict(body.record), "request"))

    def prompt_ids(entry: Served, body: Generation, text: str | None, messages: list | None) -> list[int]:
        """The request's prompt as the model was trained to read it: a record through the run's template and the
        training format, messages through the chat template, a completion prompt as it is."""
        tokenizer = entry.tokenizer
        if body.record is not None:
            text = record_prompt(entry, body)
        elif messages is not None:
            if not messages:
                raise ApiError(400, "messages is empty: send at least one message, or a record", param="messages")
            if has_chat_template(tokenizer):
                chat = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
                try:
                    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                # The template's own checks (roles must alternate, ...) fail on the client's messages: a 400.
                except Exception as error:
                    raise ApiError(
                        400,
                        f"the chat template of model '{entry.id}' refused these messages: {error}",
                        param="messages",
                    ) from None
                return tokenizer(rendered, add_special_tokens=False)["input_ids"]
            if len(messages) > 1 or messages[0].role != "user":
                raise ApiError(
                    400,
                    f"model '{entry.id}' has no chat template, so it takes one user message (or use /v1/completions)",
                    param="messages",
                )
            text = messages[0].text()
        elif text is None:
            raise ApiError(400, "send a prompt, or a record of the run's fields", param="prompt")
        else:
            return tokenizer(text)["input_ids"]
        if entry.decoder_only:  # a user turn, formatted as in training (chat template, or the prompt and a newline)
            return decoder_prompt_ids(text, tokenizer, budget=1 << 30)[0]
        return tokenizer(text)["input_ids"]

    def generation_job(request: Request, entry: Served, body: Generation, ids: list[int], on_text=None) -> Job:
        if len(ids) > settings.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; the limit is {settings.max_prompt_tokens} (--max-prompt-tokens)",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        budget = body.budget() or settings.default_max_tokens
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

    def usage(request: Request, entry: Served, prompt: int, completion: int) -> dict:
        metrics.prompt_tokens.labels(entry.id).inc(prompt)
        metrics.generated_tokens.labels(entry.id).inc(completion)
        request.state.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return request.state.usage

    def stream(request: Request, entry: Served, body: Generation, ids: list[int], chunk) -> StreamingResponse:
        """Server-sent events: each new piece of the answer as it is generated, then the finish reason (and the
        usage when asked), then [DONE]."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        end = object()
        job = generation_job(
            request, entry, body, ids, on_text=lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
        )
        try:
            batcher.submit(job)
        except QueueFull:
            raise _queue_full(settings) from None
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, end))

        async def events():
            yield f"data: {json.dumps(chunk(None, None, first=True))}\n\n"
            while True:
                try:
                    piece = await asyncio.wait_for(pieces.get(), timeout=max(0.0, job.deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    job.future.cancel()
                    error = _too_slow(settings)
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                if piece is end:
                    if job.future.cancelled() or job.future.exception() is not None:
                        failure = job.future.exception() if not job.future.cancelled() else "cancelled"
                        yield f"data: {json.dumps(ApiError(500, str(failure), type='server_error').body())}\n\n"
                        break
                    result = job.future.result()
                    yield f"data: {json.dumps(chunk(None, result.finish))}\n\n"
                    counted = usage(request, entry, len(ids), result.tokens)
                    if body.stream_options and body.stream_options.include_usage:
                        yield f"data: {json.dumps({**chunk(None, None), 'choices': [], 'usage': counted})}\n\n"
                    break
                yield f"data: {json.dumps(chunk(piece, None))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by, "kind": m.kind}
                for m in catalog.models.values()
            ],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat(request: Request, body: ChatRequest):
        entry = served(request, body.model, "generate")
        ids = prompt_ids(entry, body, None, body.messages)
        identity = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": entry.id}
        if body.stream:

            def chunk(text, finish, first=False):
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {
                    **identity,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }

            return stream(request, entry, body, ids, chunk)
        result = await answer(generation_job(request, entry, body, ids))
        return {
            **identity,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish}
            ],
            "usage": usage(request, entry, len(ids), result.tokens),
        }

    @app.post("/v1/completions", dependencies=[Depends(authorised)])
    async def completions(request: Request, body: CompletionRequest):
        entry = served(request, body.model, "generate")
        ids = prompt_ids(entry, body, body.prompt, None)
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": entry.id}
        if body.stream:

            def chunk(text, finish, first=False):
                return {
                    **identity,
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}],
                }

            return stream(request, entry, body, ids, chunk)
        result = await answer(generation_job(request, entry, body, ids))
        return {
            **identity,
            "object": "text_completion",
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish, "logprobs": None}],
            "usage": usage(request, entry, len(ids), result.tokens),
        }

    @app.post("/v1/classify", dependencies=[Depends(authorised)])
    async def classify(request: Request, body: ClassifyRequest):
        entry = served(request, body.model, "classify")
        try:
            spec = entry.task(body.task)
        except TunelabError as error:
            raise ApiError(400, str(error), param="task") from None
        records = []
        for i, item in enumerate(body.items()):
            fields = {spec.input_fields[0]: item} if isinstance(item, str) else dict(item)
            missing = [name for name in spec.input_fields if name not in fields]
            if missing:
                raise ApiError(
                    400,
                    f"input {i} lacks {', '.join(missing)}: model '{entry.id}' reads "
                    f"{', '.join(spec.input_fields)} (send a text, or a record of those fields)",
                    param=f"input.{i}" if isinstance(body.input, list) else "input",
                )
            records.append(Record(fields, f"input {i}"))
        tokens = sum(len(entry.tokenizer(str(r.fields[spec.input_fields[0]]))["input_ids"]) for r in records)
        if tokens > settings.max_prompt_tokens * len(records):
            raise ApiError(
                400,
                f"the input has {tokens} tokens; the limit is {settings.max_prompt_tokens} per text "
                "(--max-prompt-tokens)",
                param="input",
                code="context_length_exceeded",
            )
        predictions = await answer(
            Job(entry, records=records, spec=spec, deadline=time.monotonic() + settings.timeout_s)
        )
        usage(request, entry, tokens, 0)
        return {
            "object": "list",
            "model": entry.id,
            "data": [{"index": i, "label": p["label"], "scores": p["scores"]} for i, p in enumerate(predictions)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(catalog.models), "queue_depth": batcher.depth()}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def run_server(targets: list[str], host: str, port: int, settings: ServeSettings) -> None:
    """Load the targets and serve them until interrupted (uvicorn, one process: the models live in it)."""
    import uvicorn

    from tunelab.serve.catalog import load_catalog

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(load_catalog(targets), settings)
    key = "an API key (Authorization: Bearer)" if settings.api_key else "no API key"
    print(f"serving {', '.join(app.state.models)} on http://{host}:{port}/v1 with {key}", flush=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
