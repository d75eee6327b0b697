"""The agent's voice rendered by Twilio (CALLSTREAM_SPEECH=twiml): `<Say voice="Polly.…">`.

For users with a Twilio account and no AWS: we only listen, through a one-way
`<Start><Stream>` (inbound audio, no marks, no clear, no outbound media), and
speak by changing what the live call does.

Theory of operation
-------------------
The call is always running one of two documents (twiml/documents.py):

    speak(N)  <Say>prompt N</Say>, then a POST to /twilio/said?say_id=N when it
              is over (a `<Redirect>`, or for prompts the caller may answer with
              keys a `<Gather numDigits="1">` around the Say, which posts
              `Digits` too: a key stops the Say at once, Twilio's own barge-in)
    hold      a `<Gather>` for keys (POSTed to /twilio/keys) and a `<Redirect>`
              to /twilio/continue every HOLD_S seconds, which answers with the
              current document again

A document reaches Twilio by one of two paths: as the answer to a Twilio
callback (said, keys, continue) when the change happens while answering one
(`answering()`), else by a REST call update through the call's
`SerialCallControl` (one at a time, newest wins).

`say()` queues a prompt; the first of the queue is what the call renders.
Twilio's `said` callback finishes it (its length is measured: `said` time
minus the time its document went out) and the answer to that very callback
is the next prompt, or hold. `interrupt()` (barge-in on caller speech) puts
the call on hold by REST; the interrupted prompt's heard time is estimated
from when its document went out. A key that stopped the Say inside the
Gather comes back as `said` with `Digits`: the session then interrupts as
for DTMF, and no update is needed (Twilio already stopped the Say).

Prompt states: QUEUED → SENT (document at Twilio, `started_ms`) → FINISHED | INTERRUPTED

A failed REST update keeps the document pending: Twilio's next callback (the
hold loop's /twilio/continue, at most HOLD_S later) gets it as its answer. A
`said` that never comes (lost, or sent to another instance) is replaced by a
watchdog on the media clock (`SAID_LOST_MS`). Twilio's callbacks must reach
the instance that holds the call's stream (one instance, or routing by
CallSid): elsewhere they find no session and the call is apologised off.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.call_control import SerialCallControl
from agent.dialog_types import Say
from agent.ports import CallControlError
from agent.speaker import Finished, Interrupted, Spawn
from twiml import documents

HOLD_S = 10
"""Seconds between the hold loop's visits to /twilio/continue: the longest a
pending document waits when its REST update failed."""

GATHER_AFTER_SAY_S = 1
"""`<Gather timeout>` after a prompt the caller may answer with keys (Twilio
allows only whole positive seconds): `said` arrives this much after the Say
ends, and a key pressed within it still counts."""

EST_MS_PER_CHAR = 65
"""Polly speaks English at about 15 characters a second: the prompt length
assumed when Twilio has not told us yet how long it really took."""

SAID_LOST_MS = 3000
"""A prompt Twilio has not reported over by `started + 2 × estimate +
SAID_LOST_MS` is taken as over: the callback was lost (our webhook timed out,
or reached another instance), and the dialog must not wait forever."""

OnUpdateFailed = Callable[[str, CallControlError], None]  # (what: say | hold, error)


@dataclass(frozen=True)
class CallbackUrls:
    """Where Twilio reaches us for this mode (PUBLIC_BASE_URL + path)."""

    base_url: str

    def said(self, say_id: int) -> str:
        return f"{self.base_url}/twilio/said?say_id={say_id}"

    @property
    def keys(self) -> str:
        return f"{self.base_url}/twilio/keys"

    @property
    def continue_(self) -> str:
        return f"{self.base_url}/twilio/continue"

    def hold(self) -> str:
        return documents.hold(keys_url=self.keys, continue_url=self.continue_, hold_s=HOLD_S)


@dataclass(eq=False)
class _Prompt:
    say: Say
    started_ms: int | None = None  # media time its document went to Twilio
    cut_by_key: bool = False  # Twilio's Gather stopped it

    def estimated_ms(self) -> int:
        return len(self.say.log_text) * EST_MS_PER_CHAR


class TwimlSpeaker:
    """The `AgentVoice` of CALLSTREAM_SPEECH=twiml (see the module docstring)."""

    def __init__(
        self,
        call_sid: str,
        control: SerialCallControl | None,
        urls: CallbackUrls,
        spawn: Spawn,
        *,
        clock: Callable[[], int],
        on_update_failed: OnUpdateFailed,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
    ) -> None:
        self._call_sid = call_sid
        self._control = control
        self._urls = urls
        self._spawn = spawn
        self._clock = clock
        self._on_update_failed = on_update_failed
        self._log = log or logging.getLogger(__name__)
        self._queue: deque[_Prompt] = deque()
        self._done: list[Finished] = []
        self._answering = False
        self._closed = False
        self.updates_sent = 0

    # --- AgentVoice --------------------------------------------------------------
    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    @property
    def has_finished(self) -> bool:
        return bool(self._done)

    @property
    def barge_in_allowed(self) -> bool:
        return bool(self._queue) and self._queue[0].say.barge_in

    def say(self, say: Say) -> None:
        self._queue.append(_Prompt(say))
        if len(self._queue) == 1:  # nothing playing: this one starts now
            self._change(self._speak_document(self._queue[0]), "say", self._queue[0])

    def pump(self, now_ms: int) -> None:
        """Twilio paces its own speech; per frame only the lost-callback watchdog."""
        head = self._queue[0] if self._queue else None
        if head is None or head.started_ms is None or head.cut_by_key:
            return
        played = now_ms - head.started_ms
        if played > 2 * head.estimated_ms() + SAID_LOST_MS:
            self._log.warning(
                "no word from Twilio that say %d ended after %d ms: taking it as over", head.say.say_id, played
            )
            self._queue.popleft()
            self._done.append(Finished(head.say, played))
            if self._queue:
                self._change(self._speak_document(self._queue[0]), "say", self._queue[0])

    def on_mark(self, name: str) -> bool:
        return False  # a one-way stream carries no marks

    def take_finished(self) -> list[Finished]:
        done, self._done = self._done, []
        return done

    def interrupt(self, now_ms: int) -> list[Interrupted]:
        """Barge-in: everything queued is cut; the call goes on hold (unless a
        key in Twilio's Gather already stopped the Say)."""
        if not self._queue:
            return []
        head = self._queue[0]
        interrupted = []
        for prompt in self._queue:
            heard = 0
            if prompt.started_ms is not None:
                heard = max(0, now_ms - prompt.started_ms)
            interrupted.append(Interrupted(prompt.say, heard, max(heard, prompt.estimated_ms())))
        self._queue.clear()
        if not head.cut_by_key:
            self._change(self._urls.hold(), "hold")
        return interrupted

    def close(self) -> None:
        self._closed = True
        self._queue.clear()

    # --- Twilio's callbacks (through the session) ------------------------------------
    @property
    def is_answering(self) -> bool:
        return self._answering

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """While handling a Twilio callback: changes go out as its answer
        (`document()`), not by REST."""
        self._answering = True
        try:
            yield
        finally:
            self._answering = False

    def said(self, say_id: int, now_ms: int, *, key_pressed: bool = False) -> bool:
        """Twilio is done with prompt `say_id`'s document: the Say ended, or
        (`key_pressed`) a key stopped it or came within GATHER_AFTER_SAY_S of
        its end. False for a prompt that is not the one playing (stale)."""
        if not self._queue or self._queue[0].say.say_id != say_id:
            return False
        head = self._queue[0]
        played = now_ms - head.started_ms if head.started_ms is not None else 0
        if key_pressed and played < head.estimated_ms():
            # Twilio stopped the Say: the session interrupts it, as for DTMF
            # (the estimate decides between "cut" and "just after the end")
            head.cut_by_key = True
            return True
        self._queue.popleft()
        if not key_pressed and head.say.listens and head.say.barge_in:
            played -= GATHER_AFTER_SAY_S * 1000  # the Gather waited this long after it
        self._done.append(Finished(head.say, max(0, played)))
        if self._queue:
            self._change(self._speak_document(self._queue[0]), "say", self._queue[0])
        return True

    def document(self) -> str:
        """What the call should be running now, as the answer to a Twilio
        callback: the first prompt (marked as sent now), else hold."""
        if self._queue:
            head = self._queue[0]
            head.started_ms = self._clock()
            return self._speak_document(head)
        return self._urls.hold()

    # --- inside ----------------------------------------------------------------------------
    def _speak_document(self, prompt: _Prompt) -> str:
        say = prompt.say
        return documents.speak(
            say.text,
            voice=say.voice,
            language=say.language,
            said_url=self._urls.said(say.say_id),
            keys=say.listens and say.barge_in,
            gather_timeout_s=GATHER_AFTER_SAY_S,
        )

    def _change(self, twiml: str, what: str, prompt: _Prompt | None = None) -> None:
        if self._answering or self._closed:
            return  # the callback's answer carries it (`document()`)
        self._spawn(self._send(twiml, what, prompt), f"twiml-{what}")

    async def _send(self, twiml: str, what: str, prompt: _Prompt | None) -> None:
        control = self._control
        if control is None:
            self._log.warning("call control is off: the %s waits for Twilio's next callback", what)
            return
        try:
            sent = await control.send(self._call_sid, twiml)
        except CallControlError as exc:
            self._on_update_failed(what, exc)
            return
        if sent:
            self.updates_sent += 1
            if prompt is not None and prompt.started_ms is None:
                prompt.started_ms = self._clock()
