"""Webhook forms are parsed as Starlette parses them (agent/webhook_form.py `read_form`),
signatures included, and an oversized form gets Starlette's answer."""

from __future__ import annotations

from urllib.parse import quote_plus

import aiohttp
from server import running_server

from twiml.signature import sign

TOKEN = "f" * 32


async def test_url_encoded_values_decode_and_sign_as_twilio_sends_them() -> None:
    form = {
        "CallSid": "CA" + "1" * 32,
        "From": "+15551230000",
        "To": "sip:zoë@example.com",
        "CallerName": "A & B; c=d",
        "Empty": "",
    }
    async with running_server(twilio_auth_token=TOKEN) as server:
        status, twiml = await server.post("/twilio/voice", form)
    assert status == 200 and "<Stream" in twiml
    assert 'value="+15551230000"' in twiml  # a "+" sent as %2B stays a plus


async def test_plus_in_a_raw_body_is_a_space_and_the_signature_says_so() -> None:
    """`+` encodes a space (application/x-www-form-urlencoded): signed over the decoded form."""
    async with running_server(twilio_auth_token=TOKEN) as server:
        url = server.base + "/twilio/voice"
        body = "CallSid=CA" + "2" * 32 + "&CallerName=Ann+Lee&From=" + quote_plus("+15551230000")
        form = {"CallSid": "CA" + "2" * 32, "CallerName": "Ann Lee", "From": "+15551230000"}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sign(TOKEN, url, form)}
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200


async def test_more_than_a_thousand_fields_is_a_400(caplog) -> None:
    async with running_server(twilio_auth_token=TOKEN) as server:
        url = server.base + "/twilio/voice"
        body = "&".join(f"f{i}=x" for i in range(1001))
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 400
    assert "more than 1000 form fields" in caplog.text
