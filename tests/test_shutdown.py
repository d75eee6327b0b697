"""Graceful shutdown of a real `callstream serve` process (agent/shutdown.py).

SIGTERM: readyz fails and new calls get 503 at once, calls in progress go
on; at CALLSTREAM_DRAIN_S each call still up is handed over (a REST update
that reconnects it at its dialog state); the archive gets every call; the
process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import websockets

from agent.fake_twilio import FakeTwilioRest
from agent.serving import base_url_of, bound_socket, serve_in_background
from tests.conftest import free_port
from tests.twilio_client import TwilioStream
from twiml.signature import sign

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "AC" + "1" * 32
CALLER = {"From": "+14155550100", "To": "+14155550199"}


class ServeProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.stream_url = f"ws://127.0.0.1:{port}/twilio/media"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                assert self.process.poll() is None, self.stderr()
                try:
                    if (await client.get(self.base + "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("server never became ready")

    async def exit_code(self, timeout_s: float = 30) -> int:
        for _ in range(int(timeout_s * 10)):
            code = self.process.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)
        raise AssertionError("server did not exit after SIGTERM")

    def stderr(self) -> str:
        return self.log.read_text()


@asynccontextmanager
async def serve(archive: Path, **env: str) -> AsyncIterator[ServeProcess]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CALLSTREAM_", "REDIS_"))}
    log = archive.parent / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--port", str(port)],
            env={**clean, "CALLSTREAM_STT": "none", "CALLSTREAM_ARCHIVE": str(archive), **env},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
        )
    server = ServeProcess(process, port, log)
    try:
        await server.wait_ready()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def archived_call(archive: Path, call_sid: str) -> dict[str, object]:
    found = [p for p in archive.rglob("call.json") if p.parent.name == call_sid]
    assert len(found) == 1, f"{call_sid} archived {len(found)} times"
    return dict(json.loads(found[0].read_text()))


async def test_sigterm_stops_new_calls_and_lets_the_call_in_progress_finish(tmp_path):
    archive = tmp_path / "archive"
    async with serve(archive, CALLSTREAM_DRAIN_S="60") as server:
        async with websockets.connect(server.stream_url) as ws:
            stream = TwilioStream(ws)
            await stream.start({**CALLER, "CallSid": stream.call_sid})
            await stream.silence(200)
            server.process.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient() as client:
                for _ in range(100):
                    if (await client.get(server.base + "/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                assert (await client.get(server.base + "/readyz")).status_code == 503
                new_call = await client.post(server.base + "/twilio/voice", data={"CallSid": "CA" + "9" * 32, **CALLER})
                assert new_call.status_code == 503
                assert (await client.get(server.base + "/healthz")).status_code == 200
            await stream.silence(400)  # the call in progress goes on
            assert stream.at(type(stream.received[0][1]))  # the agent is still talking to it
            await stream.stop()
        assert await server.exit_code() == 0
        log = server.stderr()
    assert "draining" in log and "new call refused (503)" in log
    call = archived_call(archive, stream.call_sid)
    assert call["end_reason"] == "stop"


async def test_at_the_drain_deadline_the_call_is_handed_over_to_resume_elsewhere(tmp_path):
    token = secrets.token_hex(8)
    rest = FakeTwilioRest(ACCOUNT, token)
    rest_sock = bound_socket()
    call_sid = "CA" + secrets.token_hex(16)
    rest.add_call(call_sid)
    archive = tmp_path / "archive"
    async with serve_in_background(rest.app, rest_sock):
        env = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": token,
               "TWILIO_API_BASE": base_url_of(rest_sock), "CALLSTREAM_DRAIN_S": "1"}
        async with serve(archive, **env) as server:
            signature = sign(token, server.stream_url)
            async with websockets.connect(server.stream_url, additional_headers={"X-Twilio-Signature": signature}) as ws:
                stream = TwilioStream(ws, call_sid)
                await stream.start({**CALLER, "CallSid": call_sid})
                await stream.silence(100)
                server.process.send_signal(signal.SIGTERM)
                call = rest.calls[call_sid]
                for _ in range(400):  # real-time frames until Twilio is told to move the call
                    if call.updates:
                        break
                    await stream.silence(20)
                    await asyncio.sleep(0.02)
                assert call.updates, "no hand-over before the deadline passed"
                twiml = call.updates[0]["Twiml"]
                assert server.stream_url in twiml
                resume = re.search(r'name="resume_state" value="(\w+)"', twiml)
                assert resume and resume[1] == "menu"  # acme.yaml's first state, still prompting
                await stream.stop()  # Twilio ends this stream as it moves the call
            assert await server.exit_code() == 0
            log = server.stderr()
    assert "handing the call over to resume at menu" in log
    archived = archived_call(archive, call_sid)
    assert archived["outcome"] == "moved"
