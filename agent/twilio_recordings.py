"""Twilio recordings: download the media, delete it once it is archived.

Twilio REST "Recording" resource: the media is at
`GET /2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}.wav`
(append `.wav` or `.mp3`; basic auth AccountSid:AuthToken), and
`DELETE /2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}.json`
removes it (204). The URL is built from TWILIO_API_BASE and validated SIDs,
never taken from the callback's `RecordingUrl`: credentials only ever go to
the configured API. The download uses `requests` (twilio's own HTTP library;
its client returns bodies as text, unfit for audio), which drops the
Authorization header if Twilio redirects to another host for the media.
Deletion goes through the official client. Blocking: the worker calls these
on a thread.
"""

from __future__ import annotations

import re

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
RECORDING_SID = re.compile(r"^RE[0-9a-fA-F]{32}$")


class RecordingFetchError(Exception):
    """Twilio did not hand over (or delete) the recording; `retryable` if it may work later."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TwilioRecordings:
    def __init__(self, account_sid: str, auth_token: str, api_base: str = "https://api.twilio.com", *, timeout_s: float = 60.0) -> None:
        self._auth = (account_sid, auth_token)
        self._base = api_base.rstrip("/")
        self._timeout_s = timeout_s
        self._client = Client(account_sid, auth_token)
        self._client.api.base_url = self._base

    def media_url(self, account_sid: str, recording_sid: str) -> str:
        _check(account_sid, recording_sid)
        return f"{self._base}/2010-04-01/Accounts/{account_sid}/Recordings/{recording_sid}.wav"

    def fetch_wav(self, account_sid: str, recording_sid: str) -> bytes:
        url = self.media_url(account_sid, recording_sid)
        try:
            response = requests.get(url, auth=self._auth, timeout=self._timeout_s)
        except requests.RequestException as exc:
            raise RecordingFetchError(f"Twilio unreachable fetching {recording_sid}: {exc!r}") from None
        if response.status_code != 200:
            raise RecordingFetchError(
                f"Twilio answered HTTP {response.status_code} for recording {recording_sid}: {response.text[:200]}"
            )
        return response.content

    def delete(self, account_sid: str, recording_sid: str) -> None:
        _check(account_sid, recording_sid)
        try:
            self._client.api.v2010.accounts(account_sid).recordings(recording_sid).delete()
        except TwilioRestException as exc:
            if exc.status == 404:
                return  # already gone
            raise RecordingFetchError(
                f"Twilio refused to delete recording {recording_sid}: HTTP {exc.status}, code {exc.code}"
            ) from None
        except requests.RequestException as exc:
            raise RecordingFetchError(f"Twilio unreachable deleting {recording_sid}: {exc!r}") from None


def _check(account_sid: str, recording_sid: str) -> None:
    if not ACCOUNT_SID.match(account_sid) or not RECORDING_SID.match(recording_sid):
        raise RecordingFetchError(
            f"not a Twilio account/recording SID: {account_sid!r}, {recording_sid!r}", retryable=False
        )
