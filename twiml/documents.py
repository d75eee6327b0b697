"""The TwiML documents the agent emits, built with twilio's own `VoiceResponse`.

Each function returns a complete `<Response>` as a string (with the XML
declaration), ready for a webhook body or the `Twiml=` parameter of a REST call
update. Text and attribute values are escaped by the builder (ElementTree);
characters XML 1.0 cannot carry at all (NUL, most C0 controls) are dropped
first, since they would make Twilio fail with error 12100 "Document parse
failure". Arguments we can check without I/O are checked here, with a
`ValueError` naming the problem, rather than discovered as a Twilio error
mid-call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit
from xml.etree import ElementTree

from twilio.twiml.voice_response import Connect, Dial, Gather, Start, VoiceResponse

from twiml.numbers import is_e164, is_sip_uri

FALLBACK_TEXT: Final = "We're sorry, an application error occurred. Goodbye."

DIAL_RECORD: Final = "record-from-answer-dual"
"""`<Dial record>` when a transfer is recorded. Twilio's values are
do-not-record, record-from-answer, record-from-ringing and their -dual forms;
-dual puts each party on its own channel, as our archive does (caller left)."""

# <Conference record>: do-not-record | record-from-start
CONFERENCE_RECORD: Final = "record-from-start"

_XML_INVALID: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("", text)


def _check_stream_url(url: str) -> None:
    # <Stream url>: a wss:// URL. Query strings are not supported (Twilio error
    # 31922): values travel as <Parameter name value>, which Twilio delivers in
    # the start message's customParameters.
    # Plain ws:// is allowed only to a loopback host: local development and
    # `callstream replay`, never something Twilio would be given.
    parts = urlsplit(url)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or not (parts.scheme == "wss" or (parts.scheme == "ws" and loopback)):
        raise ValueError(f"<Stream url> must be a wss:// URL, got {url!r}")
    if parts.query or "?" in url:
        raise ValueError(
            f"<Stream url> must not have a query string (Twilio error 31922), got {url!r}; "
            "pass values as parameters"
        )
    if parts.fragment:
        raise ValueError(f"<Stream url> must not have a fragment, got {url!r}")


def _add_parameters(stream: Any, parameters: Mapping[str, str | None]) -> None:
    for name, value in parameters.items():
        if not name:
            raise ValueError("a <Parameter> needs a name")
        if value:  # None and "" are skipped: Twilio would deliver nothing useful
            stream.parameter(name=_xml_text(name), value=_xml_text(value))


def connect_stream(
    stream_url: str, parameters: Mapping[str, str | None], *, then_redirect: str | None = None
) -> str:
    """`<Connect><Stream url><Parameter name value/>…</Stream></Connect>`: a
    bidirectional Media Stream to our socket. Parameters whose value is None or
    empty are left out.

    Twilio: "The only way Twilio executes TwiML instructions after
    <Connect><Stream> is if your server closes the WebSocket connection". With
    `then_redirect`, a `<Redirect method="POST">` follows, so a stream our
    server ends (a failed call update, an error) continues at that URL instead
    of hanging up in silence. A REST call update replaces the whole document,
    so it never runs then.
    """
    _check_stream_url(stream_url)
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    _add_parameters(stream, parameters)
    response.append(connect)
    if then_redirect is not None:
        response.redirect(then_redirect, method="POST")
    return str(response)


def start_stream(
    stream_url: str,
    parameters: Mapping[str, str | None],
    *,
    pause_s: int = 60,
    name: str | None = None,
) -> str:
    """`<Start><Stream url>` (a one-way fork of the call audio) then `<Pause length>`.

    A `<Start><Stream>` keeps streaming while the call goes on to other TwiML,
    so this is the mode where Twilio renders the agent's speech (`say_pause`
    sent by REST call updates) and we only listen. The pause keeps the call
    up until the first update arrives; when it runs out with nothing after it
    the call ends. `name` allows a later `<Stop><Stream name>`.
    """
    _check_stream_url(stream_url)
    if pause_s < 1:
        raise ValueError(f"pause_s must be at least 1, got {pause_s}")
    response = VoiceResponse()
    start = Start()
    stream = start.stream(url=stream_url, name=name)
    _add_parameters(stream, parameters)
    response.append(start)
    response.pause(length=pause_s)
    return str(response)


def dial(
    to: str,
    *,
    timeout_s: int,
    record: bool,
    action_url: str | None,
    caller_id: str | None = None,
    recording_status_callback: str | None = None,
) -> str:
    """`<Dial><Number>` for an E.164 `to`, `<Dial><Sip>` for a `sip:` URI.

    With `action_url`, Twilio requests it (POST) when the dialed call ends and
    continues with the TwiML it returns (our /twilio/dial-result resumes the
    agent if the transfer failed); without it, Twilio goes on with the rest of
    this document, which is empty, so the call ends. `timeout_s` is how long
    it rings (Twilio allows 5–600 s).
    """
    if not 5 <= timeout_s <= 600:
        raise ValueError(f"timeout_s must be within 5..600, got {timeout_s}")
    dial_verb = Dial(
        action=action_url,
        method="POST" if action_url else None,
        timeout=timeout_s,
        caller_id=caller_id,
        record=DIAL_RECORD if record else None,
        recording_status_callback=recording_status_callback if record else None,
    )
    if is_e164(to):
        dial_verb.number(to)
    elif is_sip_uri(to):
        dial_verb.sip(to)
    else:
        raise ValueError("transfer target must be an E.164 number or a sip: URI")
    response = VoiceResponse()
    response.append(dial_verb)
    return str(response)


def conference(
    room: str,
    *,
    record: bool,
    status_callback: str | None = None,
    recording_status_callback: str | None = None,
) -> str:
    """`<Dial><Conference record="record-from-start">room</Conference></Dial>`.

    `status_callback` receives the conference's events (statusCallback);
    `recording_status_callback` is where Twilio reports the recording.
    """
    room = _xml_text(room).strip()
    if not room:
        raise ValueError("a conference needs a room name")
    dial_verb = Dial()
    dial_verb.conference(
        room,
        record=CONFERENCE_RECORD if record else None,
        status_callback=status_callback,
        recording_status_callback=recording_status_callback if record else None,
    )
    response = VoiceResponse()
    response.append(dial_verb)
    return str(response)


def voicemail(
    *,
    max_s: int,
    action_url: str | None,
    recording_status_callback: str | None = None,
    beep: bool = True,
) -> str:
    """`<Record maxLength playBeep action/>`, then `<Hangup/>` when there is no action.

    With an action, Twilio requests it (POST) when the recording ends and
    nothing after `<Record>` runs. Twilio's docs say that without an action
    `<Record>` requests the current document's URL again; the `<Hangup/>` is
    there for documents that have none (TwiML sent by REST call update), so
    prefer giving an `action_url`.
    """
    if max_s < 1:
        raise ValueError(f"max_s must be at least 1, got {max_s}")
    response = VoiceResponse()
    response.record(
        max_length=max_s,
        play_beep=beep,
        action=action_url,
        method="POST" if action_url else None,
        recording_status_callback=recording_status_callback,
    )
    if not action_url:
        response.hangup()
    return str(response)


def hangup() -> str:
    """`<Response><Hangup/></Response>`."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


