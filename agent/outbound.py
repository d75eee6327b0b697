"""`callstream call TO [--from NUMBER]`: place an outbound call through Twilio REST.

Twilio calls TO from NUMBER (`--from`, else TWILIO_FROM_NUMBER); when the
callee answers it asks our `/twilio/voice` webhook what to do (the same flow
as an inbound call) and reports the call's progress to `/twilio/status` for
the events initiated, ringing, answered and completed (Twilio REST "Create a
Call resource": Url, StatusCallback, StatusCallbackEvent).

Everything that can be checked locally is checked before any request: the
settings (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL) and both
numbers (E.164 or a sip: URI). Twilio's refusals become one clear line each:
20003 (credentials), 21211 (invalid number), 20429 (rate limit, after the
retries with backoff and jitter that agent/call_control.py does).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import IO

from agent.call_control import AUTHENTICATION, INVALID_NUMBER, TwilioCallControl
from agent.ports import CallControlError
from agent.settings import ConfigError, Settings
from twiml.numbers import is_e164, is_sip_uri, mask_number

STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
RATE_LIMITED = 20429


@dataclass(frozen=True)
class OutboundCall:
    """A checked request to place a call."""

    to: str
    from_: str
    url: str  # the voice webhook Twilio asks once the callee answers
    status_callback: str


def _check_party(flag: str, value: str) -> None:
    if not (is_e164(value) or is_sip_uri(value)):
        raise ValueError(
            f"{flag} {value!r} is not an E.164 number (like +14155550100) or a sip: URI "
            "(like sip:alice@example.com)"
        )


def outbound_call(settings: Settings, to: str, from_: str | None) -> OutboundCall:
    """Check everything locally; ConfigError names a missing setting, ValueError a bad number."""
    missing = [
        name
        for name, value in (
            ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            ("PUBLIC_BASE_URL", settings.public_base_url),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"callstream call needs {' and '.join(missing)} (the Twilio account to call "
            "with, and the https:// address where Twilio reaches this server's webhooks)"
        )
    _check_party("TO", to)
    caller = from_ or settings.twilio_from_number
    if not caller:
        raise ConfigError("callstream call needs a caller ID: pass --from NUMBER or set TWILIO_FROM_NUMBER")
    _check_party("--from", caller)
    assert settings.public_base_url
    base = settings.public_base_url.rstrip("/")
    return OutboundCall(to, caller, f"{base}/twilio/voice", f"{base}/twilio/status")


async def place(
    settings: Settings, call: OutboundCall, *, attempts: int = 3, backoff_s: float = 0.5
) -> str:
    """Ask Twilio to place `call`; its Call SID. Raises CallControlError."""
    assert settings.twilio_account_sid and settings.twilio_auth_token
    control = TwilioCallControl(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        settings.twilio_api_base,
        attempts=attempts,
        backoff_s=backoff_s,
    )
    try:
        return await control.place_call(
            call.to, call.from_, url=call.url, status_callback=call.status_callback, status_events=STATUS_EVENTS
        )
    finally:
        await control.aclose()


def explain(error: CallControlError, call: OutboundCall) -> str:
    """One line a person can act on."""
    if error.code == AUTHENTICATION:
        return "Twilio rejected the credentials (20003): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    if error.code == INVALID_NUMBER:
        return f"Twilio says {mask_number(call.to)} is not a number it can call (21211)"
    if error.code == RATE_LIMITED:
        return "Twilio is limiting requests (20429) and still was after retrying: try again in a minute"
    return f"Twilio did not place the call: {error}"


def call_command(
    settings: Settings,
    to: str,
    from_: str | None,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    backoff_s: float = 0.5,
) -> int:
    """The `callstream call` command: 0 placed, 1 Twilio refused, 2 bad input.
    Prints the new Call SID on stdout, everything else on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        call = outbound_call(settings, to, from_)
    except (ConfigError, ValueError) as exc:
        print(f"callstream call: {exc}", file=err)
        return 2
    try:
        sid = asyncio.run(place(settings, call, backoff_s=backoff_s))
    except CallControlError as exc:
        print(f"callstream call: {explain(exc, call)}", file=err)
        return 1
    print(f"calling {mask_number(call.to)} from {mask_number(call.from_)}: status to {call.status_callback}", file=err)
    print(sid, file=out)
    return 0
