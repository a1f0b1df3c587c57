"""The studio's web application (FastAPI): pages, images by run key, ratings, live updates.

Imported only by ``tracker studio`` (FastAPI at module level: its request annotations must resolve here).

Security, in one place:
- every request needs the session's token: ``?token=`` once (it then lives in an HttpOnly, SameSite=Strict
  cookie), or the cookie; a wrong or missing token is 403;
- a write (POST) also needs the token in the ``X-Tracker-Token`` header (the page reads it from a meta tag)
  and an ``Origin`` equal to the server's own: a page of another site can neither read nor write;
- the ``Host`` header must be one this server answers as (no DNS rebinding);
- images are served only by experiment and run key, looked up in the store, from inside the workspace;
  no path is ever taken from a request;
- every response carries a content security policy that allows only this server's own script, styles and
  images, and no framing; user text is escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from functools import lru_cache
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response,
                               StreamingResponse)

from tracker.errors import TrackerError
from tracker.workspace import WorkspaceConfig

COOKIE = "tracker_studio"
CSP = ("default-src 'none'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
KEY_RE = re.compile(r"^[0-9a-f]{6,64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
MAX_BODY = 16_384
MAX_CELL_RUNS = 64  # runs shown in one grid cell
SSE_POLL_SECONDS = 0.5
SSE_LIFETIME_SECONDS = 300  # a stream ends then; EventSource reconnects by itself
STATIC = ("studio.js", "studio.css")


@lru_cache(maxsize=1)
def _env():
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

    from tracker.report.html import templates_dir

    # the studio's pages first; then the report's partials they include (_suite.html.j2: the same suite result)
    env = Environment(loader=ChoiceLoader([FileSystemLoader(str(templates_dir() / "studio")),
                                           FileSystemLoader(str(templates_dir()))]),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, fmt="{:.3f}": fmt.format(v) if v is not None else "—"
    return env


def create_app(ws: WorkspaceConfig, token: str, allowed_hosts: set[str], rater: str | None = None):
    """The application for workspace ``ws``; requests must carry ``token``; ``allowed_hosts`` are the
    ``host:port`` values of the Host header this server answers."""
    from tracker.store.runstore import Store
    from tracker.studio import views

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    store = Store.open(ws.db_url, create=False)
    app.state.store = store

    @app.middleware("http")
    async def guard(request: Request, call_next):
        def deny(status: int, why: str) -> Response:
            return PlainTextResponse(why, status_code=status, headers={"Content-Security-Policy": CSP})

        if request.headers.get("host", "") not in allowed_hosts:
            return deny(403, "unknown host")
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            return deny(403, "a valid token is needed: open the URL tracker studio printed")
        if request.method not in ("GET", "HEAD"):
            own = f"http://{request.headers.get('host', '')}"
            if request.headers.get("origin") != own:
                return deny(403, "cross-origin write refused")
            header = request.headers.get("x-tracker-token", "")
            if not secrets.compare_digest(header.encode(), token.encode()):
                return deny(403, "a write needs the X-Tracker-Token header")
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def page(name: str, **ctx: Any) -> HTMLResponse:
        html = _env().get_template(name).render(token=token, rater=rater or "", **ctx)
        return HTMLResponse(html)

    def bad(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        from tracker.report.html import templates_dir

        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(templates_dir() / "studio" / name, media_type=media)

    @app.get("/", response_class=HTMLResponse)
    def home():
        return page("index.html.j2", experiments=views.experiments(store))

    def experiment_page(experiment: str, template: str, name: str, build: Callable[[], Any]):
        """An experiment's page: 400 for a name that is not one, 404 with the tracker's line when the view fails."""
        if not NAME_RE.match(experiment):
            return PlainTextResponse("bad experiment name", status_code=400)
        try:
            value = build()
        except TrackerError as e:
            return PlainTextResponse(str(e), status_code=404)
        return page(template, **{name: value})

    @app.get("/e/{experiment}", response_class=HTMLResponse)
    def grid(experiment: str, request: Request):
        return experiment_page(experiment, "grid.html.j2", "g",
                               lambda: views.grid(store, experiment, dict(request.query_params)))

    @app.get("/suite/{experiment}", response_class=HTMLResponse)
    def suite(experiment: str, metric: str | None = None):
        return experiment_page(experiment, "suite.html.j2", "v", lambda: views.suite(store, experiment, metric))

    @app.get("/compare", response_class=HTMLResponse)
    def compare(a: str, b: str, mode: str = "side"):
        try:
            c = views.compare(store, a, b, mode)
        except TrackerError as e:
            return PlainTextResponse(str(e), status_code=404)
        return page("compare.html.j2", c=c)

    @app.get("/pairs/{experiment}", response_class=HTMLResponse)
    def pairs(experiment: str, axis: str | None = None):
        return experiment_page(experiment, "pairs.html.j2", "p", lambda: views.next_pair(store, experiment, axis))

    @app.get("/run/{experiment}/{key}", response_class=HTMLResponse)
    def run(experiment: str, key: str):
        if not (NAME_RE.match(experiment) and KEY_RE.match(key)):
            return PlainTextResponse("bad run", status_code=400)
        try:
            r = views.run_detail(store, ws, experiment, key)
        except TrackerError as e:
            return PlainTextResponse(str(e), status_code=404)
        return page("run.html.j2", r=r)

    @app.get("/img/{experiment}/{key}")
    def image(experiment: str, key: str):
        if not (NAME_RE.match(experiment) and KEY_RE.match(key)):
            return PlainTextResponse("bad run", status_code=400)
        path = views.image_path(store, ws, experiment, key)
        if path is None:
            return PlainTextResponse("no image", status_code=404)
        return FileResponse(path, media_type="image/png")

    @app.get("/diff")
    def diff(a: str, b: str):
        try:
            data = views.difference_png(store, ws, a, b)
        except TrackerError as e:
            return PlainTextResponse(str(e), status_code=404)
        return Response(data, media_type="image/png")

    @app.post("/api/rate")
    async def rate(request: Request):
        from tracker.metrics import ratings

        body = await request.body()
        if len(body) > MAX_BODY:
            return bad("request too large", 413)
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return bad("the body must be JSON")
        if not isinstance(data, dict):
            return bad("the body must be a JSON object")
        experiment, key, other = data.get("experiment"), data.get("key"), data.get("other_key")
        if not (isinstance(experiment, str) and NAME_RE.match(experiment) and isinstance(key, str)
                and KEY_RE.match(key) and (other is None or (isinstance(other, str) and KEY_RE.match(other)))):
            return bad("experiment and key (and other_key for a pair) must name runs")
        try:
            rid = await asyncio.to_thread(ratings.add, store, experiment, key, str(data.get("kind")),
                                          data.get("value"), data.get("rater") or rater, data.get("comment"), other)
        except TrackerError as e:
            return bad(str(e))
        return {"id": rid}

    @app.get("/events/{experiment}")
    async def events(experiment: str, request: Request):
        if not NAME_RE.match(experiment):
            return PlainTextResponse("bad experiment name", status_code=400)

        async def stream():
            seen: set[str] = set()
            first = True
            loop = asyncio.get_running_loop()
            end = loop.time() + SSE_LIFETIME_SECONDS
            while loop.time() < end:
                if await request.is_disconnected():
                    return
                done = await asyncio.to_thread(views.done_runs, store, experiment)
                new = [(k, labels) for k, labels in done if k not in seen]
                seen.update(k for k, _ in new)
                for k, labels in new:  # the first poll's are marked initial: the page was rendered with them
                    data = {"key": k, "src": f"/img/{experiment}/{k}", "labels": labels, "initial": first}
                    yield f"event: run\ndata: {json.dumps(data)}\n\n"
                if first:
                    yield f"event: hello\ndata: {json.dumps({'done': len(done)})}\n\n"
                    first = False
                await asyncio.sleep(SSE_POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.on_event("shutdown")
    def _close() -> None:
        store.close()

    return app


def serve(ws: WorkspaceConfig, host: str = "127.0.0.1", port: int = 8765, rater: str | None = None, echo=print,
          ready=None) -> int:
    """Run the studio until interrupted. Prints the URL with its token (the only way in)."""
    import socket

    import uvicorn

    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        from tracker.errors import UsageError

        raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another "
                         f"(--port 0 picks a free one)") from None
    sock.listen(64)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    hosts = {f"{shown}:{port}"}
    if host in ("127.0.0.1", "::1", "localhost"):
        hosts |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    app = create_app(ws, token, hosts, rater)
    url = f"http://{shown}:{port}/?token={token}"
    echo(f"tracker studio on {ws.home}: {url}")
    echo("(Ctrl-C stops it; anyone with this URL can read and rate this workspace's images)")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    if ready is not None:
        ready(url)
    server.run(sockets=[sock])
    return 0

