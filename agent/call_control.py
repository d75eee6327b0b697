"""Twilio REST call control: update the live call with TwiML, or end it.

`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with `Twiml=` or
`Status=completed` (Twilio REST "Update a Call resource"). The official
client does the request; `client.api.base_url` is pointed at TWILIO_API_BASE
so tests and replay can use a local fake that speaks the same API.

Errors become `CallControlError` with Twilio's code and whether a retry may
help: 20429 (too many requests) and 5xx are retryable, 21220 (call not in
progress), 20003 (authentication) and 21211 (invalid number) are not.
"""

from __future__ import annotations

import asyncio
import logging
import random

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from agent.ports import CallControlError

log = logging.getLogger(__name__)

RETRYABLE_CODES = {20429}
NOT_IN_PROGRESS = 21220


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

    async def _update(self, call_sid: str, **fields: str) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                await self._client.calls(call_sid).update_async(**fields)
                return
            except TwilioRestException as exc:
                error = CallControlError(
                    f"Twilio refused the call update: HTTP {exc.status}, code {exc.code}: {exc.msg}",
                    code=exc.code,
                    retryable=exc.code in RETRYABLE_CODES or exc.status >= 500,
                )
            except (TimeoutError, OSError) as exc:
                error = CallControlError(f"Twilio REST unreachable: {exc!r}", retryable=True)
            if not error.retryable or attempt == self._attempts:
                raise error
            # exponential backoff with full jitter
            delay = random.uniform(0, self._backoff_s * 2 ** (attempt - 1))
            log.warning("call update failed (%s); retry %d in %.2fs", error, attempt, delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.close()
