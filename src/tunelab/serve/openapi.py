"""`/openapi.json` as this server answers: every error in OpenAI's shape (and no 422, which it answers as 400),
the streamed answers' server-sent events, and this server's own bounds (the ids it serves, its token cap)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from tunelab.serve.catalog import Catalog
from tunelab.serve.protocol import ChatCompletionChunk, CompletionChunk, ErrorResponse
from tunelab.serve.settings import ServeSettings

ERRORS = {
    400: "The request is invalid; `param` names the field at fault",
    401: "No API key was sent, or not the server's",
    404: "No served model has this id",
    409: "The adapter has requests in flight (retry when they are answered), or is the last one on its base",
    413: "The body is over the server's --max-body-bytes",
    429: "The queue is full (--queue-size); retry after Retry-After seconds",
    503: "Every loaded adapter that could make room has requests in flight (--max-adapters); retry after "
    "Retry-After seconds",
    504: "The request took longer than the server's --timeout",
}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "string"}}}


def documented(*statuses: int) -> dict:
    """The OpenAPI responses of these error statuses, all in OpenAI's error shape."""
    return {
        status: {
            "model": ErrorResponse,
            "description": ERRORS[status],
            **({"headers": RETRY_AFTER} if status in (429, 503) else {}),
        }
        for status in statuses
    }


def streamed(kind: str) -> dict:
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


REQUEST_KINDS = {
    "ChatRequest": "generate",
    "CompletionRequest": "generate",
    "ClassifyRequest": "classify",
    "ScoreRequest": "score",
}
"""Each request body's model, and the kind of model id its endpoint answers."""


def published(app: FastAPI, catalog: Catalog, settings: ServeSettings) -> dict:
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
        for name, kind in REQUEST_KINDS.items():
            _bound(schema["components"]["schemas"][name]["properties"], kind, catalog, settings)
    return app.openapi_schema


def _bound(properties: dict, kind: str, catalog: Catalog, settings: ServeSettings) -> None:
    """A request model's properties with this server's bounds: the ids of `kind` its endpoint serves, and the token
    cap."""
    served = [entry.id for entry in catalog.models.values() if entry.kind == kind]
    if served:
        properties["model"]["examples"] = served
    for field in ("max_tokens", "max_completion_tokens"):
        for option in properties.get(field, {}).get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = settings.max_tokens_cap
