"""X-Twilio-Signature checks for webhooks and the Media Streams upgrade.

Twilio, "Secure webhooks" (https://www.twilio.com/docs/usage/webhooks/webhooks-security):
"Twilio signs all HTTP requests to your app with an X-Twilio-Signature HTTP
header." The signature is base64(HMAC-SHA1(auth token, URL + each POST
parameter name and value, sorted by name)). The WebSocket upgrade of a Media
Stream is signed the same way over the exact `wss://host/path` Twilio
connected to, with no parameters.

The work is done by twilio's `RequestValidator`; what we rely on from it:

- the URL must be the one Twilio requested, byte for byte, query string
  included and still percent-encoded: build it from PUBLIC_BASE_URL and the
  raw path and query, never from what a proxy says the host is;
- ports: it accepts the signature of the URL with its port removed or with
  the scheme's default port added. It only knows https (443) and falls back
  to 80, so for `wss://` only the no-port form matches reliably: use the same
  URL, without a port, in `<Stream url>` and here;
- parameters may be a plain mapping or a multi-dict with `getlist`
  (Starlette's FormData): repeated names are all signed, values sorted;
- `bodySHA256`: the body-hash check only runs when the parameters are a raw
  JSON body string and the URL carries `?bodySHA256=`. Voice webhooks are
  form posts and we pass a mapping, so it never runs here;
- a missing signature makes it raise (`len(None)`), so we answer False first.

Cost (bench webhook): `validate` signs the URL twice (with and without a
port), and for each parameter its `get_values` tries `getall`, then `getlist`,
then `[]`, raising AttributeError on each miss: ~300 µs for the 26 fields of
a voice webhook. We give it a view with `getall`, and check the URL exactly
as given first (it is one of the two forms `validate` accepts), so the usual
request costs one signature (~20 µs); only a mismatch runs `validate`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from typing import Any

from twilio.request_validator import RequestValidator


def _validator(auth_token: str) -> RequestValidator:
    if not auth_token:
        raise ValueError("auth_token is empty: set TWILIO_AUTH_TOKEN")
    return RequestValidator(auth_token)


class _Params:
    """The form as `RequestValidator.get_values` finds it at once (`getall`)."""

    __slots__ = ("_params",)

    def __init__(self, params: Mapping[str, str]) -> None:
        self._params = params

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __bool__(self) -> bool:
        return bool(self._params)

    def getall(self, name: str) -> list[Any]:
        getlist = getattr(self._params, "getlist", None)  # a multi-dict: every value is signed
        return list(getlist(name)) if getlist is not None else [self._params[name]]


def validate_webhook(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """True if `signature` signs this exact public `url` (with its query) and
    these POST form `params`. A missing or empty signature is False."""
    if not signature:
        return False
    validator = _validator(auth_token)
    view = _Params(params)
    if hmac.compare_digest(validator.compute_signature(url, view).encode(), signature.encode()):
        return True
    return bool(validator.validate(url, view, signature))


def validate_upgrade(auth_token: str, wss_url: str, signature: str | None) -> bool:
    """True if `signature` signs the `wss://host/path` Twilio connected to (no params)."""
    if not signature:
        return False
    return bool(_validator(auth_token).validate(wss_url, {}, signature))


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The X-Twilio-Signature Twilio would send (for replay tools and tests)."""
    return str(_validator(auth_token).compute_signature(url, params or {}))
