"""The endpoints: OpenAI's `/v1/models`, `/v1/chat/completions` and `/v1/completions` (with server-sent events),
tunelab's `/v1/classify` and `/v1/score` (a reward model's scores of answers), vLLM's `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (only on a server started with --allow-adapter-loading), and `/health` and Prometheus
`/metrics` for operations. Each reads its request, finds the model it names, and hands the work to the job runner;
a server with an API key guards the `/v1/` ones."""

from __future__ import annotations

import hmac
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunelab.errors import TunelabError
from tunelab.kinds.chat_masks import ChatTemplateError
from tunelab.kinds.reward import conversation_ids
from tunelab.records import Record
from tunelab.serve.adapters import RuntimeAdapters
from tunelab.serve.batcher import Job
from tunelab.serve.catalog import Catalog, Served
from tunelab.serve.errors import not_served
from tunelab.serve.jobs import JobRunner
from tunelab.serve.metrics import Metrics
from tunelab.serve.openapi import documented, streamed
from tunelab.serve.prompts import prompt_ids
from tunelab.serve.protocol import (
    ApiError,
    ChatCompletion,
    ChatRequest,
    Classification,
    ClassifyRequest,
    Completion,
    CompletionRequest,
    Health,
    LoadLoraAdapterRequest,
    ModelList,
    ScoreRequest,
    Scores,
    UnloadLoraAdapterRequest,
)
from tunelab.serve.settings import ServeSettings

BEARER = HTTPBearer(auto_error=False, description="the server's --api-key")

ANSWERS = {
    "generate": ("a generator", "/v1/chat/completions or /v1/completions"),
    "classify": ("a classifier", "/v1/classify"),
    "score": ("a reward model", "/v1/score"),
}
"""What a model id of each kind is, and the endpoints that answer it."""

