"""The HTTP API of `tunelab serve`, assembled from its parts: `routes` (the endpoints), `prompts` (a request's
prompt as the model reads it), `jobs` (the batcher, timeouts, streaming), `errors` (OpenAI's error shape for every
failure, the body-size limit), `metrics` (Prometheus counters and the access log) and `openapi` (the published
schema).

Every limit answers with its status and names itself: the body size (413), prompt tokens and `max_tokens`
(400), a full queue (429 with Retry-After), the per-request timeout (504). A key, when set, is compared in
constant time. Every error keeps OpenAI's shape, the router's 404 and 405 included, and nothing a request sends
can stop the server: the model work happens on the batcher's thread, and any failure there answers only the
requests it concerned. A request the server fails on (a bug) is a 500 that is logged and counted like any other.
A stream whose client goes away stops generating at the next token, freeing its place in the batch.
`/openapi.json` publishes every answer's model, errors included, and says only what this server does.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from tunelab.serve.batcher import Batcher
from tunelab.serve.catalog import Catalog
from tunelab.serve.errors import BodyLimit, add_error_handlers
from tunelab.serve.jobs import JobRunner
from tunelab.serve.metrics import Metrics, RequestAccounting
from tunelab.serve.openapi import published
from tunelab.serve.routes import Endpoints
from tunelab.serve.settings import ServeSettings


def create_app(catalog: Catalog, settings: ServeSettings) -> FastAPI:
    """The application serving `catalog` with `settings`; its batcher thread starts with it."""
    metrics = Metrics()
    batcher = Batcher(
        settings.max_batch,
        settings.batch_window_ms / 1000,
        settings.queue_size,
        on_batch=metrics.batch_size.observe,
        continuous=settings.batching == "continuous",
        prefix_cache_tokens=settings.prefix_cache_tokens,
    )
    metrics.watch_queue(batcher.depth)
    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None)
    app.openapi = lambda: published(app, catalog, settings)
    app.state.models = list(catalog.models)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.middleware("http")(RequestAccounting(catalog, metrics))
    add_error_handlers(app)
    Endpoints(catalog, settings, JobRunner(batcher, settings, metrics), metrics).register(app)
    return app


def run_server(targets: list[str], host: str, port: int, settings: ServeSettings) -> None:
    """Load the targets and serve them until interrupted (uvicorn, one process: the models live in it)."""
    import torch
    import uvicorn

    from tunelab.serve.catalog import load_catalog

    torch.set_num_threads(settings.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(load_catalog(targets, settings.fold_adapters), settings)
    key = "an API key (Authorization: Bearer)" if settings.api_key else "no API key"
    loading = (
        f", adapters loaded from {settings.adapter_root} (up to {settings.max_adapters})"
        if settings.allow_adapter_loading
        else ""
    )
    print(
        f"serving {', '.join(app.state.models)} on http://{host}:{port}/v1 with {key}, {settings.batching} batching "
        f"(up to {settings.max_batch} rows per model), {settings.threads} CPU threads{loading}",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
