"""The ASGI app: Twilio webhooks, the Media Streams socket, the ops feed, health.

Every Twilio-facing route checks `X-Twilio-Signature` when TWILIO_AUTH_TOKEN
is set (DESIGN.md): webhooks sign the exact public URL plus the POST form,
the WebSocket upgrade signs the exact `wss://host/path` with no params. A
missing or wrong signature gets 403 and nothing is started.

Webhook forms are read by agent/webhook_form.py: bounded (413 over
MAX_WEBHOOK_BYTES) and parsed without python-multipart for Twilio's
url-encoded posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from agent.archive_callbacks import handle_recording_callback
from agent.call_routes import call_routes, stream_document, stream_parameters
from agent.logs import call_logger
from agent.media_lane import MEDIA_LANE, MediaWebSocketProtocol
from agent.metrics import REGISTRY, WEBHOOK_MS, watch_event_loop
from agent.ops_http import follow_feed, is_authorized, ops_routes
from agent.session import CallSession
from agent.settings import Settings
from agent.shutdown import Drain
from agent.webhook_form import read_form
from agent.wiring import Services, build_services
from twiml import documents
from twiml.numbers import mask_number
from twiml.signature import validate_upgrade, validate_webhook

log = logging.getLogger("callstream.app")

TWIML = "text/xml"
FALLBACK_TEXT = "We're sorry, an application error occurred. Please call again later."
SSE_HEARTBEAT_S = 15.0


def stream_url(base_url: str) -> str:
    """The Media Streams URL Twilio connects to: wss:// from https:// (ws:// from http:// in development)."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :] + "/twilio/media"
    return "ws://" + base_url[len("http://") :] + "/twilio/media"


Handler = Callable[[Request], Awaitable[Response]]

