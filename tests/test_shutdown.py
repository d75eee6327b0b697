"""Graceful shutdown of a real `callstream serve` process (agent/shutdown.py).

SIGTERM: readyz fails and new calls get 503 at once, calls in progress go
on; at CALLSTREAM_DRAIN_S each call still up is handed over (a REST update
that reconnects it at its dialog state); the archive gets every call; the
process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
from pathlib import Path

import httpx
import websockets

from agent.fake_twilio import FakeTwilioRest
from agent.serving import base_url_of, bound_socket, serve_in_background
from tests.serve_process import serve
from tests.twilio_client import TwilioStream
from twiml.signature import sign

ACCOUNT = "AC" + "1" * 32
CALLER = {"From": "+14155550100", "To": "+14155550199"}


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
