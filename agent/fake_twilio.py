"""A local stand-in for the Twilio REST API, for replay and tests.

It speaks the parts of `https://api.twilio.com/2010-04-01` callstream uses,
with Twilio's own shapes: HTTP basic auth (AccountSid:AuthToken) else 401 with
code 20003; `POST /Accounts/{AccountSid}/Calls/{CallSid}.json` with `Twiml`,
`Url` or `Status` updates a live call and returns the Call resource; an
unknown call is 404 (20404); a call no longer in progress is 400 (21220).
`POST /Accounts/{AccountSid}/Calls.json` creates an outbound call.
Recordings: `GET /Accounts/{AccountSid}/Recordings/{RecordingSid}.wav` serves
the media (`add_recording`), `GET ….json` the resource, `DELETE ….json`
removes it (204), as Twilio's Recording resource does; unknown is 404 (20404).
Tests queue failures (`fail_next`) to see how the agent copes with 20429 or
a 5xx. Every accepted update is handed to `on_update`, which the replay tool
uses to end the stream the way Twilio would.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from xml.etree import ElementTree

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

E164 = re.compile(r"^\+[1-9]\d{1,14}$")


@dataclass
class FakeCall:
    sid: str
    account_sid: str
    from_: str = "+15550000000"
    to: str = "+15550000001"
    direction: str = "inbound"
    status: str = "in-progress"
    updates: list[dict[str, str]] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "from": self.from_,
            "to": self.to,
            "status": self.status,
            "direction": self.direction,
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}.json",
        }


@dataclass(frozen=True)
class QueuedFailure:
    status: int
    code: int
    message: str
    call_sid: str | None = None


def outcome_of(update: dict[str, str]) -> str:
    """What a call update does, in fixture `expect.outcome` terms."""
    if update.get("Status") == "completed":
        return "hangup"
    twiml = update.get("Twiml")
    if not twiml:
        return f"redirect:{update.get('Url', '')}"
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        return "invalid-twiml"
    for verb in root:
        if verb.tag == "Dial":
            for noun in verb:
                if noun.tag == "Conference":
                    return f"conference:{(noun.text or '').strip()}"
                if noun.tag in ("Number", "Sip", "Client"):
                    return f"transfer:{(noun.text or '').strip()}"
            return f"transfer:{(verb.text or '').strip()}"
        if verb.tag == "Record":
            return "voicemail"
        if verb.tag == "Hangup":
            return "hangup"
    first = root[0].tag if len(root) else "empty"
    return f"twiml:{first}"


OnUpdate = Callable[[FakeCall, dict[str, str]], Awaitable[None] | None]


class FakeTwilioRest:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.calls: dict[str, FakeCall] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.on_update: OnUpdate | None = None
        self.recordings: dict[str, bytes] = {}  # RecordingSid → WAV
        self.deleted_recordings: list[str] = []
        self._failures: deque[QueuedFailure] = deque()
        self.app = Starlette(
            routes=[
                Route(
                    "/2010-04-01/Accounts/{account}/Calls/{call_sid}.json",
                    self._call_instance,
                    methods=["POST", "GET"],
                ),
                Route("/2010-04-01/Accounts/{account}/Calls.json", self._calls, methods=["POST"]),
                Route("/2010-04-01/Accounts/{account}/Recordings/{recording_sid}.wav", self._recording_media, methods=["GET"]),
                Route(
                    "/2010-04-01/Accounts/{account}/Recordings/{recording_sid}.json",
                    self._recording_instance,
                    methods=["GET", "DELETE"],
                ),
            ]
        )

    # --- test controls ----------------------------------------------------------
    def add_call(self, sid: str, **fields: Any) -> FakeCall:
        call = FakeCall(sid=sid, account_sid=self.account_sid, **fields)
        self.calls[sid] = call
        return call

    def add_recording(self, sid: str, wav: bytes) -> None:
        self.recordings[sid] = wav

    def fail_next(
        self, status: int, code: int, message: str = "injected", *, times: int = 1, call_sid: str | None = None
    ) -> None:
        for _ in range(times):
            self._failures.append(QueuedFailure(status, code, message, call_sid))

    # --- Twilio's API ---------------------------------------------------------------
    @staticmethod
    def _error(status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status_code=status,
        )

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    def _take_failure(self, call_sid: str | None) -> QueuedFailure | None:
        for failure in self._failures:
            if failure.call_sid in (None, call_sid):
                self._failures.remove(failure)
                return failure
        return None

    async def _call_instance(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))
        if not self._authorized(request) or request.path_params["account"] != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        sid = request.path_params["call_sid"]
        failure = self._take_failure(sid)
        if failure is not None:
            return self._error(failure.status, failure.code, failure.message)
        call = self.calls.get(sid)
        if call is None:
            return self._error(404, 20404, f"The requested resource {request.url.path} was not found")
        if request.method == "GET":
            return JSONResponse(call.resource())
        if call.status not in ("queued", "ringing", "in-progress"):
            return self._error(400, 21220, "Call is not in-progress. Cannot redirect.")
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not ({"Twiml", "Url", "Status"} & form.keys()):
            return self._error(400, 21201, "No 'Twiml', 'Url' or 'Status' parameter")
        if "Twiml" in form:
            try:
                ElementTree.fromstring(form["Twiml"])
            except ElementTree.ParseError:
                return self._error(400, 12100, "Document parse failure")
        call.updates.append(form)
        if form.get("Status") in ("completed", "canceled"):
            call.status = "completed"
        if self.on_update is not None:
            result = self.on_update(call, form)
            if result is not None:
                await result
        return JSONResponse(call.resource())

    async def _calls(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))
        if not self._authorized(request) or request.path_params["account"] != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        failure = self._take_failure(None)
        if failure is not None:
            return self._error(failure.status, failure.code, failure.message)
        form = {k: str(v) for k, v in (await request.form()).items()}
        to, from_ = form.get("To", ""), form.get("From", "")
        if not (E164.match(to) or to.startswith("sip:") or to.startswith("client:")):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not (form.get("Url") or form.get("Twiml")):
            return self._error(400, 21205, "Url parameter is required.")
        sid = "CA" + secrets.token_hex(16)
        call = self.add_call(sid, from_=from_, to=to, direction="outbound-api", status="queued")
        call.created = form
        return JSONResponse(call.resource(), status_code=201)

    # --- recordings ------------------------------------------------------------------
    def _recording_request(self, request: Request) -> tuple[str, Response | None]:
        self.requests.append((request.method, request.url.path))
        sid = request.path_params["recording_sid"]
        if not self._authorized(request) or request.path_params["account"] != self.account_sid:
            return sid, self._error(401, 20003, "Authenticate")
        failure = self._take_failure(sid)
        if failure is not None:
            return sid, self._error(failure.status, failure.code, failure.message)
        if sid not in self.recordings:
            return sid, self._error(404, 20404, f"The requested resource {request.url.path} was not found")
        return sid, None

    async def _recording_media(self, request: Request) -> Response:
        sid, refused = self._recording_request(request)
        if refused is not None:
            return refused
        return Response(self.recordings[sid], media_type="audio/x-wav")

    async def _recording_instance(self, request: Request) -> Response:
        sid, refused = self._recording_request(request)
        if refused is not None:
            return refused
        if request.method == "DELETE":
            del self.recordings[sid]
            self.deleted_recordings.append(sid)
            return Response(status_code=204)
        return JSONResponse({"sid": sid, "account_sid": self.account_sid, "status": "completed"})