def timed(route: str, handler: Handler) -> Handler:
    """Observe a webhook's handling time in callstream_webhook_latency_ms."""

    async def wrapper(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            WEBHOOK_MS.labels(route).observe((time.perf_counter() - started) * 1000)

    return wrapper


class StarletteMediaSocket:
    """Adapts a Starlette WebSocket to the session's MediaSocket port."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes | None:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes")

    async def send(self, text: str) -> None:
        await self._ws.send_text(text)

    async def send_all(self, texts: list[str]) -> None:
        for text in texts:
            await self._ws.send_text(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)

    async def close_if_open(self) -> None:
        """A session that ends on Twilio's `stop` returns without closing:
        send a close frame (1000) rather than let uvicorn drop the TCP
        connection under the peer. Nothing to do if either side closed."""
        ws = self._ws
        if ws.application_state is WebSocketState.CONNECTED and ws.client_state is WebSocketState.CONNECTED:
            try:
                await ws.close(1000, "stream over")
            except Exception as exc:  # the peer went between the check and the close
                log.debug("closing a finished media socket: %r", exc)


def create_app(settings: Settings, base_url: str, services: Services | None = None) -> Starlette:
    """`base_url` is how Twilio reaches us (PUBLIC_BASE_URL or the local address)."""
    state: dict[str, Services] = {}
    drain = Drain(settings.drain_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services or await build_services(settings, base_url)
        state["services"] = built
        app.state.services = built
        log.info("callstream ready: webhook %s/twilio/voice, stream %s", base_url, stream_url(base_url))
        ops_book = asyncio.create_task(follow_feed(built), name="ops-calls")
        loop_lag = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        try:
            yield
        finally:
            for task in (ops_book, loop_lag):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if services is None:
                await built.aclose()

    def svc() -> Services:
        return state["services"]

    async def signed_form(request: Request) -> dict[str, str] | None:
        """The POST form if its signature is valid (or signatures are off), else None."""
        params = await read_form(request)
        if not settings.validate_signatures:
            return params
        url = base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("x-twilio-signature")
        assert settings.twilio_auth_token
        if validate_webhook(settings.twilio_auth_token, url, params, signature):
            return params
        call_logger(params.get("CallSid", "-"), "callstream.app").warning(
            "%s %s: %s X-Twilio-Signature: 403",
            request.method,
            request.url.path,
            "missing" if not signature else "wrong",
        )
        return None

    def forbidden() -> Response:
        return PlainTextResponse("invalid X-Twilio-Signature\n", status_code=403)

    async def voice(request: Request) -> Response:
        """Incoming (or outbound-answered) call: connect it to our Media Stream."""
        params = await signed_form(request)
        if params is None:
            return forbidden()
        call_sid = params.get("CallSid", "-")
        clog = call_logger(call_sid, "callstream.app")
        if drain.started:
            # Twilio answers an error with the number's fallback URL: another instance
            clog.warning("shutting down: new call refused (503)")
            return PlainTextResponse("shutting down\n", status_code=503, headers={"Retry-After": "1"})
        try:
            parameters = stream_parameters(
                params, resume_state=request.query_params.get("resume_state", "")
            )
            twiml = stream_document(settings, base_url, stream_url(base_url), parameters)
            clog.info(
                "incoming call from %s to %s: connecting the stream",
                mask_number(params.get("From", "")),
                mask_number(params.get("To", "")),
            )
        except Exception:
            clog.exception("could not answer the call: fallback TwiML")
            twiml = documents.say_and_hangup(FALLBACK_TEXT)
        return Response(twiml, media_type=TWIML)

    async def hangup(request: Request) -> Response:
        """The end of a voicemail with nowhere to go next."""
        if await signed_form(request) is None:
            return forbidden()
        return Response(documents.hangup(), media_type=TWIML)

    async def recording(request: Request) -> Response:
        """Recording status callback → an archive job (agent/archive_callbacks.py)."""
        params = await signed_form(request)
        if params is None:
            return forbidden()
        return await handle_recording_callback(params, request.query_params, svc().store, svc().archive)

    async def media(websocket: WebSocket) -> None:
        if settings.validate_signatures:
            assert settings.twilio_auth_token
            signature = websocket.headers.get("x-twilio-signature")
            if not validate_upgrade(settings.twilio_auth_token, stream_url(base_url), signature):
                log.warning(
                    "media socket upgrade with %s X-Twilio-Signature: 403",
                    "missing" if not signature else "wrong",
                )
                await websocket.close(code=1008)  # before accept: the handshake gets 403
                return
        await websocket.accept()
        # served by agent.media_lane.MediaWebSocketProtocol: the session skips the ASGI hops
        lane = websocket.scope.get("extensions", {}).get(MEDIA_LANE)
        socket = lane.direct() if isinstance(lane, MediaWebSocketProtocol) else StarletteMediaSocket(websocket)
        session = CallSession(svc().session_deps(), socket)
        svc().sessions.add(session)
        try:
            await session.run()
        finally:
            svc().sessions.discard(session)
            await socket.close_if_open()

    def ops_authorized(request: Request) -> bool:
        # X-Ops-Token, Authorization: Bearer, ?token=, or the ops page's cookie
        return is_authorized(request, settings.ops_token)

    async def ops_events(request: Request) -> Response:
        """Server-sent events: the live feed, optionally for one call."""
        if not ops_authorized(request):
            return PlainTextResponse(
                "ops token required (CALLSTREAM_OPS_TOKEN; header X-Ops-Token or ?token=)\n",
                status_code=401,
            )
        call_sid = request.query_params.get("call_sid") or None
        subscription = svc().feed.subscribe(call_sid)

        async def stream() -> AsyncIterator[bytes]:
            events = aiter(subscription)
            try:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(anext(events), SSE_HEARTBEAT_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    except StopAsyncIteration:
                        return
                    yield b"event: " + event.type.encode() + b"\ndata: " + event.to_json() + b"\n\n"
            finally:
                await subscription.aclose()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        """Prometheus text format (agent/metrics.py)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        ready = "services" in state and not drain.started
        return JSONResponse(
            {"ready": ready, "calls": len(svc().sessions) if ready else 0},
            status_code=200 if ready else 503,
        )

    async def hand_over_calls() -> int:
        """Drain deadline: each call still here reconnects to the public URL at its state."""
        moved = 0
        for session in list(svc().sessions):
            parameters = session.resume_parameters()
            if parameters is None:
                continue
            session.hand_over(
                stream_document(settings, base_url, stream_url(base_url), parameters), parameters["resume_state"]
            )
            moved += 1
        return moved

    async def drain_app() -> None:
        """SIGTERM (agent/shutdown.py): readyz fails, calls finish up to the deadline."""
        await drain.run(lambda: svc().sessions if "services" in state else (), hand_over_calls)

    app = Starlette(
        routes=[
            Route("/twilio/voice", timed("voice", voice), methods=["POST"]),
            *call_routes(settings, base_url, stream_url(base_url), svc, signed_form, timed),
            Route("/twilio/hangup", timed("hangup", hangup), methods=["POST"]),
            Route("/twilio/recording", timed("recording", recording), methods=["POST"]),
            WebSocketRoute("/twilio/media", media),
            Route("/ops/events", ops_events),
            *ops_routes(settings.ops_token, svc, secure_cookie=base_url.startswith("https://")),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.drain = drain_app
    return app
