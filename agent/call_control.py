"""Twilio REST call control: update the live call with TwiML, end it, or place one.

`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with `Twiml=` or
`Status=completed` (Twilio REST "Update a Call resource"); `POST …/Calls.json`
to place an outbound call ("Create a Call resource"). The official client
does the request; `client.api.base_url` is pointed at TWILIO_API_BASE so tests
and replay can use a local fake that speaks the same API.

Errors become `CallControlError` with Twilio's code and whether a retry may
help: 20429 (too many requests) and 5xx are retryable and retried here with
exponential backoff and full jitter; 21220 (call not in progress), 20003
(authentication) and 21211 (invalid number) are not.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from agent.ports import CallControl, CallControlError
from twiml.numbers import mask_numbers_in

log = logging.getLogger(__name__)

RETRYABLE_CODES = {20429}
NOT_IN_PROGRESS = 21220
AUTHENTICATION = 20003
INVALID_NUMBER = 21211

T = TypeVar("T")


class TwilioCallControl:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        api_base: str = "https://api.twilio.com",
        *,
        attempts: int = 3,
        backoff_s: float = 0.25,
        timeout_s: float = 10.0,
    ) -> None:
        # must be built inside the running loop: it opens an aiohttp session
        self._http = AsyncTwilioHttpClient(timeout=timeout_s)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.api.base_url = api_base.rstrip("/")
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        await self._update(call_sid, twiml=twiml)

    async def hang_up(self, call_sid: str) -> None:
        await self._update(call_sid, status="completed")

    async def place_call(
        self,
        to: str,
        from_: str,
        *,
        url: str,
        status_callback: str,
        status_events: Sequence[str] = ("initiated", "ringing", "answered", "completed"),
    ) -> str:
        """Start an outbound call that asks `url` what to do once answered;
        the new call's SID. Status callbacks go to `status_callback` (POST)."""

        async def create() -> str:
            call = await self._client.calls.create_async(
                to=to,
                from_=from_,
                url=url,
                method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
                status_callback_event=list(status_events),
            )
            return str(call.sid)

        return await self._with_retries(create, "placing a call")

    async def _update(self, call_sid: str, **fields: str) -> None:
        async def update() -> None:
            await self._client.calls(call_sid).update_async(**fields)

        await self._with_retries(update, "call update")

    async def _with_retries(self, request: Callable[[], Awaitable[T]], what: str) -> T:
        for attempt in range(1, self._attempts + 1):
            try:
                return await request()
            except TwilioRestException as exc:
                error = CallControlError(
                    f"Twilio refused the {what}: HTTP {exc.status}, code {exc.code}: "
                    f"{mask_numbers_in(str(exc.msg))}",  # it may quote the number
                    code=exc.code,
                    retryable=exc.code in RETRYABLE_CODES or exc.status >= 500,
                )
            except (TimeoutError, OSError) as exc:
                error = CallControlError(f"Twilio REST unreachable: {exc!r}", retryable=True)
            if not error.retryable or attempt == self._attempts:
                raise error
            # exponential backoff with full jitter
            delay = random.uniform(0, self._backoff_s * 2 ** (attempt - 1))
            log.warning("%s failed (%s); retry %d in %.2fs", what, error, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.close()


class SerialCallControl:
    """One call's updates, one at a time and in order; a newer update makes
    older ones still waiting pointless, so they are skipped.

    In CALLSTREAM_SPEECH=twiml mode the agent's prompts, barge-in holds and
    hand-ons are all updates of the same call; without this a hold sent just
    before a transfer could land after it and keep the caller on hold.
    `update_twiml`/`hang_up` return normally when skipped; `sent` counts the
    updates that reached Twilio.
    """

    def __init__(self, inner: CallControl) -> None:
        self._inner = inner
        self._lock = asyncio.Lock()
        self._latest = 0
        self.sent = 0
        self.skipped = 0

    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        await self.send(call_sid, twiml)

    async def hang_up(self, call_sid: str) -> None:
        await self.send(call_sid, None)

    async def send(self, call_sid: str, twiml: str | None) -> bool:
        """Update the call (None: hang up); False if a newer update made this
        one pointless before its turn came."""
        self._latest += 1
        mine = self._latest
        async with self._lock:
            if mine != self._latest:
                self.skipped += 1
                return False
            if twiml is None:
                await self._inner.hang_up(call_sid)
            else:
                await self._inner.update_twiml(call_sid, twiml)
            self.sent += 1
            return True
