"""Twilio running TwiML for one simulated call, on the call's media timeline.

The replay tool's stand-in for Twilio's call engine: it runs the documents our
server answers with (webhook responses and REST call updates) verb by verb,
the way Twilio does, so a replayed call can leave the stream and come back
(a transfer nobody answers, a voicemail that resumes the agent) and so the
agent can speak through Twilio (`<Say>`, CALLSTREAM_SPEECH=twiml).

    <Connect><Stream>   opens a bidirectional stream; the document waits until
                        the server closes it ("The only way Twilio executes
                        TwiML instructions after <Connect><Stream> is if your
                        server closes the WebSocket connection")
    <Start><Stream>     opens a one-way stream and goes on at once; it lasts
                        until the call ends or <Stop><Stream name>
    <Say>               rendered with the offline TTS onto the agent track
    <Pause>, <Redirect> as Twilio; a Redirect POSTs (signed) and runs the answer
    <Gather>            DTMF: nested Say/Pause play, a key stops them; Digits
                        POSTed to `action` at numDigits / finishOnKey / timeout
    <Dial>              the outcome (transfer:… / conference:…); with the
                        fixture's `dial_status` (busy, no-answer, failed) and
                        an `action`, Twilio rings (no-answer: `timeout` s),
                        then POSTs DialCallStatus and runs the answer
    <Record>            outcome voicemail; with the fixture's `follow_record`
                        and an `action`, the recording ends after `timeout` s
                        of caller silence (or maxLength) and the action runs
    <Hangup>, <Reject>, the end of a document: the call ends

A REST update replaces the running document at once (a Say stops, a
bidirectional stream is stopped; a one-way stream goes on). Time advances only
through `step(now_ms)`, called once per 20 ms frame by the simulated call.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from xml.etree import ElementTree

from media.frames import FRAME_BYTES

log = logging.getLogger("callstream.replay")

RING_MS = {"busy": 2000, "failed": 500, "canceled": 500}  # no-answer rings Dial's timeout
DIAL_ANSWERED = ("answered", "completed")
MAX_VERBS_PER_STEP = 50  # a document that redirects to itself at once is a server bug


class CallHost(Protocol):
    """What the runner needs from the simulated call around it."""

    async def fetch(self, url: str, params: dict[str, str]) -> str:
        """POST a Twilio request (signed) to one of our URLs; the TwiML answered."""

    async def open_stream(
        self, url: str, parameters: dict[str, str], *, bidirectional: bool, name: str | None
    ) -> None: ...

    async def stop_stream(self, *, bidirectional: bool) -> None:
        """Twilio stops the stream: `stop`, then the socket closes."""

    def stream_open(self, *, bidirectional: bool) -> bool: ...

    async def synthesize(self, text: str, voice: str, language: str) -> bytes: ...

    def silence_ends(self, start_ms: int, silence_ms: int, max_ms: int) -> int:
        """When a recording started at `start_ms` stops: the caller has been
        silent `silence_ms`, or `max_ms` have passed."""


@dataclass
class _Say:
    audio: bytes
    pos: int = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.audio)


@dataclass
class _Pause:
    until_ms: int


@dataclass
class _Connect:
    pass


@dataclass
class _Gather:
    action: str
    num_digits: int | None
    timeout_ms: int
    finish_on_key: str
    on_empty: bool
    nested: deque[ElementTree.Element]
    playing: _Say | _Pause | None = None
    digits: str = ""
    deadline_ms: int | None = None


@dataclass
class _Timer:
    until_ms: int
    then: Callable[[int], Awaitable[None]]


_Activity = _Say | _Pause | _Connect | _Gather | _Timer


@dataclass
class TwimlRunner:
    host: CallHost
    dial_status: str | None = None
    follow_record: bool = False
    outcome: str | None = None
    ended: bool = False
    end_reason: str | None = None
    error: str | None = None
    clears_ms: list[int] = field(default_factory=list)  # a Say stopped while playing
    agent_starts_ms: list[int] = field(default_factory=list)  # Twilio's speech began
    documents: int = 0
    _verbs: deque[ElementTree.Element] = field(default_factory=deque)
    _current: _Activity | None = None
    _updates: deque[dict[str, str]] = field(default_factory=deque)
    _played_last_frame: bool = False

    # --- from outside ----------------------------------------------------------------
    def update(self, form: dict[str, str]) -> None:
        """A REST call update; applied at the next `step`."""
        self._updates.append(dict(form))

    async def load(self, twiml: str, now_ms: int) -> None:
        """Run `twiml` from now on (a webhook's answer, or an update's)."""
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError as exc:
            self._fail(f"the server answered with invalid TwiML ({exc}): {twiml[:200]!r}")
            return
        if root.tag != "Response":
            self._fail(f"the server answered with something other than <Response>: {twiml[:200]!r}")
            return
        await self._interrupt(now_ms)
        self.documents += 1
        self._verbs = deque(root)

    async def step(self, now_ms: int) -> None:
        """Apply REST updates, then run verbs until one has to wait."""
        while self._updates and not self.ended:
            await self._apply(self._updates.popleft(), now_ms)
        for _ in range(MAX_VERBS_PER_STEP):
            if self.ended:
                return
            current = self._current
            if current is None:
                if not self._verbs:
                    self._end("twiml_ended", outcome=self.outcome or "hangup")  # Twilio hangs up
                    return
                await self._start(self._verbs.popleft(), now_ms)
                continue
            done = await self._advance(current, now_ms)
            if self._current is not current:
                continue  # it loaded what comes next (a callback's answer)
            if not done:
                return
            self._current = None
        self._fail("TwiML kept redirecting without waiting (a loop?)")

    @property
    def gathering(self) -> bool:
        return isinstance(self._current, _Gather)

    async def key(self, digit: str, now_ms: int) -> bool:
        """A key from the caller: True if a `<Gather>` took it."""
        gather = self._current
        if not isinstance(gather, _Gather):
            return False
        if isinstance(gather.playing, _Say) and not gather.playing.done:
            self.clears_ms.append(now_ms)  # a key stops the nested Say
        gather.playing = None
        gather.nested.clear()
        if digit == gather.finish_on_key:
            await self._gathered(gather, now_ms, finished_on_key=True)
            return True
        gather.digits += digit
        gather.deadline_ms = now_ms + gather.timeout_ms
        if gather.num_digits is not None and len(gather.digits) >= gather.num_digits:
            await self._gathered(gather, now_ms)
        return True

    def agent_frame(self) -> bytes:
        """Twilio's speech for this 20 ms frame (empty when silent)."""
        say = self._current
        if isinstance(say, _Gather):
            say = say.playing
        if not isinstance(say, _Say) or say.done:
            self._played_last_frame = False
            return b""
        chunk = say.audio[say.pos : say.pos + FRAME_BYTES]
        say.pos += len(chunk)
        self._played_last_frame = True
        return chunk

    # --- verbs -------------------------------------------------------------------------
    async def _start(self, verb: ElementTree.Element, now: int) -> None:
        tag = verb.tag
        if tag == "Say":
            self._current = await self._say(verb, now)
        elif tag == "Pause":
            self._current = _Pause(now + 1000 * int(verb.get("length", "1")))
        elif tag == "Gather":
            num_digits = verb.get("numDigits")
            self._current = _Gather(
                action=verb.get("action", ""),
                num_digits=int(num_digits) if num_digits else None,
                timeout_ms=1000 * int(verb.get("timeout", "5")),
                finish_on_key=verb.get("finishOnKey", "#"),
                on_empty=verb.get("actionOnEmptyResult") == "true",
                nested=deque(child for child in verb if child.tag in ("Say", "Pause")),
            )
        elif tag == "Redirect":
            await self.load(await self.host.fetch((verb.text or "").strip(), {}), now)
        elif tag in ("Connect", "Start"):
            stream = verb.find("Stream")
            if stream is None:
                self._fail(f"<{tag}> without <Stream>")
                return
            parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
            bidirectional = tag == "Connect"
            await self.host.open_stream(
                stream.get("url", ""), parameters, bidirectional=bidirectional, name=stream.get("name")
            )
            if bidirectional:
                self._current = _Connect()
        elif tag == "Stop":
            if verb.find("Stream") is not None:
                await self.host.stop_stream(bidirectional=False)
        elif tag == "Dial":
            self._dial(verb, now)
        elif tag == "Record":
            self._record(verb, now)
        elif tag in ("Hangup", "Reject"):
            self._end("completed", outcome="hangup")
        else:
            self._fail(f"the replay does not emulate <{tag}>")

    async def _say(self, verb: ElementTree.Element, now: int) -> _Say:
        audio = await self.host.synthesize(
            (verb.text or "").strip(), verb.get("voice", ""), verb.get("language", "en-US")
        )
        if not self._played_last_frame:
            self.agent_starts_ms.append(now)
        return _Say(audio)

    async def _advance(self, act: _Activity, now: int) -> bool:
        """Move `act` on to `now`; True once it is over."""
        if isinstance(act, _Say):
            return act.done
        if isinstance(act, _Pause):
            return now >= act.until_ms
        if isinstance(act, _Connect):
            return not self.host.stream_open(bidirectional=True)
        if isinstance(act, _Timer):
            if now < act.until_ms:
                return False
            self._current = None
            await act.then(now)  # loads what comes next
            return False
        return await self._advance_gather(act, now)

    async def _advance_gather(self, gather: _Gather, now: int) -> bool:
        while gather.deadline_ms is None:
            playing = gather.playing
            if playing is not None and not (
                playing.done if isinstance(playing, _Say) else now >= playing.until_ms
            ):
                return False
            if gather.nested:
                child = gather.nested.popleft()
                gather.playing = (
                    await self._say(child, now)
                    if child.tag == "Say"
                    else _Pause(now + 1000 * int(child.get("length", "1")))
                )
                continue
            gather.playing = None
            gather.deadline_ms = now + gather.timeout_ms  # "after the nested verbs"
        if now < gather.deadline_ms:
            return False
        if gather.digits or gather.on_empty:
            await self._gathered(gather, now)
            return False
        return True  # no input: on to the next verb

    async def _gathered(self, gather: _Gather, now: int, *, finished_on_key: bool = False) -> None:
        params = {"Digits": gather.digits}
        if finished_on_key:
            params["FinishedOnKey"] = gather.finish_on_key
        self._current = None
        await self.load(await self.host.fetch(gather.action, params), now)

    def _dial(self, verb: ElementTree.Element, now: int) -> None:
        target = (verb.text or "").strip()
        for noun in verb:
            if noun.tag == "Conference":
                self._end("completed", outcome=f"conference:{(noun.text or '').strip()}")
                return
            if noun.tag in ("Number", "Sip", "Client"):
                target = (noun.text or "").strip()
        self.outcome = f"transfer:{target}"
        status = self.dial_status
        action = verb.get("action")
        if status is None or status in DIAL_ANSWERED or not action:
            self._end("completed")  # the caller talks to whoever answered
            return
        ring_ms = RING_MS.get(status, 1000 * int(verb.get("timeout", "30")))

        async def dial_ended(at: int) -> None:
            log.info("transfer to %s: %s after %d ms", target, status, ring_ms)
            params = {
                "DialCallStatus": status,
                "DialCallSid": "CA" + secrets.token_hex(16),
                "DialCallDuration": "0",
                "DialBridged": "false",
            }
            await self.load(await self.host.fetch(action, params), at)

        self._current = _Timer(now + ring_ms, dial_ended)

    def _record(self, verb: ElementTree.Element, now: int) -> None:
        self.outcome = "voicemail"
        action = verb.get("action")
        if not (self.follow_record and action):
            self._end("completed")
            return
        silence_ms = 1000 * int(verb.get("timeout", "5"))
        max_ms = 1000 * int(verb.get("maxLength", "3600"))
        until = self.host.silence_ends(now, silence_ms, max_ms)

        async def recorded(at: int) -> None:
            params = {
                "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE" + secrets.token_hex(16),
                "RecordingSid": "RE" + secrets.token_hex(16),
                "RecordingDuration": str((at - now) // 1000),
            }
            await self.load(await self.host.fetch(action, params), at)

        self._current = _Timer(until, recorded)

    # --- changes from outside -----------------------------------------------------------
    async def _apply(self, form: dict[str, str], now: int) -> None:
        if form.get("Status") in ("completed", "canceled"):
            await self._interrupt(now)
            self._end("completed", outcome="hangup")
        elif "Twiml" in form:
            await self.load(form["Twiml"], now)
        elif "Url" in form:
            await self.load(await self.host.fetch(form["Url"], {}), now)

    async def _interrupt(self, now: int) -> None:
        """The running document is replaced: a Say stops, a Connect stream ends."""
        current = self._current
        say = current.playing if isinstance(current, _Gather) else current
        if isinstance(say, _Say) and 0 < say.pos < len(say.audio):
            self.clears_ms.append(now)
        if isinstance(current, _Connect) and self.host.stream_open(bidirectional=True):
            await self.host.stop_stream(bidirectional=True)
        self._current = None
        self._verbs.clear()

    def _end(self, reason: str, *, outcome: str | None = None) -> None:
        if outcome is not None:
            self.outcome = outcome
        self.ended = True
        self.end_reason = reason
        self._current = None
        self._verbs.clear()

    def _fail(self, message: str) -> None:
        log.error("replay: %s", message)
        self.error = message
        self._end("error")
