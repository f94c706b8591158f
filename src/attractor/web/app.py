"""The dashboard: a Starlette app over `web/source.py`, pages rendered from `web/templates/` (Jinja2,
every value escaped), assets from `web/static/`, nothing fetched from elsewhere.

Pages: `/` (overview), `/runs/<run>/tree`, `/runs/<run>/timeline`, `/queue`, `/costs`, `/alerts`;
each also answers `?fragment=1` with its content alone (what the page script swaps in when an
event arrives). The JSON API is under `/api/` (see the README), and `/api/stream` is the live
feed: server-sent events, one per line of a run's events.jsonl, each with an `id` the browser
sends back as `Last-Event-ID` when it reconnects, so it catches up with no gap and no repeat.

Security: every request carries the token (`?token=` once, which sets an HttpOnly SameSite=Strict
cookie and redirects to the same page without it; or the `X-Attractor-Token` header; or
`Authorization: Bearer`). Actions are POST only and need the header, not the cookie alone, so a
link or a form on another site cannot trigger one. On a loopback address, a request whose `Host`
is not a loopback name is refused (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from attractor.errors import AttractorError, NotFoundError, UsageError
from attractor.store import checkpoint as cp_store
from attractor.web import views
from attractor.web.source import Source

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "attractor_token"
HEADER = "x-attractor-token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
KEEPALIVE_SECONDS = 15.0
RESCAN_SECONDS = 2.0  # how often a stream of every run looks for new runs
POLL_SECONDS = 0.25   # how often a stream reads the logs when no file-system events come
REPORTS_LIMIT = 50    # runs whose full report the overview and the costs read (newest first)


@dataclass(frozen=True)
class Settings:
    token: str
    host: str
    source: Source

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_NAMES or self.host.startswith("127.")


# --- the token and the host ------------------------------------------------------------------

def _given_token(request: Request) -> str | None:
    header = request.headers.get(HEADER)
    if header:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def _host_allowed(request: Request, settings: Settings) -> bool:
    if not settings.loopback:
        return True
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in LOOPBACK_NAMES or name == settings.host


class Guard:
    """ASGI middleware: the host rule, then the token rule, for every request."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = self.check(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, request: Request) -> Response | None:
        if not _host_allowed(request, self.settings):
            return PlainTextResponse("refused: this dashboard answers on a loopback name only "
                                     "(http://127.0.0.1:PORT/)", status_code=421)
        token = self.settings.token
        if request.method not in ("GET", "HEAD"):
            if not _same(request.headers.get(HEADER), token):
                return JSONResponse({"error": f"an action needs the token in the {HEADER} header"}, status_code=403)
            origin = request.headers.get("origin")
            if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
                return JSONResponse({"error": f"refused: a request from another origin ({origin})"}, status_code=403)
            return None
        if not _same(_given_token(request), token):
            return PlainTextResponse("refused: open the URL with the token that `attractor dashboard` printed "
                                     "(or read it from its token file)", status_code=401)
        if "token" in request.query_params:  # the token once in the URL: keep it in a cookie, take it out
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        return None


# --- pages -------------------------------------------------------------------------------

def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = lambda v: "-" if v is None else f"${float(v):.4f}"
    env.filters["tokens"] = lambda v: f"{int(v or 0):,}"
    env.filters["age"] = lambda v: "-" if v is None else f"{float(v):.0f}s" if v < 120 else f"{float(v) / 60:.0f}m"
    env.filters["clip"] = lambda v, n=160: (str(v)[: n - 1] + "…") if v and len(str(v)) > n else (v or "")
    env.filters["last_lines"] = _last_lines
    return env


def _last_lines(text: Any, count: int = 4) -> str:
    """The last `count` non-blank lines of a pane's text (a dialog's question ends it)."""
    rows = [row.rstrip() for row in str(text or "").splitlines() if row.strip()]
    return "\n".join(rows[-count:])


