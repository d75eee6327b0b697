"""The ops surface over HTTP: the page, the calls index, one call, archive files.

Every route but the static assets needs the ops token (CALLSTREAM_OPS_TOKEN):
header `X-Ops-Token`, `Authorization: Bearer …`, `?token=`, or the page's
cookie. The page's login (a form, or `/ops?token=…` once) sets an HttpOnly,
SameSite=Strict cookie holding an HMAC of the token — never the token — and
redirects so the token leaves the address bar; the page's EventSource and
fetches then carry the cookie. Without a configured token every ops route
answers 401.

`GET /ops/calls/{sid}` answers from what this instance knows: the live/recent
view folded from the feed (agent/ops.py), the dialog state in the call store
(shared over Redis: any instance can answer, sensitive slots as `***`), and
the archive through the small `ArchiveFiles` interface below.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.flow import Flow
from agent.logs import call_logger

if TYPE_CHECKING:
    from agent.wiring import Services

log = logging.getLogger("callstream.ops")

COOKIE = "callstream_ops"
STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"ops.js": "text/javascript", "ops.css": "text/css"}
ARCHIVE_FILES = ("audio.wav", "transcript.json", "transcript.vtt", "call.json")
SID = re.compile(r"^[A-Za-z0-9]{2,64}$")  # CallSids are CA + 32 hex; never a path
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


# --- the token ----------------------------------------------------------------------


def cookie_value(token: str) -> str:
    """What the page's cookie holds: derived from the token, not the token."""
    return hmac.new(token.encode(), b"callstream ops page", hashlib.sha256).hexdigest()


def is_authorized(request: Request, token: str | None) -> bool:
    if not token:
        return False
    given = (
        request.headers.get("x-ops-token")
        or request.query_params.get("token")
        or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    )
    if given:
        return hmac.compare_digest(given.encode(), token.encode())
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


# --- the archive, as the ops page needs it -----------------------------------------------


@dataclass(frozen=True)
class ArchivedCall:
    location: str  # the call's folder, or its s3://… prefix
    files: tuple[str, ...]  # names this server can serve (ARCHIVE_FILES present)


class ArchiveFiles(Protocol):
    """Where the archive keeps one call (DESIGN.md "Archive": one folder per call)."""

    async def find(self, call_sid: str, hint: str | None = None) -> ArchivedCall | None:
        """The call's archive, if stored; `hint` is the location an
        `archive.stored` event named."""
        ...

    async def open(self, call_sid: str, name: str) -> Path | None:
        """A local file to serve, or None."""
        ...


