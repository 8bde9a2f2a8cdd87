"""Prometheus metrics of one server, and the accounting of every request: the access log line, the request and
latency counters, and the token usage a response reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tunelab.serve.catalog import Catalog, Served
from tunelab.serve.errors import error_response
from tunelab.serve.protocol import ApiError

log = logging.getLogger("tunelab.serve")


class Metrics:
    """Prometheus counters of one server (its own registry, so two servers in one process do not mix)."""

    def __init__(self):
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
        self.queue = Gauge("tunelab_queue_depth", "Requests waiting for the model", registry=self.registry)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from the batcher at each scrape (the batcher reports its batch sizes here, so it
        is built after the metrics)."""
        self.queue.set_function(depth)

    def usage(self, request: Request, entry: Served, prompt: int, completion: int) -> dict:
        """Count a request's tokens, and keep its usage for the access log; returns the response's `usage`."""
        self.prompt_tokens.labels(entry.id).inc(prompt)
        self.generated_tokens.labels(entry.id).inc(completion)
        request.state.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return request.state.usage


class RequestAccounting:
    """HTTP middleware that logs and counts every request, the ones the server failed on included. The labels stay
    bounded whatever clients send: an unknown model is 'unknown', a path no route answers is 'unrouted'."""

    def __init__(self, catalog: Catalog, metrics: Metrics):
        self.catalog, self.metrics = catalog, metrics

    async def __call__(self, request: Request, call_next):
        started = time.perf_counter()
        request.state.model, request.state.usage = "-", None
        try:
            response = await call_next(request)
        except Exception as error:  # a bug: the client gets a 500 in OpenAI's shape, the log its traceback
            log.exception("%s %s failed", request.method, request.url.path)
            failure = f"the server failed on this request ({type(error).__name__}: {error})"
            response = error_response(ApiError(500, failure, type="server_error"))
        seconds = time.perf_counter() - started
        endpoint = request.url.path
        if endpoint.startswith("/v1/"):
            route = request.scope.get("route")
            label = route.path if route is not None else "unrouted"
            model = request.state.model
            model = model if model == "-" or model in self.catalog.models else "unknown"
            self.metrics.requests.labels(label, model, str(response.status_code)).inc()
            self.metrics.latency.labels(label).observe(seconds)
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
