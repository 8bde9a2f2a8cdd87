"""The HTTP API: OpenAI's `/v1/models`, `/v1/chat/completions` (with server-sent events), `/v1/completions`,
tunelab's `/v1/classify`, and `/health` and Prometheus `/metrics` for operations.

Every limit answers with its status and names itself: the body size (413), prompt tokens and `max_tokens`
(400), a full queue (429 with Retry-After), the per-request timeout (504). A key, when set, is compared in
constant time. Every error keeps OpenAI's shape, the router's 404 and 405 included, and nothing a request sends
can stop the server: the model work happens on the batcher's thread, and any failure there answers only the
requests it concerned. A request the server fails on (a bug) is a 500 that is logged and counted like any other.
A stream whose client goes away stops generating at the next token, freeing its place in the batch.
`/openapi.json` publishes every answer's model, errors included, and says only what this server does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from tunelab.errors import TunelabError
from tunelab.eval.generate import Row
from tunelab.kinds.encoding import decoder_prompt_ids
from tunelab.records import Record
from tunelab.render import has_chat_template, render_chat, template_fields
from tunelab.serve.batcher import Batcher, Job, QueueFull
from tunelab.serve.catalog import Catalog, Served
from tunelab.serve.protocol import (
    ApiError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Classification,
    ClassifyRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    ErrorResponse,
    Generation,
    Health,
    ModelList,
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
        self.abandoned = Counter(
            "tunelab_abandoned_streams",
            "Streams whose client went away before the answer ended; their generation stopped",
            ["model"],
            registry=self.registry,
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


ERRORS = {
    400: "The request is invalid; `param` names the field at fault",
    401: "No API key was sent, or not the server's",
    404: "No served model has this id",
    413: "The body is over the server's --max-body-bytes",
    429: "The queue is full (--queue-size); retry after Retry-After seconds",
    504: "The request took longer than the server's --timeout",
}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "string"}}}


def _documented(*statuses: int) -> dict:
    """The OpenAPI responses of these error statuses, all in OpenAI's error shape."""
    return {
        status: {
            "model": ErrorResponse,
            "description": ERRORS[status],
            **({"headers": RETRY_AFTER} if status == 429 else {}),
        }
        for status in statuses
    }


def _streamed(kind: str) -> dict:
    """The 200 of an endpoint that answers JSON, or with `stream: true` server-sent events (their content is
    published by `_events`)."""
    return {200: {"description": f"The {kind}; with `stream: true`, server-sent events, then `data: [DONE]`"}}


STREAMED = {"/v1/chat/completions": ChatCompletionChunk, "/v1/completions": CompletionChunk}
REF = "#/components/schemas/{model}"


def _events(schemas: dict, chunk: type[BaseModel]) -> dict:
    """The text/event-stream content of a streamed answer, registering the chunk's models in `schemas`: each event's
    data is a JSON chunk, or an error (the generation failed or timed out mid-stream), and the last is `[DONE]`."""
    published = chunk.model_json_schema(ref_template=REF)
    schemas.update(published.pop("$defs", {}))
    schemas[chunk.__name__] = published
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": REF.format(model=name)} for name in (chunk.__name__, "ErrorResponse")]},
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [{"const": "[DONE]"}, data]}}}
    return {"schema": event}


def _not_routed(request: Request, error: HTTPException) -> ApiError:
    """The router's own errors (no such path, a method the path does not answer, a body it cannot read)."""
    if error.status_code == 404:
        message = f"no route {request.url.path}; this server answers /v1/models, /v1/chat/completions, "
        message += "/v1/completions, /v1/classify, /health and /metrics"
        return ApiError(404, message, code="not_found")
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.url.path} does not answer {request.method}; it answers {allowed}"
        return ApiError(405, message, code="method_not_allowed", headers=dict(error.headers or {}))
    if error.status_code == 400:  # FastAPI's "There was an error parsing the body": not UTF-8, say
        return ApiError(400, f"the request body is not UTF-8 JSON ({error.detail})", code="invalid_json")
    return ApiError(error.status_code, str(error.detail), headers=dict(error.headers or {}))


