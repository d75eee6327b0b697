"""Offline text to speech: eSpeak NG through ctypes (the `espeakng-loader` wheel).

libespeak-ng keeps its voice, rate and callback in process-global state and is
not thread-safe, so there is one `EspeakEngine` per process and every synthesis
holds its lock. `EspeakTextToSpeech` runs synthesis on one dedicated worker
thread and streams 8 kHz mu-law to the event loop as eSpeak produces it: in
synchronous mode `espeak_Synth` calls our callback with ~60 ms buffers of
22 050 Hz audio, which the worker resamples and encodes right away.

eSpeak is fast (the acme greeting, 6.2 s of speech, is synthesized, resampled
and encoded in ~40 ms; the first chunk is out after 2–4 ms).

Reproducibility: eSpeak NG seeds its noise from the clock; we reseed it
before every prompt. Output still depends on what the process synthesized
before (pitch flutter state), so the same text matches in length to a few
samples but not byte for byte — unless it is the same sequence of prompts in
a fresh process, which is how fixtures/make_calls.py gets identical WAVs.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from agent.thread_stream import Deliver, stream_from_thread
from agent.voices import parse_voice
from media import mulaw
from media.resample import Resampler

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a bad data path instead of calling exit()
_ESPEAK_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

DEFAULT_RATE_WPM = 160
RANDOM_SEED = 1
OUTPUT_RATE = 8000


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded, initialised, or refused a request."""


class EspeakEngine:
    """The process's libespeak-ng. Use `EspeakEngine.shared()`; every call is
    serialised by a lock, whatever thread it comes from."""

    _shared: EspeakEngine | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader  # imported here so the module loads without the wheel

        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise EspeakError(f"cannot load libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        # eSpeak NG seeds its noise generator from the clock; a fixed seed per
        # prompt keeps output reproducible (the fixture generator relies on it).
        self._set_seed: Callable[[int], None] | None = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data at {data_path!r}")
        self.sample_rate: int = rate
        self._lib = lib
        self._lock = threading.Lock()
        self._sink: Callable[[npt.NDArray[np.int16]], bool] | None = None
        self._error: BaseException | None = None
        # the CFUNCTYPE object must outlive every call into the library
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._rate: int | None = None

    @classmethod
    def shared(cls) -> EspeakEngine:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int | None) -> int:
        # Called by espeak_Synth on the synthesising thread (we hold the lock);
        # returning 1 aborts synthesis. An exception must not unwind through C:
        # keep it for `synthesize` to re-raise.
        if not wav or n <= 0 or self._sink is None:
            return 0
        samples = np.ctypeslib.as_array(wav, shape=(n,)).astype(np.int16, copy=True)
        try:
            return 0 if self._sink(samples) else 1
        except BaseException as exc:
            self._sink = None
            self._error = exc
            return 1

    def synthesize(
        self,
        text: str,
        voice: str,
        rate_wpm: int,
        sink: Callable[[npt.NDArray[np.int16]], bool],
    ) -> None:
        """Speak `text` with eSpeak `voice` (e.g. `en-us+f3`), handing
        `sample_rate` int16 chunks to `sink` as they come; `sink` returns False
        to stop early. Blocks until done."""
        with self._lock:
            if voice != self._voice:
                if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                    self._voice = None
                    raise EspeakError(f"eSpeak NG has no voice {voice!r}")
                self._voice = voice
                self._rate = None  # a new voice resets the rate
            if rate_wpm != self._rate:
                self._lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
                self._rate = rate_wpm
            data = text.encode("utf-8")
            if self._set_seed is not None:
                self._set_seed(RANDOM_SEED)
            self._sink = sink
            self._error = None
            try:
                err = self._lib.espeak_Synth(
                    data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
                )
                self._lib.espeak_Synchronize()
            finally:
                self._sink = None
            exc, self._error = self._error, None
            if exc is not None:
                raise exc
            if err != _EE_OK:
                raise EspeakError(f"espeak_Synth failed ({err}) for {text[:40]!r}")


def synthesize_pcm(
    text: str, voice: str, rate_wpm: int = DEFAULT_RATE_WPM
) -> npt.NDArray[np.int16]:
    """Whole prompt as int16 at the engine's rate (22 050 Hz). Blocking."""
    engine = EspeakEngine.shared()
    parts: list[npt.NDArray[np.int16]] = []

    def sink(samples: npt.NDArray[np.int16]) -> bool:
        parts.append(samples)
        return True

    engine.synthesize(text, voice, rate_wpm, sink)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def synthesize_8k(text: str, voice: str, rate_wpm: int = DEFAULT_RATE_WPM) -> npt.NDArray[np.int16]:
    """Whole prompt as 8 kHz int16 (before mu-law). Blocking."""
    engine = EspeakEngine.shared()
    resampler = Resampler(engine.sample_rate, OUTPUT_RATE)
    parts: list[npt.NDArray[np.int16]] = []

    def sink(samples: npt.NDArray[np.int16]) -> bool:
        parts.append(resampler.process(samples))
        return True

    engine.synthesize(text, voice, rate_wpm, sink)
    parts.append(resampler.flush())
    return np.concatenate(parts)




class EspeakTextToSpeech:
    """`TextToSpeech` with eSpeak NG: the flow's Polly voice is mapped to an
    eSpeak voice (`agent.voices`), audio streams as 8 kHz mu-law chunks.

    `rate_wpm` is eSpeak's speaking rate. All instances share one worker
    thread, since libespeak-ng is one global engine per process.
    """

    name = "espeak"

    _executor: ThreadPoolExecutor | None = None
    _executor_lock = threading.Lock()

    def __init__(self, *, rate_wpm: int = DEFAULT_RATE_WPM) -> None:
        self.rate_wpm = rate_wpm

    @classmethod
    def _worker(cls) -> ThreadPoolExecutor:
        with cls._executor_lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
            return cls._executor

    async def synthesize(self, text: str, voice: str, language: str) -> AsyncGenerator[bytes, None]:
        espeak_voice = parse_voice(voice, language).espeak_voice

        def produce(deliver: Deliver, stop: threading.Event) -> None:
            engine = EspeakEngine.shared()
            resampler = Resampler(engine.sample_rate, OUTPUT_RATE)

            def sink(samples: npt.NDArray[np.int16]) -> bool:
                out = resampler.process(samples)
                return (deliver(mulaw.encode(out)) if len(out) else True) and not stop.is_set()

            engine.synthesize(text, espeak_voice, self.rate_wpm, sink)
            if not stop.is_set():
                tail = resampler.flush()
                if len(tail):
                    deliver(mulaw.encode(tail))

        async for chunk in stream_from_thread(self._worker(), produce):
            yield chunk