CHANGED = {
    200: {
        "description": "vLLM's success message",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
"""The answer of a load or unload: a line of text, as vLLM answers."""


class Endpoints:
    """The endpoints of one server, over its catalog, settings, job runner and metrics."""

    def __init__(self, catalog: Catalog, settings: ServeSettings, jobs: JobRunner, metrics: Metrics):
        self.catalog, self.settings, self.jobs, self.metrics = catalog, settings, jobs, metrics
        self.adapters = RuntimeAdapters(catalog, settings, jobs) if settings.allow_adapter_loading else None

    def register(self, app: FastAPI) -> None:
        """Add the endpoints to `app`. Only a server with a key asks for one, and only its schema says so (with
        the 401 it answers)."""
        guarded = [Depends(self.authorised)] if self.settings.api_key else []
        keyed = (401,) if self.settings.api_key else ()
        asked = documented(400, *keyed, 404, 413, 429, 504)
        app.add_api_route(
            "/v1/models",
            self.models,
            methods=["GET"],
            dependencies=guarded,
            response_model=ModelList,
            responses=documented(*keyed),
        )
        app.add_api_route(
            "/v1/chat/completions",
            self.chat,
            methods=["POST"],
            dependencies=guarded,
            response_model=ChatCompletion,
            responses={**streamed("chat completion"), **asked},
        )
        app.add_api_route(
            "/v1/completions",
            self.completions,
            methods=["POST"],
            dependencies=guarded,
            response_model=Completion,
            responses={**streamed("completion"), **asked},
        )
        app.add_api_route(
            "/v1/classify",
            self.classify,
            methods=["POST"],
            dependencies=guarded,
            response_model=Classification,
            responses=asked,
        )
        app.add_api_route(
            "/v1/score",
            self.score,
            methods=["POST"],
            dependencies=guarded,
            response_model=Scores,
            responses=asked,
        )
        if self.adapters is not None:
            self._register_adapter_loading(app, guarded, keyed)
        app.add_api_route("/health", self.health, methods=["GET"], response_model=Health)
        app.add_api_route(
            "/metrics",
            self.prometheus,
            methods=["GET"],
            response_class=Response,
            responses={
                200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        )

    def _register_adapter_loading(self, app: FastAPI, guarded: list, keyed: tuple) -> None:
        """vLLM's two endpoints for adapters loaded at run time; a server without --allow-adapter-loading has no
        such routes (a 404), and its schema does not publish them."""
        for path, change, refusals in (
            ("/v1/load_lora_adapter", self.load_adapter, (400, *keyed, 413, 503)),
            ("/v1/unload_lora_adapter", self.unload_adapter, (400, *keyed, 404, 409, 413)),
        ):
            app.add_api_route(
                path,
                change,
                methods=["POST"],
                dependencies=guarded,
                response_class=Response,
                responses={**CHANGED, **documented(*refusals)},
            )

    async def load_adapter(self, request: Request, body: LoadLoraAdapterRequest):
        message = await self.adapters.load(body.lora_name, body.lora_path)
        request.app.openapi_schema = None  # the schema's `model` examples are the served ids
        return PlainTextResponse(message)

    async def unload_adapter(self, request: Request, body: UnloadLoraAdapterRequest):
        message = await self.adapters.unload(body.lora_name)
        request.app.openapi_schema = None
        return PlainTextResponse(message)

    def authorised(self, credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:
        if credentials is None:
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer KEY'", code="missing_api_key")
        if not hmac.compare_digest(credentials.credentials.strip().encode(), self.settings.api_key.encode()):
            raise ApiError(401, "the API key is not the server's", code="invalid_api_key")

    def served(self, request: Request, model: str, kind: str) -> Served:
        request.state.model = model
        if model not in self.catalog.models:
            raise not_served(model, self.catalog.models, "model")
        entry = self.catalog.models[model]
        if entry.kind != kind:
            what, use = ANSWERS[entry.kind]
            raise ApiError(
                400,
                f"model '{model}' is {what}; use {use}",
                param="model",
                code="wrong_endpoint",
            )
        return entry

    async def models(self):
        return {
            "object": "list",
            "data": [
                {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by, "kind": m.kind}
                for m in self.catalog.models.values()
            ],
        }

    async def chat(self, request: Request, body: ChatRequest):
        entry = self.served(request, body.model, "generate")
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

            return self.jobs.stream(request, entry, body, ids, chunk)
        result = await self.jobs.answer(self.jobs.generation_job(entry, body, ids))
        return {
            **identity,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish}
            ],
            "usage": self.metrics.usage(request, entry, len(ids), result.tokens),
        }

    async def completions(self, request: Request, body: CompletionRequest):
        entry = self.served(request, body.model, "generate")
        ids = prompt_ids(entry, body, body.prompt, None)
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": entry.id}
        if body.stream:

            def chunk(text, finish, first=False):
                return {
                    **identity,
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}],
                }

            return self.jobs.stream(request, entry, body, ids, chunk)
        result = await self.jobs.answer(self.jobs.generation_job(entry, body, ids))
        return {
            **identity,
            "object": "text_completion",
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish, "logprobs": None}],
            "usage": self.metrics.usage(request, entry, len(ids), result.tokens),
        }

    async def classify(self, request: Request, body: ClassifyRequest):
        entry = self.served(request, body.model, "classify")
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
                    param=f"input[{i}]" if isinstance(body.input, list) else "input",
                )
            records.append(Record(fields, f"input {i}"))
        tokens = sum(len(entry.tokenizer(str(r.fields[spec.input_fields[0]]))["input_ids"]) for r in records)
        if tokens > self.settings.max_prompt_tokens * len(records):
            raise ApiError(
                400,
                f"the input has {tokens} tokens; the limit is {self.settings.max_prompt_tokens} per text "
                "(--max-prompt-tokens)",
                param="input",
                code="context_length_exceeded",
            )
        predictions = await self.jobs.answer(
            Job(entry, records=records, spec=spec, deadline=time.monotonic() + self.settings.timeout_s)
        )
        self.metrics.usage(request, entry, tokens, 0)
        return {
            "object": "list",
            "model": entry.id,
            "data": [{"index": i, "label": p["label"], "scores": p["scores"]} for i, p in enumerate(predictions)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def score(self, request: Request, body: ScoreRequest):
        entry = self.served(request, body.model, "score")
        limit = entry.task(None).max_length or self.settings.max_prompt_tokens
        sequences = []
        for where, messages in body.conversations():
            try:
                ids, length = conversation_ids(messages, None, entry.tokenizer, limit)
            except ChatTemplateError as error:
                raise ApiError(400, f"{where}: {error}", param=where) from None
            if length > self.settings.max_prompt_tokens:
                raise ApiError(
                    400,
                    f"{where} has {length} tokens; the limit is {self.settings.max_prompt_tokens} "
                    "(--max-prompt-tokens)",
                    param=where,
                    code="context_length_exceeded",
                )
            sequences.append(ids)
        scores = await self.jobs.answer(
            Job(entry, sequences=sequences, deadline=time.monotonic() + self.settings.timeout_s)
        )
        tokens = sum(map(len, sequences))
        self.metrics.usage(request, entry, tokens, 0)
        return {
            "object": "list",
            "model": entry.id,
            "data": [{"index": i, "score": score} for i, score in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def health(self):
        return {"status": "ok", "models": list(self.catalog.models), "queue_depth": self.jobs.batcher.depth()}

    async def prometheus(self):
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