def _published(app: FastAPI, catalog: Catalog, settings: ServeSettings) -> dict:
    """FastAPI's schema less the 422 it documents for every request body (this server answers those with 400),
    with this server's own bounds: the served model ids as the examples of each request's `model`, and
    --max-tokens-cap as the maximum of `max_tokens`."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # caches it on the app
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        for path, chunk in STREAMED.items():
            content = schema["paths"][path]["post"]["responses"]["200"]["content"]
            content["text/event-stream"] = _events(schema["components"]["schemas"], chunk)
        for name in ("ChatRequest", "CompletionRequest", "ClassifyRequest"):
            _bound(schema["components"]["schemas"][name]["properties"], catalog, settings)
    return app.openapi_schema


def _bound(properties: dict, catalog: Catalog, settings: ServeSettings) -> None:
    """A request model's properties with this server's bounds: the ids that endpoint serves, and the token cap."""
    kind = "generate" if "max_tokens" in properties else "classify"
    served = [entry.id for entry in catalog.models.values() if entry.kind == kind]
    if served:
        properties["model"]["examples"] = served
    for field in ("max_tokens", "max_completion_tokens"):
        for option in properties.get(field, {}).get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = settings.max_tokens_cap


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
    app.openapi = lambda: _published(app, catalog, settings)
    app.state.models = list(catalog.models)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def account(request: Request, call_next):
        """Log and count every request, the ones the server failed on included. The labels stay bounded
        whatever clients send: an unknown model is 'unknown', a path no route answers is 'unrouted'."""
        started = time.perf_counter()
        request.state.model, request.state.usage = "-", None
        try:
            response = await call_next(request)
        except Exception as error:  # a bug: the client gets a 500 in OpenAI's shape, the log its traceback
            log.exception("%s %s failed", request.method, request.url.path)
            failure = f"the server failed on this request ({type(error).__name__}: {error})"
            response = _error_response(ApiError(500, failure, type="server_error"))
        seconds = time.perf_counter() - started
        endpoint = request.url.path
        if endpoint.startswith("/v1/"):
            route = request.scope.get("route")
            label = route.path if route is not None else "unrouted"
            model = request.state.model
            model = model if model == "-" or model in catalog.models else "unknown"
            metrics.requests.labels(label, model, str(response.status_code)).inc()
            metrics.latency.labels(label).observe(seconds)
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

    @app.exception_handler(HTTPException)
    async def not_routed(request: Request, error: HTTPException):
        return _error_response(_not_routed(request, error))

    bearer = HTTPBearer(auto_error=False, description="the server's --api-key")

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None:
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer KEY'", code="missing_api_key")
        if not hmac.compare_digest(credentials.credentials.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "the API key is not the server's", code="invalid_api_key")

    # Only a server with a key asks for one, and only its schema says so (with the 401 it answers).
    guarded = [Depends(authorised)] if settings.api_key else []
    keyed = (401,) if settings.api_key else ()

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
            job.cancel()
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
                    rendered = render_chat(chat, tokenizer, add_generation_prompt=True)
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

    def usage(request: Request, entry: Served, prompt: int, completion: int) -> dict:
        metrics.prompt_tokens.labels(entry.id).inc(prompt)
        metrics.generated_tokens.labels(entry.id).inc(completion)
        request.state.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return request.state.usage

    def abandon(entry: Served, job: Job) -> None:
        """A stream's client went away before its answer ended: stop generating it (the batcher drops it, or its
        row ends at the next token), and count it and the tokens it had cost."""
        job.cancel()
        metrics.abandoned.labels(entry.id).inc()

        def spent(future: Future) -> None:
            if not future.cancelled() and future.exception() is None:
                metrics.generated_tokens.labels(entry.id).inc(future.result().tokens)

        job.future.add_done_callback(spent)

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
            ended = False
            try:
                yield f"data: {json.dumps(chunk(None, None, first=True))}\n\n"
                while True:
                    try:
                        piece = await asyncio.wait_for(pieces.get(), timeout=max(0.0, job.deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        job.cancel()
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
                ended = True
            finally:  # the client went away: the stream was cancelled, or closed, before its end
                if not ended and not job.future.done():
                    abandon(entry, job)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models", dependencies=guarded, response_model=ModelList, responses=_documented(*keyed))
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by, "kind": m.kind}
                for m in catalog.models.values()
            ],
        }

    asked = _documented(400, *keyed, 404, 413, 429, 504)

    @app.post(
        "/v1/chat/completions",
        dependencies=guarded,
        response_model=ChatCompletion,
        responses={**_streamed("chat completion"), **asked},
    )
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

    @app.post(
        "/v1/completions",
        dependencies=guarded,
        response_model=Completion,
        responses={**_streamed("completion"), **asked},
    )
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

    @app.post("/v1/classify", dependencies=guarded, response_model=Classification, responses=asked)
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

    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok", "models": list(catalog.models), "queue_depth": batcher.depth()}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
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
