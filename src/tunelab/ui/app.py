"""`tunelab ui`: the local web app. Runs, a run's live curves and results, comparisons, a side-by-side
playground, and blind human rating in the browser.

Pages are rendered on the server from the run directories (Jinja templates, a little JavaScript for the live
curves, the playground's streams and sortable tables; no build step, nothing fetched from the internet). The
playground answers through the mounted `tunelab serve` app, and ratings go to the same SQLite database as
`tunelab human rate`, one transaction per pair, so two raters can work at once and anyone can stop and resume.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import shlex
import time
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.card import mixture_lines, results_table
from tunelab.errors import TunelabError
from tunelab.eval import human
from tunelab.runs import RunDir
from tunelab.serve.settings import ServeSettings, default_threads
from tunelab.train.objectives import objective_of
from tunelab.ui.index import DEFAULT_ROOTS, Index, UiError, curves, read_json, read_metrics, scan
from tunelab.ui.playground import Playground

log = logging.getLogger("tunelab.ui")
HERE = Path(__file__).parent
TOKEN_COOKIE = "tunelab_ui_token"
RATER_COOKIE = "tunelab_rater"
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown(text: str) -> str:
    """Markdown as HTML; raw HTML in the text is shown as text, never run."""
    return _markdown.render(text)


def age(timestamp: float) -> str:
    """How long ago, in the largest whole unit: '40 s', '12 min', '3 h', '2 d'."""
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def forgetting_command(path: Path, run_id: str) -> str | None:
    """The `tunelab forgetting` command the run page suggests, with the run's base and the run filled in (the base
    of a run built on an earlier run is that run's folder); None where it cannot work: a classifier answers only
    through its head, which the pretrained base does not have, and the suite's tasks ask for generated answers."""
    try:
        config = RunDir(path).config()
    except (TunelabError, OSError, ValueError):  # a config this version cannot read: suggest nothing rather than guess
        return None
    if objective_of(config).answers_by_head:
        return None
    chain = (read_json(path / "run.json") or {}).get("chain") or []
    base = chain[-1]["run"] if chain else config.model.name
    return shlex.join(["tunelab", "forgetting", base, run_id])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoadRequest(BaseModel):
    runs: list[str]


def _error_page(templates: Jinja2Templates, request: Request, status: int, message: str) -> HTMLResponse:
    return templates.TemplateResponse(request, "error.html", {"message": message}, status_code=status)