class Pages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = settings.source
        self.env = _environment()

    def render(self, request: Request, template: str, title: str, stream: str, **context: Any) -> HTMLResponse:
        fragment = request.query_params.get("fragment") == "1"
        html = self.env.get_template(template).render(
            layout="fragment.html" if fragment else "base.html", title=title, token=self.settings.token,
            stream=stream, path=request.url.path, **context)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    # the data of each page (the API returns the same)

    def overview_data(self) -> dict[str, Any]:
        runs = self.source.runs()
        waiting: list[dict[str, Any]] = []
        for row in runs[:REPORTS_LIMIT]:
            try:
                report = self.source.report(row["run_id"], reuse_finished=True)
            except AttractorError as exc:
                row["problem"] = str(exc)
                continue
            usage = report["run"].get("usage") or {}
            row["cost_usd"] = usage.get("cost_usd")
            row["tokens"] = views._tokens(usage)
            row["needs_input"] = [a for a in report["agents"] if a.get("health") == "needs-input"]
            for agent in row["needs_input"]:
                waiting.append({"project": row["project"], "run_id": row["run_id"], "node": agent["name"],
                                "message": (agent.get("needs_input") or {}).get("message"),
                                "since": (agent.get("needs_input") or {}).get("since"), "attach": agent.get("attach")})
        runs.sort(key=lambda r: not r.get("needs_input"))
        counts: dict[str, int] = {}
        for row in runs:
            counts[row["state_dir"]] = counts.get(row["state_dir"], 0) + 1
        places = [{"project": p.project, "state_dir": str(p.state.root), "runs": counts.get(str(p.state.root), 0)}
                  for p in self.source.places()]
        return {"runs": runs, "needs_human": waiting, "projects": places, "daemon": self.source.daemon_running()}

    def reports(self) -> list[dict[str, Any]]:
        out = []
        for row in self.source.runs()[:REPORTS_LIMIT]:
            try:
                out.append(self.source.report(row["run_id"], reuse_finished=True))
            except AttractorError as exc:
                logger.debug("run %s: %s", row["run_id"], exc)
        return out

    def alerts_data(self, kind: str | None, text: str | None) -> list[dict[str, Any]]:
        pairs = []
        for row in self.source.runs()[:REPORTS_LIMIT]:
            try:
                pairs.append((row, self.source.events(row["run_id"])))
            except AttractorError as exc:
                logger.debug("run %s: %s", row["run_id"], exc)
        return views.alerts(pairs, kind, text)

    def timeline_data(self, run_id: str) -> dict[str, Any]:
        report = self.source.report(run_id)
        return views.timeline(report, self.source.events(run_id), report["merge_queue"])

    def cursor(self, run_ids: list[str]) -> str:
        """The stream position after every event there is now, for the page's first connection."""
        parts = []
        for run_id in run_ids:
            try:
                place = self.source.find(run_id)
            except AttractorError:
                continue
            tail = cp_store.EventTail(cp_store.run_dir(place.state, run_id) / "events.jsonl")
            tail.new_numbered()
            parts.append(f"{run_id}:{tail.count}")
        return ",".join(parts)

    # handlers

    async def overview(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.overview_data)
        return self.render(request, "overview.html", "attractor", "*", cursor=await asyncio.to_thread(
            self.cursor, [r["run_id"] for r in data["runs"] if r["running"]]), **data)

    async def tree(self, request: Request) -> Response:
        run_id = request.path_params["run"]
        data = await asyncio.to_thread(lambda: views.tree(self.source.report(run_id)))
        return self.render(request, "tree.html", f"{run_id}: agents", run_id,
                           cursor=await asyncio.to_thread(self.cursor, [run_id]), **data)

    async def timeline(self, request: Request) -> Response:
        run_id = request.path_params["run"]
        data = await asyncio.to_thread(self.timeline_data, run_id)
        return self.render(request, "timeline.html", f"{run_id}: timeline", run_id,
                           cursor=await asyncio.to_thread(self.cursor, [run_id]), **data)

    async def queue(self, request: Request) -> Response:
        entries = await asyncio.to_thread(self.source.queue)
        now = time.time()
        for entry in entries:
            entry["wait"] = _wait(entry, now)
        return self.render(request, "queue.html", "merge queue", "*", cursor="", entries=entries)

    async def costs(self, request: Request) -> Response:
        data = await asyncio.to_thread(lambda: views.costs(self.reports()))
        return self.render(request, "costs.html", "costs", "*", cursor="", **data)

    async def alerts(self, request: Request) -> Response:
        kind, text = request.query_params.get("kind") or None, request.query_params.get("q") or None
        rows = await asyncio.to_thread(self.alerts_data, kind, text)
        return self.render(request, "alerts.html", "alerts", "*", cursor="", alerts=rows, kind=kind or "",
                           q=text or "", kinds=sorted(set(views.ALERT_EVENTS.values()) | {"quarantine", "escalation"}))