class LocalArchiveFiles:
    """A folder archive (CALLSTREAM_ARCHIVE=/path): `{yyyy}/{mm}/{dd}/{call_sid}/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _folder(self, call_sid: str, hint: str | None) -> Path | None:
        if hint:
            folder = Path(hint).resolve()
            if folder.is_relative_to(self.root) and folder.name == call_sid and folder.is_dir():
                return folder
        if not self.root.is_dir():
            return None
        return next((p for p in sorted(self.root.glob(f"*/*/*/{call_sid}"), reverse=True) if p.is_dir()), None)

    def _find(self, call_sid: str, hint: str | None) -> ArchivedCall | None:
        folder = self._folder(call_sid, hint)
        if folder is None:
            return None
        return ArchivedCall(str(folder), tuple(n for n in ARCHIVE_FILES if (folder / n).is_file()))

    async def find(self, call_sid: str, hint: str | None = None) -> ArchivedCall | None:
        return await asyncio.to_thread(self._find, call_sid, hint)

    async def open(self, call_sid: str, name: str) -> Path | None:
        if name not in ARCHIVE_FILES:
            return None
        found = await self.find(call_sid)
        if found is None or name not in found.files:
            return None
        return Path(found.location) / name


# --- views -----------------------------------------------------------------------------


def sensitive_slots_of(flow: Flow) -> set[str]:
    return {s.collect.slot for s in flow.states.values() if s.collect is not None and s.collect.sensitive}


def redacted_state(snapshot: Mapping[str, Any], flow: Flow) -> dict[str, Any]:
    """A stored dialog snapshot as ops may see it: sensitive slot values `***`
    (named sensitive in the snapshot or in the flow), nothing else private."""
    hidden = set(snapshot.get("sensitive_slots") or ()) | sensitive_slots_of(flow)
    slots = snapshot.get("slots")
    return {
        "state": snapshot.get("state"),
        "path": list(snapshot.get("path") or ()),
        "slots": {str(k): "***" if k in hidden else v for k, v in slots.items()} if isinstance(slots, dict) else {},
        "transferring": bool(snapshot.get("transferring")),
    }


def _page(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def ops_routes(token: str | None, svc: Callable[[], Services], *, secure_cookie: bool) -> list[Route]:
    """The ops routes but `/ops/events` (the SSE feed lives in agent/app.py)."""

    def unauthorized() -> Response:
        return JSONResponse({"error": "ops token required (CALLSTREAM_OPS_TOKEN)"}, status_code=401)

    def login_form(status: int, message: str = "") -> Response:
        body = _page("ops_login.html").replace("{{message}}", message)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def logged_in() -> Response:
        response = RedirectResponse("/ops", status_code=303)
        assert token
        response.set_cookie(
            COOKIE, cookie_value(token), path="/ops", httponly=True, samesite="strict", secure=secure_cookie
        )
        return response

    async def page(request: Request) -> Response:
        if "token" in request.query_params:  # a link with the token: set the cookie, drop the token from the URL
            if is_authorized(request, token):
                return logged_in()
            return login_form(401, "Wrong token.")
        if not is_authorized(request, token):
            return login_form(401, "" if token else "CALLSTREAM_OPS_TOKEN is not set on this server.")
        return HTMLResponse(_page("ops.html"), headers=SECURITY_HEADERS)

    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        if token and given and hmac.compare_digest(given.encode(), token.encode()):
            return logged_in()
        log.warning("ops login with a wrong token from %s", request.client.host if request.client else "?")
        return login_form(401, "Wrong token.")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("not found\n", status_code=404)
        return Response(_page(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)

    async def calls(request: Request) -> Response:
        if not is_authorized(request, token):
            return unauthorized()
        book = svc().calls
        return JSONResponse({"live": book.live(), "recent": book.recent()}, headers=SECURITY_HEADERS)

    async def one_call(request: Request) -> Response:
        if not is_authorized(request, token):
            return unauthorized()
        call_sid = request.path_params["call_sid"]
        if not SID.match(call_sid):
            return JSONResponse({"error": "not a CallSid"}, status_code=400)
        services = svc()
        clog = call_logger(call_sid, "callstream.ops")
        summary = services.calls.get(call_sid)
        state: dict[str, Any] | None = None
        store_error: str | None = None
        try:
            snapshot = await services.store.load(call_sid)
            if snapshot is not None:
                state = redacted_state(snapshot, services.flow)
        except Exception as exc:
            clog.warning("ops: could not read the call state from the store: %r", exc)
            store_error = "call store unavailable"
        archive: dict[str, Any] | None = None
        if services.archive_files is not None:
            hint = summary.get("archive") if summary else None
            try:
                found = await services.archive_files.find(call_sid, hint)
            except Exception as exc:
                clog.warning("ops: could not look the call up in the archive: %r", exc)
                found = None
            if found is not None:
                base = f"/ops/calls/{call_sid}/files/"
                archive = {"location": found.location, "files": {n: base + n for n in found.files}}
        if archive is None and summary and summary.get("archive"):
            archive = {"location": summary["archive"], "files": {}}
        if summary is None and state is None and archive is None:
            body: dict[str, Any] = {"error": "unknown call", "call_sid": call_sid}
            if store_error:
                body["store_error"] = store_error
            return JSONResponse(body, status_code=404, headers=SECURITY_HEADERS)
        body = {"call_sid": call_sid, "summary": summary, "state": state, "archive": archive}
        if store_error:
            body["store_error"] = store_error
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def archive_file(request: Request) -> Response:
        if not is_authorized(request, token):
            return unauthorized()
        call_sid, name = request.path_params["call_sid"], request.path_params["name"]
        files = svc().archive_files
        if not SID.match(call_sid) or files is None:
            return Response("not found\n", status_code=404)
        path = await files.open(call_sid, name)
        if path is None:
            return Response("not found\n", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    return [
        Route("/ops", page),
        Route("/ops/login", login, methods=["POST"]),
        Route("/ops/static/{name}", asset),
        Route("/ops/calls", calls),
        Route("/ops/calls/{call_sid}", one_call),
        Route("/ops/calls/{call_sid}/files/{name}", archive_file),
    ]


async def follow_feed(services: Services) -> None:
    """Fold the feed into `services.calls` for as long as the app runs."""
    subscription = services.feed.subscribe()
    book = services.calls
    try:
        async for event in subscription:
            try:
                book.apply(event)
                book.prune(event.t)
            except Exception:
                log.exception("ops: could not fold a %s event for %s", event.type, event.call_sid)
    finally:
        await subscription.aclose()
