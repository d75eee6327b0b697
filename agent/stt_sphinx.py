"""Offline speech to text: pocketsphinx 5 (model in its wheel), biased by the
dialog state's phrases. Provider name "sphinx".

How one call's stream works. `feed` only appends the 8 kHz PCM frame to a
buffer and, every 10 frames, wakes the stream's worker task. The worker (one
asyncio task per stream, owned by it, cancelled by `aclose`) takes what was
fed, in order with the `set_phrases` / `end_turn` / `flush` calls made in
between, and runs a cheap voice detector (webrtcvad) over it:

    idle ──2 voiced frames of the last 4──▶ in utterance (300 ms pre-roll kept)
    in utterance ──end_turn──▶ final decode ──▶ Transcript(final, end_of_turn) ──▶ idle
    in utterance ──3 s without voice and no end_turn──▶ dropped ──▶ idle
    idle ──end_turn──▶ empty final at once (nothing to decode)

While in an utterance, every 400 ms of audio with speech in it, the whole
utterance so far is decoded again (first pass only) for a partial result.
A decode takes 20–200 ms and pocketsphinx holds the GIL throughout, so it
runs in a decoder worker process (`agent/stt_sphinx_workers.py`): the stream
awaits the answer and the event loop goes on serving every call meanwhile.
The decoder itself is `agent/stt_sphinx_decoder.py`; its result depends only
on the audio and the phrases, so replays are deterministic whichever worker
serves them.

What the grammar accepts and rejects is in `agent/sphinx_grammar.py`.
A failing decode (a model that does not load, a worker process that died
twice on it) is reported as `SttFailure` followed, for an ended turn, by an
empty final so the session's turn never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.ports import SpeechStartedHint, SttEvent, SttFailure, Transcript
from agent.sphinx_grammar import Judgement
from agent.stt_sphinx_decoder import RATE, Recognizer, RecognizerInitError, prepare_audio
from agent.stt_sphinx_workers import DecoderPool, PoolClosed, WorkerDied

__all__ = [
    "DecoderPool",
    "PoolClosed",
    "Recognizer",
    "RecognizerInitError",
    "SphinxSettings",
    "SphinxSpeechToText",
    "SphinxStream",
    "WorkerDied",
    "default_workers",
    "prepare_audio",
]

log = logging.getLogger(__name__)

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit PCM
FRAME_MS = 20
WAKE_EVERY_FRAMES = 10

@dataclass(frozen=True, slots=True)
class SphinxSettings:
    workers: int = field(default_factory=lambda: default_workers())  # decoder processes
    model_dir: str | None = None  # holds en-us/en-us and en-us/cmudict-en-us.dict
    partial_interval_ms: int = 400
    preroll_ms: int = 300
    max_utterance_ms: int = 15_000
    stale_after_ms: int = 3_000
    vad_mode: int = 2
    min_speech_rms: float = 185.0  # quieter frames never count as voiced (-45 dBFS)
    max_grammars: int = 32  # compiled grammars kept per decoder


def default_workers() -> int:
    """CALLSTREAM_SPHINX_WORKERS' default: one decoder process per core, at most 2."""
    return min(2, os.cpu_count() or 1)


class SphinxSpeechToText:
    """`SpeechToText` with pocketsphinx: no network, no credentials.

    `workers` decoder processes are shared by every call (size it to the
    cores you give to recognition; CALLSTREAM_SPHINX_WORKERS). They start
    when the first stream opens (`warm_up()` starts them and waits for them);
    `aclose()` stops them.
    """

    name = "sphinx"

    def __init__(self, settings: SphinxSettings | None = None, **overrides: Any) -> None:
        base = settings or SphinxSettings()
        if overrides:
            base = SphinxSettings(**{**_as_dict(base), **overrides})
        self.settings = base
        self._pool = DecoderPool(base)

    @property
    def decoders_created(self) -> int:
        return self._pool.created

    async def warm_up(self) -> None:
        await self._pool.warm_up()

    async def open_stream(
        self, call_sid: str, on_event: Callable[[SttEvent], None]
    ) -> SphinxStream:
        self._pool.start()  # workers load while the call's greeting plays
        return SphinxStream(self._pool, self.settings, call_sid, on_event)

    async def aclose(self) -> None:
        await self._pool.aclose()


