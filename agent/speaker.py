"""The agent's voice on one call: synthesis beside the socket, paced playout.

Theory of operation
-------------------
`say()` queues an utterance. One utterance at a time is synthesized by a task
beside the socket reader; its mu-law audio collects in the utterance's buffer.
On every inbound frame the session calls `pump(now)`, which sends buffered
audio in chunks of `chunk_ms`, each followed by a mark, while less than
`lead_ms` is queued at Twilio (DESIGN.md: about ≤ 1 s ahead), so a `clear` is
cheap and marks tell what the caller actually heard. An utterance is finished
when it is fully synthesized, fully sent and every one of its marks is back.
`interrupt()` (barge-in) cancels synthesis, drops everything not yet played,
sends `clear` and reports how much of each interrupted utterance was heard.

Utterance states: SYNTHESIZING → SENDING (all audio here, some unsent) →
PLAYING (all sent, marks outstanding) → FINISHED; any state → INTERRUPTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from agent.dialog_types import Say
from agent.ports import TextToSpeech
from media.frames import MULAW_SILENCE, SAMPLE_RATE
from media.playout import PlayoutTracker
from media.recording import CallRecording
from twiml.stream import StreamConnection

BYTES_PER_MS = SAMPLE_RATE // 1000  # mu-law: one byte per sample


class UtteranceState(Enum):
    QUEUED = "queued"
    SYNTHESIZING = "synthesizing"
    SENDING = "sending"
    PLAYING = "playing"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"


@dataclass(eq=False)
class Utterance:
    say: Say
    state: UtteranceState = UtteranceState.QUEUED
    audio: bytearray = field(default_factory=bytearray)
    synthesized: bool = False
    sent_bytes: int = 0
    chunks: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def total_ms(self) -> int:
        return len(self.audio) // BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Finished:
    say: Say
    total_ms: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    say: Say
    heard_ms: int
    total_ms: int  # synthesized so far

    @property
    def heard_text(self) -> str:
        """The part of the prompt the caller heard, by proportion of audio
        played (marks give time, not words; good to a word or two)."""
        if self.total_ms <= 0 or self.heard_ms <= 0:
            return ""
        text = self.say.log_text
        cut = min(len(text), round(len(text) * self.heard_ms / self.total_ms))
        head = text[:cut]
        if cut < len(text) and " " in head:
            head = head.rsplit(" ", 1)[0]
        return head


Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
OnAudio = Callable[[Say, bool], Awaitable[None]]  # (say, first audio of it?)


class Speaker:
    def __init__(
        self,
        conn: StreamConnection,
        tts: TextToSpeech,
        spawn: Spawn,
        *,
        on_audio: OnAudio | None = None,
        recording: CallRecording | None = None,
        chunk_ms: int = 200,
        lead_ms: int = 1000,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
        fallback: TextToSpeech | None = None,
    ) -> None:
        self._conn = conn
        self._tts = tts
        self._fallback = fallback
        self._spawn = spawn
        self._on_audio = on_audio
        self._recording = recording
        self._in_flight: dict[str, tuple[int, bytes]] = {}  # mark → (est. play start ms, audio)
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._lead_ms = lead_ms
        self._log = log or logging.getLogger(__name__)
        self.playout = PlayoutTracker()
        self._queue: deque[Utterance] = deque()  # not yet FINISHED/INTERRUPTED, in order
        self._by_id: dict[int, Utterance] = {}
        self._done: list[Finished] = []

    # --- what the session asks -------------------------------------------------
    @property
    def speaking(self) -> bool:
        """Something is queued, being synthesized, sent or played."""
        return bool(self._queue)

    @property
    def has_finished(self) -> bool:
        return bool(self._done)

    @property
    def barge_in_allowed(self) -> bool:
        """The caller may interrupt what is playing now (the oldest utterance)."""
        return bool(self._queue) and self._queue[0].say.barge_in

    @property
    def busy(self) -> bool:
        """Synthesis is running (replay lockstep waits for it)."""
        return any(u.task is not None and not u.task.done() for u in self._queue)

    def say(self, say: Say) -> None:
        utterance = Utterance(say)
        self._queue.append(utterance)
        self._by_id[say.say_id] = utterance
        self._start_next_synthesis()

    def pump(self, now_ms: int) -> None:
        """Send what pacing allows; call on every inbound frame."""
        for utterance in tuple(self._queue):  # finishing removes from the queue
            if utterance.state is UtteranceState.PLAYING:
                continue
            if utterance.state not in (UtteranceState.SYNTHESIZING, UtteranceState.SENDING):
                return  # not started yet: later utterances must wait their turn
            while self.playout.queued_ms(now_ms) < self._lead_ms:
                unsent = len(utterance.audio) - utterance.sent_bytes
                if unsent >= self._chunk_bytes or (utterance.synthesized and unsent > 0):
                    self._send_chunk(utterance, min(unsent, self._chunk_bytes), now_ms)
                else:
                    break
            if utterance.synthesized and utterance.sent_bytes == len(utterance.audio):
                utterance.state = UtteranceState.PLAYING
                self._check_finished(utterance)
                continue
            return  # this one still has audio to send: the next must wait

    def on_mark(self, name: str) -> bool:
        """Twilio echoed a mark; False if it is not one of ours."""
        echo = self.playout.marked(name)
        if echo is None:
            return False
        start_ms, audio = self._in_flight.pop(name, (0, b""))
        if echo.played and self._recording is not None:
            self._recording.agent(start_ms, audio)
        utterance = self._by_id.get(echo.say_id)
        if utterance is not None:
            self._check_finished(utterance)
        return True

    def take_finished(self) -> list[Finished]:
        """Utterances that finished playing since the last call, in order."""
        done, self._done = self._done, []
        return done

    def interrupt(self, now_ms: int) -> list[Interrupted]:
        """Barge-in: stop synthesis, drop unplayed audio, send `clear`."""
        if not self._queue:
            return []
        had_audio_at_twilio = self.playout.playing
        self._record_cut_chunk(now_ms)
        self.playout.clear(now_ms)
        if had_audio_at_twilio:
            self._conn.send_clear()
        interrupted = []
        for utterance in self._queue:
            if utterance.task is not None:
                utterance.task.cancel()
            utterance.state = UtteranceState.INTERRUPTED
            interrupted.append(
                Interrupted(utterance.say, self.playout.heard_ms(utterance.say.say_id), utterance.total_ms)
            )
        self._queue.clear()
        return interrupted

    def close(self) -> None:
        for utterance in self._queue:
            if utterance.task is not None:
                utterance.task.cancel()
        self._queue.clear()

    # --- inside -------------------------------------------------------------------
    def _send_chunk(self, utterance: Utterance, size: int, now_ms: int) -> None:
        start = utterance.sent_bytes
        audio = bytes(utterance.audio[start : start + size])
        self._conn.send_media(audio)
        utterance.sent_bytes += size
        utterance.chunks += 1
        mark = f"{utterance.say.say_id}.{utterance.chunks}"
        self._conn.send_mark(mark)
        # a prompt that speaks a sensitive value is recorded as silence
        recorded = audio if utterance.say.text == utterance.say.log_text else bytes([MULAW_SILENCE]) * len(audio)
        self._in_flight[mark] = (now_ms + self.playout.queued_ms(now_ms), recorded)
        self.playout.sent(mark, utterance.say.say_id, size // BYTES_PER_MS, now_ms)

    def _record_cut_chunk(self, now_ms: int) -> None:
        """The chunk playing when `clear` went out was heard up to now."""
        if self._recording is None:
            return
        for start_ms, audio in self._in_flight.values():
            if start_ms <= now_ms < start_ms + len(audio) // BYTES_PER_MS:
                self._recording.agent(start_ms, audio[: (now_ms - start_ms) * BYTES_PER_MS])
                return

    def _check_finished(self, utterance: Utterance) -> None:
        if (
            utterance.state is UtteranceState.PLAYING
            and self.playout.outstanding(utterance.say.say_id) == 0
        ):
            utterance.state = UtteranceState.FINISHED
            self._queue.remove(utterance)
            self._done.append(Finished(utterance.say, utterance.total_ms))

    async def _stream(self, utterance: Utterance, tts: TextToSpeech) -> None:
        say = utterance.say
        async for audio in tts.synthesize(say.text, say.voice, say.language):
            if not audio:
                continue
            first = not utterance.audio
            utterance.audio += audio
            if utterance.state is UtteranceState.SYNTHESIZING:
                utterance.state = UtteranceState.SENDING
            if self._on_audio is not None:
                await self._on_audio(say, first)

    def _start_next_synthesis(self) -> None:
        if any(u.state is UtteranceState.SYNTHESIZING for u in self._queue):
            return
        for utterance in self._queue:
            if utterance.state is UtteranceState.QUEUED:
                utterance.state = UtteranceState.SYNTHESIZING
                utterance.task = self._spawn(
                    self._synthesize(utterance), f"tts-{utterance.say.say_id}"
                )
                return

    async def _synthesize(self, utterance: Utterance) -> None:
        say = utterance.say
        try:
            try:
                await self._stream(utterance, self._tts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._fallback is None or utterance.audio:
                    raise
                # nothing was said yet: the whole prompt in the fallback voice
                # beats silence (a voice change mid-sentence would not)
                self._log.warning(
                    "speech synthesis (%s) failed for say %d (%r): speaking it with %s",
                    self._tts.name, say.say_id, exc, self._fallback.name,
                )
                await self._stream(utterance, self._fallback)
        except asyncio.CancelledError:
            raise
        except Exception:
            # a defined outcome: the prompt is cut where synthesis failed and the
            # dialog carries on (a silent agent is worse than a short prompt)
            self._log.exception("speech synthesis failed for say %d (%r)", say.say_id, say.log_text)
        finally:
            utterance.synthesized = True
        if utterance.state is UtteranceState.SYNTHESIZING:  # no audio at all
            utterance.state = UtteranceState.SENDING
        self._start_next_synthesis()
