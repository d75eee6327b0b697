"""Latency of the production speech adapters over their local fakes:
`python -m agent.speech_bench [--runs N]`.

Deepgram (fake server transcribing with pocketsphinx, audio fed in real time):
first partial after the caller's speech onset, and end of turn (`end_turn`)
to the turn's final — through Finalize, and when Deepgram's endpointing
closed the turn first. Polly (fake endpoint synthesizing with eSpeak): time
to the first audio chunk, uncached and from the prompt cache.

The fakes run on this machine, so these are the adapters' own overheads plus
the fakes' compute, not Deepgram's or Polly's service times.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace

import numpy as np

from agent.fake_deepgram import FakeDeepgram
from agent.fake_polly import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, FakePolly
from agent.ports import SttEvent, Transcript
from agent.serving import base_url_of, bound_socket, serve_in_background
from agent.stt_deepgram import DeepgramOptions, DeepgramSpeechToText
from agent.tts_cache import CachedTextToSpeech
from agent.tts_espeak import synthesize_8k
from agent.tts_polly import PollyTextToSpeech
from media import mulaw

PHRASES = ["billing", "bill", "invoice", "payment", "support", "technical", "agent", "operator"]


def _clip(text: str) -> bytes:
    speech = synthesize_8k(text, "en-us+m3", 165)
    silence = np.zeros(8 * 500, dtype=np.int16)
    return mulaw.encode(np.concatenate([silence, speech, np.zeros(8 * 800, dtype=np.int16)]))


async def _deepgram_run(stt: DeepgramSpeechToText, audio: bytes) -> tuple[float | None, float | None]:
    partial_at: list[float] = []
    final_at: list[float] = []

    def on_event(event: SttEvent) -> None:
        if isinstance(event, Transcript):
            if not event.is_final and not partial_at:
                partial_at.append(time.perf_counter())
            if event.end_of_turn:
                final_at.append(time.perf_counter())

    stream = await stt.open_stream("CAbench", on_event)
    stream.set_phrases(PHRASES)
    onset_wall: float | None = None
    start = time.perf_counter()
    for i, offset in enumerate(range(0, len(audio), 160)):
        frame = audio[offset : offset + 160]
        if onset_wall is None and np.abs(mulaw.decode_array(frame).astype(int)).max() > 1000:
            onset_wall = time.perf_counter()
        stream.feed(frame, b"", (i + 1) * 20)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.perf_counter()))
    asked = time.perf_counter()
    stream.end_turn(len(audio) // 8)
    async with asyncio.timeout(10):
        while not final_at:
            await asyncio.sleep(0.001)
    await stream.aclose()
    first_partial = (partial_at[0] - onset_wall) * 1000 if partial_at and onset_wall else None
    return first_partial, (final_at[0] - asked) * 1000  # negative: the final came before end_turn


async def bench_deepgram(runs: int) -> None:
    audio = _clip("billing")
    async with FakeDeepgram("bench").running() as fake:
        for label, options in (
            ("end_turn → final (Finalize)", DeepgramOptions(endpointing_ms=5000)),
            ("end_turn → final (endpointing closed it first)", DeepgramOptions(endpointing_ms=300)),
        ):
            stt = DeepgramSpeechToText("bench", url=fake.base_url, options=replace(options, send_every_ms=100))
            partials, finals = [], []
            for _ in range(runs):
                partial, final = await _deepgram_run(stt, audio)
                if partial is not None:
                    partials.append(partial)
                if final is not None:
                    finals.append(final)
            print(f"deepgram fake, {label}: median {statistics.median(finals):.1f} ms, max {max(finals):.1f} ms "
                  f"(n={len(finals)}; negative: before end_turn)")
        print(f"deepgram fake, speech onset → first partial: median {statistics.median(partials):.0f} ms "
              f"(the fake sends one per {fake.partial_every_ms} ms of speech)")


async def bench_polly(runs: int) -> None:
    fake = FakePolly()
    sock = bound_socket()
    prompts = [f"Prompt number {i}: please say billing, support or agent." for i in range(runs)]
    async with serve_in_background(fake.app, sock):
        inner = PollyTextToSpeech("us-east-1", endpoint_url=base_url_of(sock), credentials=(FAKE_ACCESS_KEY, FAKE_SECRET_KEY, None))
        tts = CachedTextToSpeech(inner)
        for name, warm in (("uncached", False), ("cached", True)):
            times = []
            for text in prompts:
                if warm:
                    async for _ in tts.synthesize(text, "Polly.Joanna", "en-US"):
                        pass
                started = time.perf_counter()
                chunks = tts.synthesize(text, "Polly.Joanna", "en-US")
                await anext(chunks)
                times.append((time.perf_counter() - started) * 1000)
                await chunks.aclose()
            print(f"polly fake, time to first audio, {name}: median {statistics.median(times):.2f} ms, max {max(times):.2f} ms (n={len(times)})")
        await inner.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    async def run() -> None:
        await bench_deepgram(args.runs)
        await bench_polly(args.runs * 4)

    asyncio.run(run())


if __name__ == "__main__":
    main()
