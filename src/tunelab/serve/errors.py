"""Every error the server answers, in OpenAI's shape: the exception handlers (the router's own 404, 405 and
unreadable bodies included), the limits that name themselves (413 body size, 429 full queue, 504 timeout), and the
body-size middleware that answers 413 before the application reads a byte of JSON."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunelab.serve.protocol import ApiError, validation_error
from tunelab.serve.settings import ServeSettings


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def not_routed(request: Request, error: HTTPException) -> ApiError:
    """The router's own errors (no such path, a method the path does not answer, a body it cannot read)."""
    if error.status_code == 404:
        message = f"no route {request.url.path}; this server answers /v1/models, /v1/chat/completions, "
        message += "/v1/completions, /v1/classify, /v1/score, /health and /metrics"
        return ApiError(404, message, code="not_found")
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.url.path} does not answer {request.method}; it answers {allowed}"
        return ApiError(405, message, code="method_not_allowed", headers=dict(error.headers or {}))
    if error.status_code == 400:  # FastAPI's "There was an error parsing the body": not UTF-8, say
        return ApiError(400, f"the request body is not UTF-8 JSON ({error.detail})", code="invalid_json")
    return ApiError(error.status_code, str(error.detail), headers=dict(error.headers or {}))


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(error.errors()))


async def _not_routed(request: Request, error: HTTPException) -> JSONResponse:
    return error_response(not_routed(request, error))


def add_error_handlers(app: FastAPI) -> None:
    """Answer the server's own errors, FastAPI's validation errors (a 400 naming the field, not a 422) and the
    router's errors in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _not_routed)


def not_served(model: str, served: Iterable[str], param: str) -> ApiError:
    """A 404 for a model id the server does not serve (named by the request's `param`), listing those it does."""
    return ApiError(404, f"no model '{model}'; served: {', '.join(served)}", param=param, code="model_not_found")


def queue_full(settings: ServeSettings) -> ApiError:
    return ApiError(
        429,
        f"{settings.queue_size} requests are already waiting (--queue-size); retry shortly",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def too_slow(settings: ServeSettings) -> ApiError:
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
                return await error_response(error)(scope, receive, send)
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