def _as_dict(s: SphinxSettings) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__dataclass_fields__}


_Op = tuple[str, int, Any]  # (kind, offset into the fed-audio buffer, argument)


class SphinxStream:
    """One call's recognizer stream; see the module docstring."""

    def __init__(
        self,
        pool: DecoderPool,
        settings: SphinxSettings,
        call_sid: str,
        on_event: Callable[[SttEvent], None],
    ) -> None:
        import webrtcvad

        self.call_sid = call_sid
        self._pool = pool
        self._s = settings
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        # fed, not yet taken by the worker
        self._audio = bytearray()
        self._ops: deque[_Op] = deque()
        self._unsignalled = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._first_ms: int | None = None
        # worker state
        self._phrases: tuple[str, ...] = ()
        self._vad = webrtcvad.Vad(settings.vad_mode)
        self._carry = b""
        self._scanned_ms = 0  # media time of the next frame the worker scans
        self._preroll: deque[bytes] = deque(maxlen=max(1, settings.preroll_ms // FRAME_MS))
        self._recent: deque[bool] = deque(maxlen=4)
        self._utt: deque[bytes] | None = None
        self._onset_ms = 0
        self._last_voice_ms = 0
        self._since_partial_ms = 0
        self._voiced_since_partial = False
        self._last_partial = ""
        self._task = asyncio.create_task(self._run(), name=f"sphinx-stt {call_sid}")

    # --- the session's side: cheap, synchronous ---------------------------------

    def set_phrases(self, phrases: Sequence[str]) -> None:
        self._push(("phrases", len(self._audio), tuple(phrases)))

    def feed(self, mulaw: bytes, pcm16: bytes, now_ms: int) -> None:
        if self._closed:
            return
        if self._first_ms is None:  # now_ms is the end of this frame
            self._first_ms = now_ms - len(pcm16) // 16
        self._audio += pcm16
        self._unsignalled += 1
        if self._unsignalled >= WAKE_EVERY_FRAMES:
            self._unsignalled = 0
            self._wake.set()

    def end_turn(self, now_ms: int) -> None:
        self._push(("end", len(self._audio), now_ms))

    async def flush(self) -> None:
        if self._closed or self._task.done():
            return
        done: asyncio.Future[None] = self._loop.create_future()
        self._push(("barrier", len(self._audio), done))
        await asyncio.wait({done, self._task}, return_when=asyncio.FIRST_COMPLETED)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for _, _, arg in self._ops:
            if isinstance(arg, asyncio.Future) and not arg.done():
                arg.set_result(None)
        self._ops.clear()

    def _push(self, op: _Op) -> None:
        if self._closed:
            return
        self._ops.append(op)
        self._wake.set()

    # --- the worker -----------------------------------------------------------------

    def _emit(self, event: SttEvent) -> None:
        if self._closed:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("sphinx: on_event callback failed (call %s)", self.call_sid)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            audio = bytes(self._audio)
            self._audio.clear()
            self._unsignalled = 0
            ops = list(self._ops)
            self._ops.clear()
            try:
                await self._process(audio, ops)
            except Exception as exc:  # a bug of ours: report it, keep the call's turns flowing
                log.exception("sphinx: stream worker failed (call %s)", self.call_sid)
                self._emit(SttFailure(reason=f"sphinx: {exc!r}", retryable=False))
                self._reset_utterance()
                for kind, _, arg in ops:
                    if kind == "end":
                        self._emit(Transcript("", True, 0.0, arg, arg, end_of_turn=True))
                    elif kind == "barrier" and not arg.done():
                        arg.set_result(None)

    async def _process(self, audio: bytes, ops: list[_Op]) -> None:
        """Audio and calls in the order the session made them."""
        pos = 0
        for i, (kind, offset, arg) in enumerate(ops):
            await self._scan(audio[pos:offset], partials=not _ends_turn(ops[i:]))
            pos = offset
            if kind == "phrases":
                self._phrases = arg
            elif kind == "end":
                await self._end_turn(arg)
                ops[i] = ("answered", offset, arg)
            elif kind == "barrier" and not arg.done():
                arg.set_result(None)
        await self._scan(audio[pos:], partials=True)

    async def _scan(self, chunk: bytes, *, partials: bool) -> None:
        data = self._carry + chunk
        usable = len(data) - len(data) % FRAME_BYTES
        self._carry = data[usable:]
        if self._first_ms is None:
            return
        if usable:
            samples = np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.float32)
            loud = (samples.reshape(-1, FRAME_BYTES // 2) ** 2).mean(axis=1) >= (
                self._s.min_speech_rms**2
            )
            for k, i in enumerate(range(0, usable, FRAME_BYTES)):
                self._frame(data[i : i + FRAME_BYTES], bool(loud[k]))
        if (
            partials
            and self._utt is not None
            and self._voiced_since_partial
            and self._since_partial_ms >= self._s.partial_interval_ms
        ):
            self._since_partial_ms = 0
            self._voiced_since_partial = False
            await self._partial()

    def _frame(self, frame: bytes, loud: bool) -> None:
        assert self._first_ms is not None
        t = self._first_ms + self._scanned_ms
        self._scanned_ms += FRAME_MS
        # webrtcvad sees every frame (its noise model adapts), and a frame only
        # counts as voiced above the energy floor too, as in media/vad.py
        try:
            voiced = self._vad.is_speech(frame, RATE) and loud
        except Exception:  # webrtcvad rejects malformed frames
            voiced = False
        if self._utt is None:
            self._preroll.append(frame)
            self._recent.append(voiced)
            if sum(self._recent) >= 2:
                self._utt = deque(self._preroll, maxlen=self._s.max_utterance_ms // FRAME_MS)
                self._onset_ms = t - FRAME_MS * (len(self._recent) - 1)
                self._last_voice_ms = t
                self._since_partial_ms = 0
                self._voiced_since_partial = True
                self._last_partial = ""
                self._emit(SpeechStartedHint(at_ms=self._onset_ms))
            return
        self._utt.append(frame)
        self._since_partial_ms += FRAME_MS
        if voiced:
            self._last_voice_ms = t
            self._voiced_since_partial = True
        elif t - self._last_voice_ms > self._s.stale_after_ms:
            self._reset_utterance()  # the session never called it a turn

    def _reset_utterance(self) -> None:
        self._utt = None
        self._recent.clear()
        self._preroll.clear()

    def _utterance_audio(self) -> npt.NDArray[np.int16]:
        assert self._utt is not None
        return np.frombuffer(b"".join(self._utt), dtype="<i2").astype(np.int16)

    async def _partial(self) -> None:
        try:
            result = await self._pool.recognize(
                self._utterance_audio(), self._phrases, partial=True, call_sid=self.call_sid
            )
        except Exception as exc:
            self._fail(exc)
            return
        if result.text and result.text != self._last_partial:
            self._last_partial = result.text
            end = self._first_ms_or0() + self._scanned_ms
            self._emit(Transcript(result.text, False, result.confidence, self._onset_ms, end))

    async def _end_turn(self, now_ms: int) -> None:
        if self._utt is None:
            self._emit(Transcript("", True, 0.0, now_ms, now_ms, end_of_turn=True))
            return
        audio, start = self._utterance_audio(), self._onset_ms
        self._reset_utterance()
        try:
            result = await self._pool.recognize(
                audio, self._phrases, partial=False, call_sid=self.call_sid
            )
        except Exception as exc:
            self._fail(exc)
            result = Judgement("", 0.0, 0)
        self._emit(
            Transcript(result.text, True, result.confidence, start, now_ms, end_of_turn=True)
        )

    def _fail(self, exc: Exception) -> None:
        retryable = not isinstance(exc, RecognizerInitError)
        log.error("sphinx: recognition failed (call %s): %r", self.call_sid, exc)
        self._emit(SttFailure(reason=f"sphinx: {exc}", retryable=retryable))

    def _first_ms_or0(self) -> int:
        return self._first_ms or 0


def _ends_turn(ops: Sequence[_Op]) -> bool:
    return any(kind == "end" for kind, _, _ in ops)
