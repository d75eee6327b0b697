"""`callstream serve --json-logs` as a log shipper sees it: one JSON object
per line, `call_sid` on every line of a call, phone numbers masked."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import websockets

from agent.logs import JsonFormatter
from tests.serve_process import serve
from tests.twilio_client import TwilioStream

CALLER = {"From": "+14155550100", "To": "+14155550199"}


async def test_every_line_is_json_and_a_calls_lines_carry_its_sid(tmp_path):
    async with serve(tmp_path / "archive", "--json-logs") as server:
        async with httpx.AsyncClient() as client:
            answer = await client.post(server.base + "/twilio/voice", data={"CallSid": "CA" + "7" * 32, **CALLER})
            assert answer.status_code == 200
        async with websockets.connect(server.stream_url) as ws:
            stream = TwilioStream(ws)
            await stream.start({**CALLER, "CallSid": stream.call_sid})
            await stream.silence(300)
            await stream.send_raw("{not json")  # a malformed message is logged for the call too
            await stream.dtmf("1")
            await stream.silence(300)
            await stream.stop()
        log_text = server.stderr()
    lines = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert lines and all({"t", "level", "logger", "call_sid", "msg"} <= line.keys() for line in lines)
    session_lines = [line for line in lines if line["logger"].startswith("callstream.session")]
    assert len(session_lines) >= 3
    assert {line["call_sid"] for line in session_lines} == {stream.call_sid}
    webhook = [line for line in lines if "incoming call" in line["msg"]]
    assert webhook and webhook[0]["call_sid"] == "CA" + "7" * 32
    assert any(line["call_sid"] == stream.call_sid and "malformed" in line["msg"].lower() for line in lines)
    for number in CALLER.values():
        assert number not in log_text  # masked: +1415***0100
    assert "+1415***0100" in log_text


def test_an_exception_is_one_line_with_its_traceback():
    record = logging.LogRecord("callstream.session", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    record.call_sid = "CA1"  # what call_logger("CA1") stamps
    entry = json.loads(JsonFormatter().format(record))
    assert entry["call_sid"] == "CA1" and entry["msg"] == "boom x"
    assert "ValueError: bad" in entry["exc"] and "\n" not in JsonFormatter().format(record)
