"""Where a call can go, and how a number may appear in logs.

A transfer target is an E.164 phone number (`<Dial><Number>`) or a SIP URI
(`<Dial><Sip>`). E.164: a "+", a country code that does not start with 0, at
most 15 digits in all. Numbers are personal data: logs, the live feed and
metrics show them through `mask_number` only.
"""

from __future__ import annotations

import re
from typing import Final

_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")

# sip:user@host[:port][;param[=value]]... — RFC 3261 §19.1.1 in spirit, with
# only what a transfer target needs: no password, no URI headers (`?…`).
_SIP_USER: Final = r"[A-Za-z0-9\-_.!~*'()&=+$,%]+"
_SIP_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_SIP_HOST: Final = rf"(?:{_SIP_LABEL}(?:\.{_SIP_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
_SIP_PARAM: Final = r";[A-Za-z0-9\-_.!~*'()%]+(?:=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+)?"
_SIP: Final = re.compile(
    rf"(?i:sip):(?P<user>{_SIP_USER})@(?P<host>{_SIP_HOST})(?::(?P<port>[0-9]{{1,5}}))?(?:{_SIP_PARAM})*"
)


def is_e164(s: str) -> bool:
    """`+` then 2 to 15 digits, the first not 0 (`^\\+[1-9]\\d{1,14}$`, ASCII digits)."""
    return _E164.fullmatch(s) is not None


def is_sip_uri(s: str) -> bool:
    """`sip:user@host[:port][;params]`, port 1–65535."""
    match = _SIP.fullmatch(s)
    if match is None:
        return False
    port = match["port"]
    return port is None or 0 < int(port) <= 65535


def mask_number(s: str) -> str:
    """A caller or target, safe for logs.

    E.164 keeps up to 4 leading digits (the country-ish prefix) and the last
    4 (`+1555***0000`), fewer on short numbers so that at least 3 digits are
    always hidden. A SIP URI keeps the host and, if the user part is longer
    than 3 characters, its first 2 (`sip:al***@example.com`); port and
    parameters are dropped. Anything else is `***`.
    """
    if is_e164(s):
        digits = s[1:]
        shown = min(8, max(0, len(digits) - 3))  # at least 3 digits stay hidden
        tail = min(4, shown)
        head = shown - tail
        return "+" + digits[:head] + "***" + (digits[-tail:] if tail else "")
    match = _SIP.fullmatch(s)
    if match is not None:
        user = match["user"]
        kept = user[:2] if len(user) > 3 else ""
        return f"sip:{kept}***@{match['host']}"
    return "***"


_IN_TEXT: Final = re.compile(r"\+[0-9]{2,15}|(?i:sip):[^\s'\"<>,]+")


def mask_numbers_in(text: str) -> str:
    """`text` (say, an error message from Twilio) with every E.164 number and
    SIP URI in it masked by `mask_number`."""
    return _IN_TEXT.sub(lambda m: mask_number(m.group(0)), text)
