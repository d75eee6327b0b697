"""A real callstream server on a loopback socket, for tests.

uvicorn serves the real app; speech uses the doubles unless a test passes the
real providers; call control is the real twilio client against the local fake
REST API.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import websockets
from doubles import ScriptedSpeechToText, ToneTextToSpeech
from twilio_client import TwilioStream

from agent.app import create_app, stream_url
from agent.call_control import TwilioCallControl
from agent.events import FeedEvent
from agent.fake_twilio import FakeTwilioRest
from agent.feed import Feed, MemoryFeed, Subscription
from agent.flow_loader import load_flow
from agent.ports import CallStore, SpeechToText, TextToSpeech
from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.settings import Settings, load_settings
from agent.store import MemoryStore
from agent.wiring import Services
from twiml.signature import sign

ACCOUNT = "AC" + "5" * 32


@dataclass
class RunningServer:
    base: str
    settings: Settings
    services: Services
    rest: FakeTwilioRest
    events: list[FeedEvent]
    rest_base: str = ""  # the fake REST API's http://host:port

    @property
    def stream_url(self) -> str:
        return stream_url(self.base)

    @contextlib.asynccontextmanager
    async def call(
        self,
        parameters: dict[str, str] | None = None,
        *,
        lockstep: bool = True,
        signed: bool = True,
        call_sid: str | None = None,
    ) -> AsyncIterator[TwilioStream]:
        """A stream of a new call, or (`call_sid`) a further stream of that call."""
        headers = {}
        if signed and self.settings.twilio_auth_token:
            headers["X-Twilio-Signature"] = sign(self.settings.twilio_auth_token, self.stream_url)
        async with websockets.connect(self.stream_url, additional_headers=headers) as ws:
            stream = TwilioStream(ws, call_sid)
            if stream.call_sid not in self.rest.calls:
                self.rest.add_call(stream.call_sid)
            await stream.start(parameters, lockstep=lockstep)
            yield stream

    async def post(
        self, path: str, form: dict[str, str], *, signed: bool = True
    ) -> tuple[int, str]:
        """POST a Twilio webhook (signed over the public URL when a token is set)."""
        url = self.base + path
        headers = {}
        if signed and self.settings.twilio_auth_token:
            headers["X-Twilio-Signature"] = sign(self.settings.twilio_auth_token, url, form)
        async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as resp:
            return resp.status, await resp.text()

    def feed_types(self, call_sid: str) -> list[str]:
        return [e.type for e in self.events if e.call_sid == call_sid]

    def of_type(self, call_sid: str, kind: type) -> list[Any]:
        return [e for e in self.events if e.call_sid == call_sid and isinstance(e, kind)]


class RecordingFeed(MemoryFeed):
    def __init__(self, sink: list[FeedEvent]) -> None:
        super().__init__()
        self._sink = sink

    def publish(self, event: FeedEvent) -> None:
        self._sink.append(event)
        super().publish(event)


class TeeFeed:
    """Records what the session publishes, then hands it to another feed (Redis)."""

    def __init__(self, sink: list[FeedEvent], inner: Feed) -> None:
        self._sink = sink
        self.inner = inner

    def publish(self, event: FeedEvent) -> None:
        self._sink.append(event)
        self.inner.publish(event)

    def subscribe(self, call_sid: str | None = None) -> Subscription:
        return self.inner.subscribe(call_sid)

    @property
    def dropped(self) -> int:
        return self.inner.dropped


@contextlib.asynccontextmanager
async def running_server(
    *,
    tts: TextToSpeech | None = None,
    stt: SpeechToText | None = None,
    call_control: bool = True,
    archive: Any = None,
    store: CallStore | None = None,
    feed: Feed | None = None,
    stt_fallback: SpeechToText | None = None,
    tts_fallback: TextToSpeech | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    rest_token = secrets.token_hex(8)
    rest = FakeTwilioRest(ACCOUNT, rest_token)
    rest_sock = bound_socket()
    sock = bound_socket()
    base = base_url_of(sock)
    settings = load_settings({}, env_file=None).with_overrides(
        **{"public_base_url": base, "ops_token": "ops-secret", **overrides}
    )
    events: list[FeedEvent] = []
    async with serve_in_background(rest.app, rest_sock):
        control = TwilioCallControl(ACCOUNT, rest_token, base_url_of(rest_sock), backoff_s=0.001) if call_control else None
        services = Services(
            settings=settings,
            base_url=base,
            flow=load_flow(settings.flow_path),
            tts=tts or ToneTextToSpeech(),
            stt=stt if stt is not None else ScriptedSpeechToText(),
            call_control=control,
            store=store if store is not None else MemoryStore(),
            feed=RecordingFeed(events) if feed is None else TeeFeed(events, feed),
            stt_fallback=stt_fallback,
            tts_fallback=tts_fallback,
        )
        if archive is not None:
            services.archive = archive
        try:
            async with serve_in_background(create_app(settings, base, services), sock):
                yield RunningServer(base, settings, services, rest, events, base_url_of(rest_sock))
        finally:
            if control is not None:
                await control.aclose()
