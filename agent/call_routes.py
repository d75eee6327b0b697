"""Twilio's callbacks around the stream: call status, transfer results, and
what a call does next when the agent is not streaming to it.

    POST /twilio/status       call status callbacks (statusCallback): logged,
                              published as `call.status`, each once however often
                              Twilio retries it; a final status ends a stream
                              still open for the call. 204, as Twilio allows
                              ("respond with 204 No Content and an empty body").
    POST /twilio/dial-result  `<Dial action>`: the transfer ended. Answered →
                              hang up; busy / no-answer / failed / canceled →
                              a new stream for the same call that resumes the
                              dialog at the transfer's `on_fail` state; published
                              once as `call.transfer_result`.
    POST /twilio/continue     what follows `<Connect><Stream>` (the stream ended
                              without a REST update: continue with the pending
                              hand-on, else apologise and hang up), and the hold
                              loop of CALLSTREAM_SPEECH=twiml.
    POST /twilio/said         twiml mode: a `<Say>` is over (`?say_id=N`, with
                              `Digits` when a key ended it).
    POST /twilio/keys         twiml mode: a key while the agent was silent.

Every route checks X-Twilio-Signature (app.py `signed_form`). Callbacks with a
side effect are claimed once in the store (`CallStore.claim_once`), so a
retried callback gets the same answer and is not processed twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent.events import CallStatusEvent, FeedEvent, TransferResultEvent
from agent.handoff import take_handoff
from agent.logs import call_logger
from agent.session import CallSession
from agent.settings import Settings
from agent.speaker_twiml import HOLD_S, CallbackUrls
from agent.wiring import Services
from twiml import documents
from twiml.numbers import mask_number

TWIML = "text/xml"
FALLBACK_TEXT = "We're sorry, an application error occurred. Please call again later."
CLAIM_TTL_S = 24 * 3600

# Twilio's CallStatus values after which the call is over
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
# DialCallStatus values of a transfer that reached someone
DIAL_ANSWERED = frozenset({"completed", "answered"})
_DTMF = re.compile(r"[^0-9*#A-D]")

SignedForm = Callable[[Request], Awaitable[dict[str, str] | None]]
Handler = Callable[[Request], Awaitable[Response]]
Timed = Callable[[str, Handler], Handler]


def _event(kind: type[FeedEvent], call_sid: str, **fields: object) -> FeedEvent:
    return kind(call_sid=call_sid, t=int(time.time() * 1000), **fields)


@dataclass(frozen=True)
class StatusCallback:
    """The parts of Twilio's status callback we use (form fields, parsed once)."""

    call_sid: str
    status: str
    sequence: str
    direction: str
    from_: str
    to: str
    duration_s: int | None

    @classmethod
    def from_form(cls, form: dict[str, str]) -> StatusCallback:
        duration = form.get("CallDuration", "")
        return cls(
            call_sid=form.get("CallSid", ""),
            status=form.get("CallStatus", ""),
            sequence=form.get("SequenceNumber", ""),
            direction=form.get("Direction", ""),
            from_=form.get("From", ""),
            to=form.get("To", ""),
            duration_s=int(duration) if duration.isascii() and duration.isdigit() else None,  # not '²'
        )

    @property
    def claim_key(self) -> str:
        """Idempotency: Twilio's (CallSid, CallStatus, SequenceNumber)."""
        return f"status:{self.call_sid}:{self.status}:{self.sequence}"


def stream_parameters(form: dict[str, str], **extra: str) -> dict[str, str]:
    """The `<Parameter>`s every stream of a call carries (start.customParameters)."""
    return {"From": form.get("From", ""), "To": form.get("To", ""), "CallSid": form.get("CallSid", "")} | extra


def stream_document(settings: Settings, base_url: str, stream_url: str, parameters: dict[str, str]) -> str:
    """The TwiML that (re)connects a call to our Media Streams socket.

    CALLSTREAM_SPEECH=stream: `<Connect><Stream>` (bidirectional), then a
    `<Redirect>` to /twilio/continue for a stream our server ends. twiml: a
    one-way `<Start><Stream>` and the hold loop; the agent speaks by updates.
    """
    urls = CallbackUrls(base_url)
    if settings.speech == "twiml":
        return documents.start_stream_and_hold(
            stream_url, parameters, keys_url=urls.keys, continue_url=urls.continue_, hold_s=HOLD_S
        )
    return documents.connect_stream(stream_url, parameters, then_redirect=urls.continue_)


