"""How long the offline recognizer freezes the event loop:
`python -m agent.stt_sphinx_stall [--calls N] [--turns N] [--idle]`.

A 10 ms ticker runs on the loop while N calls each speak a sentence per turn,
frame by frame in real time (one 20 ms frame per 20 ms, as Twilio sends
them), ending each turn as the session does. The ticker's oversleep (how
late each 10 ms sleep wakes) is what every call's media path on the same
loop suffers. `--idle` runs the same calls without recognition: the
machine's own scheduling noise, to subtract. `--hop` instead times one
partial decode in this process and through a worker process (the hop's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from agent.ports import SttEvent, Transcript
from agent.stt_sphinx import SphinxSettings, SphinxSpeechToText, default_workers
from agent.tts_espeak import synthesize_8k
from media import mulaw

PHRASES = ["billing", "invoice", "payment", "support", "technical", "agent", "operator"]
SENTENCES = ["can I speak to an operator", "billing", "I have a question about my invoice"]
HOP_SENTENCES = ["billing", "I have a question about my invoice please and thank you"]


def _turn_audio(text: str) -> bytes:
    speech = synthesize_8k(text, "en-us+m3", 165).astype(np.float64) * 0.8
    x = np.concatenate([np.zeros(8 * 500), speech, np.zeros(8 * 900)])
    x += np.random.default_rng(len(x)).normal(0.0, 25.0, len(x))
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return mulaw.decode(mulaw.encode(pcm))


async def _call(stt: SphinxSpeechToText | None, sid: str, turns: list[bytes], finals: list[str]) -> None:
    def on_event(event: SttEvent) -> None:
        if isinstance(event, Transcript) and event.end_of_turn:
            finals.append(event.text)

    stream = await stt.open_stream(sid, on_event) if stt is not None else None
    if stream is not None:
        stream.set_phrases(PHRASES)
    now = 0
    start = time.perf_counter()
    for pcm in turns:
        for i in range(0, len(pcm) - 319, 320):
            now += 20
            frame = pcm[i : i + 320]
            if stream is not None:
                stream.feed(mulaw.encode(frame), frame, now)
            delay = start + now / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if stream is not None:
            stream.end_turn(now)
    if stream is not None:
        await stream.flush()
        await stream.aclose()


async def _ticker(stop: asyncio.Event, lates: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.010)
        lates.append((time.perf_counter() - t0 - 0.010) * 1000)


async def run(calls: int, turns: int, idle: bool, workers: int | None) -> None:
    audio = [_turn_audio(SENTENCES[i % len(SENTENCES)]) for i in range(turns)]
    stt = None if idle else SphinxSpeechToText(SphinxSettings(workers=workers or default_workers()))
    if stt is not None:
        await stt.warm_up()
    stop = asyncio.Event()
    lates: list[float] = []
    finals: list[str] = []
    ticker = asyncio.create_task(_ticker(stop, lates))
    await asyncio.gather(*(_call(stt, f"CAstall{i}", audio, finals) for i in range(calls)))
    stop.set()
    await ticker
    if stt is not None:
        await stt.aclose()
    lates.sort()
    q = statistics.quantiles(lates, n=100)
    print(
        f"{'idle' if idle else 'sphinx'} calls={calls} turns={turns} ticks={len(lates)} "
        f"oversleep ms: p50={q[49]:.1f} p99={q[98]:.1f} max={lates[-1]:.1f}"
    )
    if not idle:
        print("finals:", finals)


async def hop(runs: int = 8) -> None:
    from agent.stt_sphinx import Recognizer

    for text in HOP_SENTENCES:
        pcm = np.frombuffer(_turn_audio(text), "<i2").astype(np.int16)
        recognizer = Recognizer()
        here = []
        for _ in range(runs):
            t = time.perf_counter()
            recognizer.recognize(pcm, tuple(PHRASES), partial=True)
            here.append(time.perf_counter() - t)
        stt = SphinxSpeechToText(SphinxSettings(workers=1))
        await stt.warm_up()
        there = []
        for _ in range(runs):
            t = time.perf_counter()
            await stt._pool.recognize(pcm, PHRASES, partial=True)
            there.append(time.perf_counter() - t)
        await stt.aclose()
        print(
            f"{len(pcm) / 8000:.1f} s utterance: in this process median "
            f"{statistics.median(here) * 1000:.1f} ms, through a worker "
            f"{statistics.median(there) * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--idle", action="store_true", help="no recognition: the baseline")
    parser.add_argument("--hop", action="store_true", help="time a decode here and in a worker")
    args = parser.parse_args()
    if args.hop:
        asyncio.run(hop())
        return
    asyncio.run(run(args.calls, args.turns, args.idle, args.workers))


if __name__ == "__main__":
    main()