def _token_guard(app: FastAPI, token: str) -> None:
    """Every request shows the token: in a cookie (set when a page is opened once with ?token=...), or as
    'Authorization: Bearer TOKEN' for scripts. Compared in constant time."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(str(clean), status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        shown = request.cookies.get(TOKEN_COOKIE) or (bearer.strip() if scheme.lower() == "bearer" else "")
        if not hmac.compare_digest(shown.encode(), token.encode()):
            return HTMLResponse(
                "<h1>401: token needed</h1><p>This tunelab ui asks for a token: open the address "
                "<code>tunelab ui</code> printed (it ends in <code>?token=...</code>), or send "
                "<code>Authorization: Bearer TOKEN</code>.</p>",
                status_code=401,
            )
        return await call_next(request)


def create_ui(roots: list[Path], token: str | None = None, serve_settings: ServeSettings | None = None) -> FastAPI:
    """The app over the run directories and comparisons under `roots`."""
    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["markdown"] = markdown
    templates.env.filters["urlpath"] = lambda value: quote(str(value))
    templates.env.filters["age"] = age
    playground = Playground(serve_settings or ServeSettings())
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.mount("/serve", playground.app)
    if token is not None:
        _token_guard(app, token)

    def index() -> Index:
        return scan(roots)

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(UiError)
    async def not_found(request: Request, error: UiError):
        return _error_page(templates, request, 404, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def no_page(request: Request, error: StarletteHTTPException):
        if error.status_code != 404:
            return _error_page(templates, request, error.status_code, str(error.detail))
        return _error_page(templates, request, 404, f"no page at {request.url.path}: start from the runs page")

    @app.exception_handler(human.HumanEvalError)
    async def refused(request: Request, error: human.HumanEvalError):
        return _error_page(templates, request, 400, str(error))

    @app.get("/")
    async def home():
        return RedirectResponse("/runs", status_code=303)

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request):
        found = index()
        return page(request, "runs.html", runs=list(found.runs.values()), roots=roots)

    @app.get("/run/{run_id:path}", response_class=HTMLResponse)
    def run(request: Request, run_id: str):
        summary = index().run(run_id)
        path = summary.path
        evaluation = read_json(path / "eval.json")
        state = read_json(path / "run.json") or {}
        forgetting = {
            f.stem.removeprefix("forgetting-"): f.read_text(encoding="utf-8")
            for f in sorted((path / "eval").glob("forgetting-*.md"))
        }
        return page(
            request,
            "run.html",
            run=summary,
            results=results_table(evaluation) if evaluation else None,
            forgetting=forgetting,
            forgetting_command=forgetting_command(path, summary.id),
            plan=mixture_lines(state["plan"]) if state.get("plan") else None,
            data_report=_text(path / "data" / "report.md"),
            masks=_text(RunDir(path).masks_path),
            card=_text(path / "README.md"),
        )

    @app.get("/api/run/{run_id:path}")
    def run_progress(run_id: str):
        summary = index().run(run_id)
        metrics = read_metrics(summary.path)
        return {
            "state": summary.state,
            "status": summary.status,
            "state_class": summary.state_class,
            "finished": summary.finished_state,
            "metrics": metrics,
            "curves": curves(metrics),
        }

    @app.get("/compare", response_class=HTMLResponse)
    def comparisons(request: Request):
        return page(request, "compare_list.html", comparisons=list(index().comparisons.values()))

    @app.get("/compare/{comparison_id:path}", response_class=HTMLResponse)
    def comparison(request: Request, comparison_id: str):
        found = index()
        summary = found.comparison(comparison_id)
        inside = {
            r.path.name: r for r in found.runs.values() if r.path.resolve().is_relative_to(summary.path.resolve())
        }
        variant_runs = {v.get("variant"): inside.get(Path(v.get("run_dir") or "").name) for v in summary.variants}
        return page(
            request,
            "compare.html",
            comparison=summary,
            table=_text(summary.path / "summary.md"),
            has_plot=(summary.path / "summary.png").exists(),
            variant_runs=variant_runs,
        )

    @app.get("/compare-plot/{comparison_id:path}")
    def comparison_plot(comparison_id: str):
        plot = index().comparison(comparison_id).path / "summary.png"
        if not plot.exists():
            raise UiError(f"comparison {comparison_id} has no summary.png yet")
        return FileResponse(plot, media_type="image/png")

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request):
        complete = [r for r in index().runs.values() if r.state == "complete"]
        chosen = request.query_params.getlist("run")
        return page(request, "playground.html", runs=complete, chosen=chosen)

    @app.post("/api/playground/load")
    async def playground_load(body: LoadRequest):
        if not body.runs:
            return JSONResponse({"error": "pick at least one run"}, status_code=400)
        found = index()
        try:
            columns: list = []
            for run_id in body.runs:
                for column in await run_in_threadpool(playground.load, found.run(run_id)):
                    if column.id not in [c.id for c in columns]:
                        columns.append(column)
        except TunelabError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return {"models": [c.as_json() for c in columns]}

    @app.get("/rate", response_class=HTMLResponse)
    def sheets(request: Request):
        return page(
            request, "rate_list.html", sheets=human.sheet_progress(), rater=request.cookies.get(RATER_COOKIE, "")
        )

    @app.get("/rate/{sheet}", response_class=HTMLResponse)
    def rate(request: Request, sheet: str, rater: str = ""):
        rater = rater.strip() or request.cookies.get(RATER_COOKIE, "")
        if not rater:
            return RedirectResponse("/rate", status_code=303)
        response = page(
            request, "rate.html", sheet=sheet, rater=rater, pair=human.next_pair(sheet, rater), error=None, given={}
        )
        response.set_cookie(RATER_COOKIE, rater, samesite="strict")
        return response

    @app.post("/rate/{sheet}", response_class=HTMLResponse)
    async def rate_submit(request: Request, sheet: str, rater: str = Form(...)):
        form = await request.form()
        scores: dict[str, dict[str, int]] = {}
        for key, value in form.items():
            item_id, _, criterion = key.partition(".")
            if criterion in human.CRITERIA:
                scores.setdefault(item_id, {})[criterion] = int(value) if str(value).isdigit() else value
        try:
            await run_in_threadpool(human.save_pair, sheet, rater, scores)
        except human.HumanEvalError as error:
            pair = human.next_pair(sheet, rater)
            message = str(error)
            for number, item_id in enumerate(pair.item_ids if pair else [], start=1):
                message = message.replace(f"item {item_id}", f"answer {number}")
            return page(request, "rate.html", 400, sheet=sheet, rater=rater, pair=pair, error=message, given=scores)
        return RedirectResponse(f"/rate/{quote(sheet)}?rater={quote(rater)}", status_code=303)

    @app.get("/rate/{sheet}/report", response_class=HTMLResponse)
    def rating_report(request: Request, sheet: str):
        summary = human.report(sheet)
        return page(request, "rate_report.html", sheet=sheet, summary=summary, report=human.render_report(summary))

    @app.get("/health")
    async def health():
        return {"status": "ok", "roots": [str(r) for r in roots]}

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    return app


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def run_ui(roots: list[str], host: str, port: int, token: str | None, threads: int | None = None) -> None:
    """Serve the app until interrupted, the playground's models on `threads` CPU threads (default: half the
    cores). Anywhere but loopback it needs a token: run pages hold data and the playground runs models."""
    import torch
    import uvicorn

    torch.set_num_threads(threads or default_threads())
    if not is_loopback(host) and not token:
        raise UiError(
            f"--host {host} would let other machines in: give --token TOKEN (or $TUNELAB_UI_TOKEN), or bind 127.0.0.1"
        )
    folders = [Path(r) for r in (roots or DEFAULT_ROOTS)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_ui(folders, token)
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(
        f"tunelab ui on {address}{'?token=' + token if token else ''} (runs from {', '.join(map(str, folders))})",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