def _say(
    parent: VoiceResponse | Gather, text: str, voice: str | None, language: str | None = None
) -> None:
    text = _xml_text(text)
    if not text.strip():
        raise ValueError("<Say> needs some text")
    parent.say(text, voice=voice, language=language)


def say_and_hangup(text: str = FALLBACK_TEXT, voice: str | None = None) -> str:
    """`<Say>text</Say><Hangup/>`: the fallback when the webhook or the stream fails."""
    response = VoiceResponse()
    _say(response, text, voice)
    response.hangup()
    return str(response)


def say_pause(text: str, voice: str | None, pause_s: int) -> str:
    """`<Say voice="Polly.Joanna">text</Say><Pause length/>`: speech rendered by
    Twilio, then a pause that keeps the call up until the next update."""
    if pause_s < 1:
        raise ValueError(f"pause_s must be at least 1, got {pause_s}")
    response = VoiceResponse()
    _say(response, text, voice)
    response.pause(length=pause_s)
    return str(response)


# --- Twilio-rendered speech (CALLSTREAM_SPEECH=twiml) ---------------------------------

ONEWAY_STREAM_NAME: Final = "callstream"
"""`<Stream name>` of the one-way fork, so a hand-on can `<Stop>` it by name."""


def hold(*, keys_url: str, continue_url: str, hold_s: int) -> str:
    """`<Gather input="dtmf" numDigits="1" timeout action/>` then `<Redirect>`.

    Keeps a call whose agent is silent up while listening for keys: a key is
    POSTed to `keys_url` as `Digits`; with none for `hold_s` seconds Twilio
    goes on to the `<Redirect>` (a Gather with no input and no
    actionOnEmptyResult "will continue to the next verb"), where we answer
    with whatever the call should do next, usually this document again.
    """
    response = VoiceResponse()
    _hold(response, keys_url=keys_url, continue_url=continue_url, hold_s=hold_s)
    return str(response)


