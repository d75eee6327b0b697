"""The session's own share of a frame, in process with no socket:
`python -m agent.bench.calls_frame_cost [FRAMES]`.

A `CallSession` on the bench flow (agent/bench/calls_flow.yaml, STT off,
eSpeak TTS) starts, synthesizes its greeting, then is fed FRAMES pre-built
frames of the caller tape of `callstream bench calls`; it prints the mean
time of `StreamConnection.receive_text` and of `_on_media` per frame. What
the server spends beyond that per frame is uvicorn, websockets and the event
loop. Pin it to a core (`taskset -c 0`) for steadier figures.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from agent.bench.calls_load import caller_tape, media_message
from agent.bench.calls_server import BENCH_FLOW
from agent.session import CallSession
from agent.settings import load_settings
from agent.wiring import build_services
from twiml.messages import Connected, Media, MediaFormat, Start, encode_inbound

SID = "MZ" + "a" * 32


class NullSocket:
    async def receive(self) -> str | bytes | None:
        return None

    async def send(self, text: str) -> None:
        pass

    async def send_all(self, texts: list[str]) -> None:
        pass

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def measure(frames: int) -> tuple[float, float]:
    """Mean µs per frame of parsing and of `_on_media`."""
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(
            {"CALLSTREAM_STT": "none", "CALLSTREAM_FLOW": str(BENCH_FLOW), "CALLSTREAM_ARCHIVE": folder},
            env_file=None,
        )
        services = await build_services(settings, "http://127.0.0.1:1")
        try:
            session = CallSession(services.session_deps(), NullSocket())
            return await _feed(session, frames)
        finally:
            await services.aclose()


async def _feed(session: CallSession, frames: int) -> tuple[float, float]:
    try:
        conn = session.conn
        conn.receive_text(encode_inbound(Connected("Call", "1.0.0")))
        start = conn.receive_text(encode_inbound(Start(
            1, SID, "AC" + "b" * 32, "CA" + "c" * 32, ("inbound",), MediaFormat("audio/x-mulaw", 8000, 1), {},
        )))
        assert isinstance(start, Start)
        await session._on_start(start)
        await asyncio.sleep(2)  # the greeting is synthesized
        tape, _ = caller_tape()
        messages = [media_message(i + 2, i + 1, i * 20, tape[i % len(tape)], SID) for i in range(frames)]
        parse = media = 0.0
        for raw in messages:
            t0 = time.perf_counter()
            message = conn.receive_text(raw)
            t1 = time.perf_counter()
            assert type(message) is Media
            session._on_media(message)
            media += time.perf_counter() - t1
            parse += t1 - t0
            if conn.has_data_to_send:
                conn.data_to_send()  # what _flush would send
        return parse / frames * 1e6, media / frames * 1e6
    finally:
        await session._finish()  # the call ends as any does (calls_active back down, archived)


def main() -> None:
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    parse, media = asyncio.run(measure(frames))
    print(f"per frame: receive_text {parse:.1f} µs, _on_media {media:.1f} µs ({frames} frames)")


if __name__ == "__main__":
    main()
