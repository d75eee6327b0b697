"""X-Twilio-Signature for webhooks and the Media Streams upgrade."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from twiml.signature import sign, validate_upgrade, validate_webhook

# Twilio's documented request-validation example: auth token 12345, this URL
# and these POST parameters. Two variants (different phone numbers) are cited
# as "the docs example" by independent implementations in other languages;
# both vectors are pinned here, and RequestValidator reproduces both.
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
OLDER_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
OLDER_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

WSS_URL = "wss://voice.example.com/twilio/media"


def test_known_vectors_from_twilio_docs() -> None:
    assert sign(TOKEN, URL, PARAMS) == SIGNATURE
    assert validate_webhook(TOKEN, URL, PARAMS, SIGNATURE)
    assert sign(TOKEN, URL, OLDER_PARAMS) == OLDER_SIGNATURE
    assert validate_webhook(TOKEN, URL, OLDER_PARAMS, OLDER_SIGNATURE)


def test_parameter_order_does_not_matter() -> None:
    shuffled = dict(reversed(list(PARAMS.items())))
    assert validate_webhook(TOKEN, URL, shuffled, SIGNATURE)


@pytest.mark.parametrize(
    "params",
    [
        {**PARAMS, "Digits": "9999"},  # tampered value
        {**PARAMS, "Extra": "1"},  # added parameter
        {k: v for k, v in PARAMS.items() if k != "To"},  # dropped parameter
        {},
    ],
)
def test_tampered_params_fail(params: dict[str, str]) -> None:
    assert not validate_webhook(TOKEN, URL, params, SIGNATURE)


@pytest.mark.parametrize(
    "url",
    [
        "https://mycompany.com/myapp.php?foo=1&bar=3",  # query is signed
        "https://mycompany.com/myapp.php",
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        "https://evil.example.com/myapp.php?foo=1&bar=2",
        "https://mycompany.com/myapp.php?bar=2&foo=1",  # exactly as requested, not re-sorted
    ],
)
def test_another_url_fails(url: str) -> None:
    assert not validate_webhook(TOKEN, url, PARAMS, SIGNATURE)


def test_wrong_token_fails() -> None:
    assert not validate_webhook("54321", URL, PARAMS, SIGNATURE)


@pytest.mark.parametrize("signature", [None, "", SIGNATURE[:-1] + "A", SIGNATURE + "="])
def test_missing_or_bad_signature_fails(signature: str | None) -> None:
    assert not validate_webhook(TOKEN, URL, PARAMS, signature)
    assert not validate_upgrade(TOKEN, WSS_URL, signature)


def test_an_explicit_default_port_is_tolerated() -> None:
    # RequestValidator also tries the URL with its port removed.
    assert validate_webhook(
        TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS, SIGNATURE
    )


def test_multi_valued_form_fields_are_all_signed() -> None:
    class FormData(dict[str, str]):
        """Like Starlette's FormData: one value by key, all of them by getlist()."""

        def __init__(self, items: list[tuple[str, str]]) -> None:
            super().__init__(items)
            self.items_list = items

        def getlist(self, key: str) -> list[str]:
            return [value for name, value in self.items_list if name == key]

    form = FormData([("CallSid", "CA1"), ("Tag", "b"), ("Tag", "a")])
    # Twilio's recipe by hand: URL, then each name with each of its values, sorted.
    data = URL + "CallSid" + "CA1" + "Tag" + "a" + "Tag" + "b"
    expected = base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest())
    assert validate_webhook(TOKEN, URL, form, expected.decode())
    assert not validate_webhook(TOKEN, URL, {"CallSid": "CA1", "Tag": "a"}, expected.decode())


def test_upgrade_signature_covers_the_wss_url_only() -> None:
    signature = sign("auth-token", WSS_URL)
    assert validate_upgrade("auth-token", WSS_URL, signature)
    assert not validate_upgrade("other-token", WSS_URL, signature)
    assert not validate_upgrade("auth-token", "wss://voice.example.com/twilio/media2", signature)
    assert not validate_upgrade("auth-token", "wss://evil.example.com/twilio/media", signature)
    assert not validate_upgrade("auth-token", "https://voice.example.com/twilio/media", signature)
    # signed with no parameters: the same as signing the bare URL
    assert signature == sign("auth-token", WSS_URL, {})


def test_upgrade_with_an_explicit_port_in_our_url() -> None:
    signature = sign("auth-token", WSS_URL)
    assert validate_upgrade("auth-token", "wss://voice.example.com:443/twilio/media", signature)


def test_an_empty_auth_token_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="TWILIO_AUTH_TOKEN"):
        validate_webhook("", URL, PARAMS, SIGNATURE)
    with pytest.raises(ValueError):
        sign("", URL)