def call_routes(
    settings: Settings,
    base_url: str,
    stream_url: str,
    services: Callable[[], Services],
    signed_form: SignedForm,
    timed: Timed,
) -> list[Route]:
    """The routes above, for `create_app` (it owns the signature check and
    the latency metric)."""

    def forbidden() -> Response:
        return PlainTextResponse("invalid X-Twilio-Signature\n", status_code=403)

    def twiml(body: str) -> Response:
        return Response(body, media_type=TWIML)

    def sessions_of(call_sid: str) -> list[CallSession]:
        return [s for s in services().sessions if s.call_sid == call_sid]

    async def first_claim(key: str, clog: logging.LoggerAdapter[logging.Logger]) -> bool:
        """True the first time; a store failure counts as first (at least once)."""
        try:
            return await services().store.claim_once(key, CLAIM_TTL_S)
        except Exception:
            clog.exception("idempotency store failed: handling the callback anyway")
            return True

    async def status(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        cb = StatusCallback.from_form(form)
        clog = call_logger(cb.call_sid or "-", "callstream.status")
        if not cb.call_sid or not cb.status:
            clog.warning("status callback without CallSid or CallStatus: 400")
            return PlainTextResponse("CallSid and CallStatus are required\n", status_code=400)
        if not await first_claim(cb.claim_key, clog):
            clog.info("status %s (#%s) again: already handled", cb.status, cb.sequence or "-")
            return Response(status_code=204)
        clog.info(
            "call %s (#%s, %s) from %s to %s%s",
            cb.status, cb.sequence or "-", cb.direction or "-",
            mask_number(cb.from_), mask_number(cb.to),
            f", {cb.duration_s} s" if cb.duration_s is not None else "",
        )
        svc = services()
        svc.feed.publish(
            _event(
                CallStatusEvent, cb.call_sid, status=cb.status, sequence=cb.sequence,
                direction=cb.direction, duration_s=cb.duration_s,
            )
        )
        if cb.status in FINAL_STATUSES:
            for session in sessions_of(cb.call_sid):
                session.end_from_twilio(cb.status)
        return Response(status_code=204)

    async def dial_result(request: Request) -> Response:
        """`<Dial action>`: the transfer ended. If nobody took the call, resume the
        agent at the transfer's `on_fail` state on a new stream (same CallSid)."""
        form = await signed_form(request)
        if form is None:
            return forbidden()
        call_sid = form.get("CallSid", "-")
        status = form.get("DialCallStatus", "") or "failed"
        clog = call_logger(call_sid, "callstream.app")
        key = f"dial:{call_sid}:{form.get('DialCallSid') or status}"
        first = await first_claim(key, clog)
        if status in DIAL_ANSWERED or form.get("CallStatus") == "completed":
            if first:
                clog.info("transfer finished (%s): hanging up", status)
                services().feed.publish(_event(TransferResultEvent, call_sid, status=status))
            return twiml(documents.hangup())
        if first:
            clog.info("transfer not answered (%s): resuming the agent", status)
            services().feed.publish(_event(TransferResultEvent, call_sid, status=status))
        else:
            clog.info("dial result %s again: same answer", status)
        parameters = stream_parameters(form, transfer_status=status)
        return twiml(stream_document(settings, base_url, stream_url, parameters))

    async def answer_from_session(call_sid: str, say_id: int | None, digits: str) -> str | None:
        for session in sessions_of(call_sid):
            answer = await session.answer_twilio(say_id, digits)
            if answer is not None:
                return answer
        return None

    async def continue_without_session(call_sid: str) -> str:
        """The stream is gone: the hand-on a failed REST update left, else goodbye."""
        clog = call_logger(call_sid, "callstream.app")
        try:
            pending = await take_handoff(services().store, call_sid)
        except Exception:
            clog.exception("could not read the pending hand-on")
            pending = None
        if pending is not None:
            clog.info("continuing with the hand-on the stream could not make")
            return pending
        clog.warning("the call's stream ended with nothing to continue with: apologising and hanging up")
        return documents.say_and_hangup(FALLBACK_TEXT)

    async def continue_call(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        call_sid = form.get("CallSid", "-")
        answer = await answer_from_session(call_sid, None, "")
        return twiml(answer if answer is not None else await continue_without_session(call_sid))

    async def said(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        call_sid = form.get("CallSid", "-")
        raw = request.query_params.get("say_id", "")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):  # '²'.isdigit() but int('²') fails
            call_logger(call_sid, "callstream.app").warning("said without a say_id: 400")
            return PlainTextResponse("say_id is required\n", status_code=400)
        digits = _DTMF.sub("", form.get("Digits", ""))
        answer = await answer_from_session(call_sid, int(raw), digits)
        return twiml(answer if answer is not None else await continue_without_session(call_sid))

    async def keys(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        call_sid = form.get("CallSid", "-")
        digits = _DTMF.sub("", form.get("Digits", ""))
        answer = await answer_from_session(call_sid, None, digits)
        return twiml(answer if answer is not None else await continue_without_session(call_sid))

    return [
        Route("/twilio/status", timed("status", status), methods=["POST"]),
        Route("/twilio/dial-result", timed("dial-result", dial_result), methods=["POST"]),
        Route("/twilio/continue", timed("continue", continue_call), methods=["POST"]),
        Route("/twilio/said", timed("said", said), methods=["POST"]),
        Route("/twilio/keys", timed("keys", keys), methods=["POST"]),
    ]