def _hold(response: VoiceResponse, *, keys_url: str, continue_url: str, hold_s: int) -> None:
    if hold_s < 1:
        raise ValueError(f"hold_s must be at least 1, got {hold_s}")  # Twilio warning 13313
    response.append(
        Gather(input="dtmf", num_digits=1, timeout=hold_s, action=keys_url, method="POST")
    )
    response.redirect(continue_url, method="POST")


def start_stream_and_hold(
    stream_url: str,
    parameters: Mapping[str, str | None],
    *,
    keys_url: str,
    continue_url: str,
    hold_s: int,
    name: str = ONEWAY_STREAM_NAME,
) -> str:
    """`<Start><Stream name url>` (a one-way fork that lasts until the call
    ends or `<Stop><Stream name>`), then `hold(...)`: the answer to a call in
    CALLSTREAM_SPEECH=twiml mode. Twilio: "While Twilio is setting up the
    Media Stream, it also immediately continues with the next TwiML
    instruction. If there is no instruction, the Call disconnects."
    """
    _check_stream_url(stream_url)
    response = VoiceResponse()
    start = Start()
    stream = start.stream(url=stream_url, name=name)
    _add_parameters(stream, parameters)
    response.append(start)
    _hold(response, keys_url=keys_url, continue_url=continue_url, hold_s=hold_s)
    return str(response)


def speak(
    text: str,
    *,
    voice: str | None,
    language: str | None,
    said_url: str,
    keys: bool,
    gather_timeout_s: int = 1,
) -> str:
    """One agent prompt rendered by Twilio, and a callback when it is over.

    With `keys` (the caller may answer with keys, and interrupt): the `<Say>`
    is nested in `<Gather input="dtmf" numDigits="1" actionOnEmptyResult>`,
    so a key stops the Say at once (Twilio's own barge-in) and Twilio POSTs
    `said_url` with `Digits`; with no key within `gather_timeout_s` after the
    Say, it POSTs `said_url` with empty `Digits`. Without `keys`:
    `<Say/><Redirect method="POST">said_url</Redirect>`, and keys during the
    prompt are not heard (as a non-barge-in prompt ignores them).
    """
    if gather_timeout_s < 1:
        raise ValueError(f"gather_timeout_s must be at least 1, got {gather_timeout_s}")
    response = VoiceResponse()
    if keys:
        gather = Gather(
            input="dtmf",
            num_digits=1,
            timeout=gather_timeout_s,
            action=said_url,
            method="POST",
            action_on_empty_result=True,
        )
        _say(gather, text, voice, language)
        response.append(gather)
    else:
        _say(response, text, voice, language)
        response.redirect(said_url, method="POST")
    return str(response)


def stream_stopped_first(twiml: str, name: str = ONEWAY_STREAM_NAME) -> str:
    """The same document with `<Stop><Stream name/></Stop>` as its first verb:
    a call handed on (transfer, conference, voicemail) stops the one-way fork
    so the agent no longer listens in."""
    root = ElementTree.fromstring(twiml)
    if root.tag != "Response":
        raise ValueError("not a TwiML <Response> document")
    stop = ElementTree.Element("Stop")
    ElementTree.SubElement(stop, "Stream", {"name": name})
    root.insert(0, stop)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(root, encoding="unicode")


FALLBACK_TWIML: Final = say_and_hangup()
"""Prebuilt `say_and_hangup(FALLBACK_TEXT)`: nothing left to fail when it is needed."""
