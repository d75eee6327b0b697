"""`callstream bench bargein`: caller speech onset while the agent talks → `clear`.

DESIGN.md "Performance": barge-in: caller speech onset → `clear` sent, p95 ≤
120 ms on real speech.

Against a `callstream serve` process on loopback (agent/bench/webhook_server.py:
signed upgrades, the default eSpeak TTS with its prompt cache, the acme flow).
Each trial is one call: Twilio's side sends `connected`, `start` and 20 ms
media frames of a -62 dBFS line floor; the agent's greeting starts playing
(marks are echoed as Twilio plays the audio, agent/replay_stream.py `Playback`),
and `offset` ms into it a speech clip (agent/bench/bargein_audio.py) starts on
the caller's track. The clip's true onset is known from the clip itself.

Every speech trial is run twice, on the same audio:

- media timeline, "as the session sees it": replay lockstep
  (agent/lockstep.py) answers each frame only once the server has settled
  it, so the frame whose processing sent `clear` is known exactly. Latency =
  end of that frame − true onset (media ms). It includes Twilio's framing
  (the onset frame is only complete 0-20 ms after the onset) and the turn
  detector's evidence (40 ms of voiced frames, one of them periodic), and is
  independent of the machine.
- wall time at real-time pacing: frames go out every 20 ms (each at the end
  of the 20 ms it carries, as Twilio sends them), several calls at once.
  Latency = `clear` received − the frame carrying the onset was sent. It adds
  the server's processing, both WebSocket stacks and loopback, and leaves out
  the framing before that frame was sent.

Noise-only fixtures run in lockstep (their outcome is a count, not a time),
from the greeting's first frame (line hiss and hum are there from the start
of a call; clicks and bursts come at random times): every call that gets a
`clear` is a false barge-in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import websockets

from agent.bench.bargein_audio import Clip, floor_frames, noise_clips, speech_clips
from agent.bench.stats import Summary, summarize
from agent.bench.webhook_server import ServerProcess, server_process
from agent.lockstep import LOCKSTEP_PARAMETER
from agent.replay_stream import Playback, StreamLink
from media.frames import FRAME_BYTES, FRAME_MS
from twiml.errors import ProtocolError
from twiml.messages import OutboundClear, OutboundMark, OutboundMedia, parse_outbound
from twiml.signature import sign

TARGET_P95_MS = 120.0
AGENT_WAIT_MS = 5000  # the greeting must start playing within this
TAIL_MS = 600  # kept listening after the clip ends
OFFSETS_MS = (300, 3500)  # speech starts this far into the greeting (uniform)


@dataclass
class Trial:
    clip: Clip
    offset_ms: int
    lockstep: bool
    agent_start_frame: int | None = None
    speech_start_frame: int | None = None
    clears: list[tuple[int, float]] = field(default_factory=list)  # (frame index sent last, perf_counter)
    sent_at: list[float] = field(default_factory=list)
    agent_playing_at_onset: bool | None = None
    error: str | None = None

    @property
    def onset_call_ms(self) -> float | None:
        if self.clip.onset_ms is None or self.speech_start_frame is None:
            return None
        return self.speech_start_frame * FRAME_MS + self.clip.onset_ms

    def clears_after_speech(self) -> list[tuple[int, float]]:
        start = self.speech_start_frame
        return [c for c in self.clears if start is not None and c[0] >= start]

    def media_latency_ms(self, *, voiced: bool = False) -> float | None:
        onset, clears = self.onset_call_ms, self.clears_after_speech()
        if onset is None or not clears:
            return None
        if voiced and self.clip.voiced_onset_ms is not None and self.clip.onset_ms is not None:
            onset += self.clip.voiced_onset_ms - self.clip.onset_ms
        return (clears[0][0] + 1) * FRAME_MS - onset

    def wall_latency_ms(self) -> float | None:
        onset, clears = self.onset_call_ms, self.clears_after_speech()
        if onset is None or not clears:
            return None
        onset_frame = int(onset // FRAME_MS)
        if onset_frame >= len(self.sent_at):
            return None
        return (clears[0][1] - self.sent_at[onset_frame]) * 1000


class _Caller:
    """Twilio's side of one trial call."""

    def __init__(self, trial: Trial, link: StreamLink, floor: bytes) -> None:
        self.trial = trial
        self.link = link
        self.playback = Playback()
        self.frames_sent = 0
        self._floor = floor

    def payload(self, k: int) -> bytes:
        t = self.trial
        if t.speech_start_frame is None and t.agent_start_frame is not None:
            t.speech_start_frame = max(k, t.agent_start_frame + t.offset_ms // FRAME_MS)
        if t.speech_start_frame is not None and k >= t.speech_start_frame:
            i = (k - t.speech_start_frame) * FRAME_BYTES
            chunk = t.clip.audio[i : i + FRAME_BYTES]
            if len(chunk) == FRAME_BYTES:
                return chunk
        i = (k * FRAME_BYTES) % (len(self._floor) - FRAME_BYTES)
        return self._floor[i : i + FRAME_BYTES]

    def done(self, k: int) -> bool:
        t = self.trial
        if t.agent_start_frame is None:
            if k * FRAME_MS > AGENT_WAIT_MS:
                t.error = "the greeting did not start"
                return True
            return False
        if t.speech_start_frame is None:
            return False
        clip_frames = len(t.clip.audio) // FRAME_BYTES
        return k >= t.speech_start_frame + clip_frames + TAIL_MS // FRAME_MS

    async def on_outbound(self, _link: StreamLink, raw: str | bytes) -> None:
        try:
            message = parse_outbound(raw)
        except ProtocolError as exc:
            self.trial.error = f"invalid message from the server: {exc}"
            return
        if isinstance(message, OutboundMedia):
            if self.trial.agent_start_frame is None:
                self.trial.agent_start_frame = self.frames_sent
            self.playback.add_audio(message.payload)
        elif isinstance(message, OutboundMark):
            self.playback.add_mark(message.name)
        elif isinstance(message, OutboundClear):
            self.trial.clears.append((self.frames_sent - 1, time.perf_counter()))
            for name in self.playback.clear():
                await self.link.mark(name)

    async def receive(self) -> None:
        """Real time: the server's messages as they come."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.link.ws:
                await self.on_outbound(self.link, raw)
        self.link.closed = True


async def run_trial(server: ServerProcess, trial: Trial, floor: bytes) -> Trial:
    url = server.media_url
    headers = {"X-Twilio-Signature": sign(server.auth_token, url)}
    try:
        async with websockets.connect(url, additional_headers=headers, compression=None) as ws:
            link = StreamLink(
                ws, account_sid="AC" + secrets.token_hex(16), call_sid="CA" + secrets.token_hex(16),
                bidirectional=True, started_ms=0,
            )
            caller = _Caller(trial, link, floor)
            params = {"From": "+15551230000", "To": "+15559870000"}
            if trial.lockstep:
                params[LOCKSTEP_PARAMETER] = "1"
            await link.start(params)
            receiver = None if trial.lockstep else asyncio.create_task(caller.receive())
            try:
                await _play(caller, trial)
            finally:
                if receiver is not None:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiver
                await link.stop()
    except (OSError, websockets.WebSocketException) as exc:
        trial.error = f"{type(exc).__name__}: {exc}"
    return trial


async def _play(caller: _Caller, trial: Trial) -> None:
    link = caller.link
    t0 = time.perf_counter()
    k = 0
    while not caller.done(k) and not link.closed:
        if not trial.lockstep:
            delay = t0 + (k + 1) * FRAME_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        payload = caller.payload(k)
        onset = trial.onset_call_ms
        if onset is not None and trial.agent_playing_at_onset is None and (k + 1) * FRAME_MS > onset:
            trial.agent_playing_at_onset = caller.playback.playing
        await link.media(k * FRAME_MS, payload)
        trial.sent_at.append(time.perf_counter())
        caller.frames_sent = k + 1
        if trial.lockstep:
            await link.sync(caller.on_outbound)
        _, marks = caller.playback.tick()
        for name in marks:
            await link.mark(name)
        k += 1


@dataclass(frozen=True)
class BargeinReport:
    stt: str
    concurrency: int
    speech_trials: int
    media: Summary
    media_from_voicing: Summary
    wall: Summary
    slowest: list[tuple[str, float]]  # (clip, media ms) of the slowest distinct clips
    missed: list[str]  # speech trials with no clear (clip names)
    errors: list[str]
    noise_trials: int
    false_bargeins: dict[str, int]  # noise fixture → calls cut off

    @property
    def meets_target(self) -> bool:
        return (
            not self.missed and not self.errors and self.media.count > 0
            and self.media.p95 <= TARGET_P95_MS and self.wall.p95 <= TARGET_P95_MS
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "benchmark": "bargein",
            "server": "callstream serve (separate process, loopback)",
            "stt": self.stt,
            "concurrency": self.concurrency,
            "speech_trials": self.speech_trials,
            "media_timeline_ms": self.media.as_dict(),
            "media_timeline_from_voicing_ms": self.media_from_voicing.as_dict(),
            "slowest_clips_media_ms": dict(self.slowest),
            "wall_ms": self.wall.as_dict(),
            "missed": self.missed,
            "errors": self.errors,
            "noise_trials": self.noise_trials,
            "false_bargeins": sum(self.false_bargeins.values()),
            "false_bargeins_by_fixture": self.false_bargeins,
            "target": {"p95_ms": TARGET_P95_MS},
            "meets_target": self.meets_target,
        }

    def text(self) -> str:
        false = {k: v for k, v in self.false_bargeins.items() if v}
        lines = [
            f"barge-in, callstream serve process (CALLSTREAM_STT={self.stt}), {self.speech_trials} speech trials, "
            f"{self.concurrency} calls at once in real time",
            f"  media timeline (onset → end of the frame that sent clear, lockstep): {self.media.line()}",
            f"  the same from the voiced onset (within 20 dB of the clip's peak):    {self.media_from_voicing.line()}",
            f"  wall, real time (frame carrying the onset sent → clear received):    {self.wall.line()}",
            "  slowest clips (media): " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in self.slowest),
            f"  missed (no clear on speech): {len(self.missed)}" + (f" {self.missed}" if self.missed else ""),
            f"  false barge-ins on noise: {sum(self.false_bargeins.values())} of {self.noise_trials} calls"
            + (f" {false}" if false else ""),
        ]
        if self.errors:
            lines.append(f"  errors: {self.errors}")
        lines.append(
            f"  target p95 ≤ {TARGET_P95_MS:g} ms on real speech: " + ("met" if self.meets_target else "NOT met")
        )
        return "\n".join(lines)


async def _run_all(server: ServerProcess, trials: list[Trial], floor: bytes, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(trial: Trial) -> None:
        async with gate:
            await run_trial(server, trial, floor)

    await asyncio.gather(*(one(t) for t in trials))


async def measure(
    server: ServerProcess, *, trials: int, concurrency: int, noise_seeds: int, seed: int, stt: str
) -> BargeinReport:
    clips = speech_clips()
    rng = random.Random(seed)
    plan = [(clips[i % len(clips)], rng.randrange(*OFFSETS_MS, FRAME_MS)) for i in range(trials)]
    floor = floor_frames()
    await run_trial(server, Trial(clips[0], 1000, lockstep=True), floor)  # warm the prompt cache
    exact = [Trial(clip, offset, lockstep=True) for clip, offset in plan]
    await _run_all(server, exact, floor, concurrency)
    paced = [Trial(clip, offset, lockstep=False) for clip, offset in plan]
    await _run_all(server, paced, floor, concurrency)
    noise = [Trial(clip, 0, lockstep=True) for clip in noise_clips(noise_seeds)]
    await _run_all(server, noise, floor, concurrency)

    errors = [f"{t.clip.name}: {t.error}" for t in exact + paced + noise if t.error]
    errors += [f"{t.clip.name}: the greeting had ended at the onset" for t in exact + paced if t.agent_playing_at_onset is False]
    missed = [t.clip.name for t in exact + paced if not t.error and not t.clears_after_speech()]
    false = Counter[str]()
    for t in noise:
        false[t.clip.name.rsplit(" seed", 1)[0]] += 1 if t.clears else 0
    by_clip = {t.clip.name: x for t in exact if (x := t.media_latency_ms()) is not None}
    slowest = sorted(by_clip.items(), key=lambda item: -item[1])[:5]
    return BargeinReport(
        stt=stt,
        concurrency=concurrency,
        speech_trials=trials,
        media=summarize([x for t in exact if (x := t.media_latency_ms()) is not None]),
        media_from_voicing=summarize([x for t in exact if (x := t.media_latency_ms(voiced=True)) is not None]),
        slowest=slowest,
        wall=summarize([x for t in paced if (x := t.wall_latency_ms()) is not None]),
        missed=missed,
        errors=errors,
        noise_trials=len(noise),
        false_bargeins=dict(false),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=60, help="speech trials (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls at once (default %(default)s)")
    parser.add_argument("--noise-seeds", type=int, default=2, help="calls per noise fixture (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="offsets into the greeting (default %(default)s)")
    parser.add_argument(
        "--stt", default="sphinx", choices=("sphinx", "none"),
        help="the server's CALLSTREAM_STT (default sphinx, as in production)",
    )
    parser.add_argument("--log-level", default="INFO", help="the server's LOG_LEVEL (default INFO)")


def run(args: argparse.Namespace) -> int:
    if args.trials < 1 or args.concurrency < 1 or args.noise_seeds < 0:
        raise SystemExit("--trials and --concurrency must be at least 1, --noise-seeds not negative")
    with server_process({"CALLSTREAM_STT": args.stt}, log_level=args.log_level) as server:
        report = asyncio.run(
            measure(
                server, trials=args.trials, concurrency=args.concurrency,
                noise_seeds=args.noise_seeds, seed=args.seed, stt=args.stt,
            )
        )
    print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() if args.json else report.text())
    return 0 if not report.errors and not report.missed else 1