def _wait(entry: dict[str, Any], now: float) -> float | None:
    from attractor import clock

    if not entry.get("enqueued_at"):
        return None
    claimed = next((h.split(" ", 1)[0] for h in entry.get("history") or [] if "-> processing" in h), None)
    end = clock.parse_iso(claimed) if claimed else now if entry.get("state") == "queued" else None
    return None if end is None else round(end - clock.parse_iso(entry["enqueued_at"]), 2)


# --- the JSON API ------------------------------------------------------------------------

class Api:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.source = pages.source

    async def runs(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(self.pages.overview_data))

    async def run(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(self.source.report, request.path_params["run"]))

    async def tree(self, request: Request) -> Response:
        run_id = request.path_params["run"]
        return JSONResponse(await asyncio.to_thread(lambda: views.tree(self.source.report(run_id))))

    async def timeline(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(self.pages.timeline_data, request.path_params["run"]))

    async def events(self, request: Request) -> Response:
        after = _int_param(request, "after", 0)
        limit = _int_param(request, "limit", 0) or None
        return JSONResponse(await asyncio.to_thread(self.source.events, request.path_params["run"], after, limit))

    async def queue(self, request: Request) -> Response:
        """`attractor merge-queue list --json`, over every known project: each entry also names its
        project and state directory."""
        return JSONResponse({"schema": 1, "entries": await asyncio.to_thread(self.source.queue)})

    async def costs(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(lambda: views.costs(self.pages.reports())))

    async def alerts(self, request: Request) -> Response:
        kind, text = request.query_params.get("kind") or None, request.query_params.get("q") or None
        return JSONResponse(await asyncio.to_thread(self.pages.alerts_data, kind, text))

    async def action(self, request: Request) -> Response:
        from attractor.layers import actions

        run_id, action = request.path_params["run"], request.path_params["action"]
        if action not in actions.ACTIONS:
            return JSONResponse({"error": f"unknown action {action!r}; one of: {', '.join(actions.ACTIONS)}"},
                                status_code=404)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return JSONResponse({"error": f"the request body is not JSON: {exc}"}, status_code=400)
        allowed = {"node", "reply", "text", "role", "name", "escalation", "reason"}
        if not isinstance(body, dict) or set(body) - allowed:
            extra = sorted(set(body) - allowed) if isinstance(body, dict) else []
            return JSONResponse({"error": f"the body must be an object with only {', '.join(sorted(allowed))}"
                                 + (f"; not {', '.join(extra)}" if extra else "")}, status_code=400)
        where = request.client.host if request.client else None
        by = actions.who("dashboard", where)
        result = await asyncio.to_thread(self.source.act, run_id, action, body, by)
        return JSONResponse(result)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"?{name}= must be a whole number, not {raw!r}") from None
    if value < 0:
        raise UsageError(f"?{name}= must be 0 or more, not {value}")
    return value


# --- the live feed -----------------------------------------------------------------------

def parse_cursor(text: str | None) -> dict[str, int]:
    """`run:id,run:id` (what each event's SSE id says) as {run: last id seen}."""
    seen: dict[str, int] = {}
    for part in (text or "").split(","):
        run, sep, number = part.strip().rpartition(":")
        if sep and run and number.isdigit():
            seen[run] = int(number)
    return seen


class _Doorbell:
    """A file-system wake-up (from watchdog's thread) that sets an asyncio event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.loop = loop
        self.event = event

    def set(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class Stream:
    def __init__(self, source: Source) -> None:
        self.source = source

    async def handle(self, request: Request) -> Response:
        wanted = request.query_params.get("run") or None
        seen = parse_cursor(request.headers.get("last-event-id") or request.query_params.get("after"))
        if wanted is not None:
            await asyncio.to_thread(self.source.find, wanted)  # 404 at once for a run that is not there
        return StreamingResponse(self.feed(request, wanted, seen), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def _runs(self, wanted: str | None) -> dict[str, Path]:
        if wanted is not None:
            place = self.source.find(wanted)
            return {wanted: cp_store.run_dir(place.state, wanted)}
        return {r["run_id"]: Path(r["state_dir"]) / "runs" / r["run_id"] for r in self.source.runs() if r["running"]}

    async def feed(self, request: Request, wanted: str | None, seen: dict[str, int]) -> AsyncIterator[str]:
        from attractor.store import wakeup

        loop = asyncio.get_running_loop()
        bell = asyncio.Event()
        tails: dict[str, cp_store.EventTail] = {}
        unwatch: dict[str, Any] = {}
        yield "retry: 1000\n\n"
        try:
            rescan_at = 0.0
            last_sent = time.monotonic()
            while True:
                if time.monotonic() >= rescan_at:
                    runs = await asyncio.to_thread(self._runs, wanted)
                    for run_id, directory in runs.items():
                        if run_id not in tails:
                            tails[run_id] = cp_store.EventTail(directory / "events.jsonl", after=seen.get(run_id, 0))
                            unwatch[run_id] = wakeup.watch_directory(directory, _Doorbell(loop, bell), modified=True)
                    rescan_at = time.monotonic() + RESCAN_SECONDS
                sent = False
                for run_id, tail in list(tails.items()):
                    for number, event in await asyncio.to_thread(tail.new_numbered):
                        seen[run_id] = number
                        cursor = ",".join(f"{r}:{n}" for r, n in seen.items() if r in tails)
                        data = json.dumps({"run_id": run_id, "id": number, "event": event}, separators=(",", ":"))
                        yield f"id: {cursor}\nevent: run-event\ndata: {data}\n\n"
                        sent = True
                if sent:
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                watched = all(unwatch.get(r) is not None for r in tails)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bell.wait(), timeout=1.0 if watched else POLL_SECONDS)
                bell.clear()
        finally:
            for stop in unwatch.values():
                wakeup.unwatch(stop)


# --- the app ------------------------------------------------------------------------------

async def _errors(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, NotFoundError) else 400
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    env = _environment()
    html = env.get_template("error.html").render(layout="base.html", title="error", message=str(exc), token="",
                                                 stream="", path=request.url.path, cursor="")
    return HTMLResponse(html, status_code=status)


def create_app(source: Source, token: str, host: str = "127.0.0.1") -> Any:
    """The ASGI app (Starlette inside the token guard)."""
    settings = Settings(token=token, host=host, source=source)
    pages = Pages(settings)
    api = Api(pages)
    routes = [
        Route("/", pages.overview),
        Route("/runs/{run}/tree", pages.tree),
        Route("/runs/{run}/timeline", pages.timeline),
        Route("/runs/{run}", lambda r: RedirectResponse(f"/runs/{r.path_params['run']}/tree", status_code=303)),
        Route("/queue", pages.queue),
        Route("/costs", pages.costs),
        Route("/alerts", pages.alerts),
        Route("/api/runs", api.runs),
        Route("/api/runs/{run}", api.run),
        Route("/api/runs/{run}/tree", api.tree),
        Route("/api/runs/{run}/timeline", api.timeline),
        Route("/api/runs/{run}/events", api.events),
        Route("/api/runs/{run}/actions/{action}", api.action, methods=["POST"]),
        Route("/api/queue", api.queue),
        Route("/api/costs", api.costs),
        Route("/api/alerts", api.alerts),
        Route("/api/stream", Stream(source).handle),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={AttractorError: _errors})
    return Guard(app, settings)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one), bound before the server starts so the URL
    printed is the one that answers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    sock.listen(128)
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Run uvicorn on `sock` until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
                            access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
