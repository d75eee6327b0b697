"""TwiML documents (checked as XML structure) and number helpers."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from twiml.documents import (
    FALLBACK_TEXT,
    FALLBACK_TWIML,
    conference,
    connect_stream,
    dial,
    hangup,
    hold,
    say_and_hangup,
    say_pause,
    speak,
    start_stream,
    start_stream_and_hold,
    stream_stopped_first,
    voicemail,
)
from twiml.numbers import is_e164, is_sip_uri, mask_number, mask_numbers_in

STREAM_URL = "wss://voice.example.com/twilio/media"


def parse(twiml: str) -> ET.Element:
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return root


def tags(element: ET.Element) -> list[str]:
    return [child.tag for child in element]


# --- <Connect><Stream> / <Start><Stream> ---------------------------------------------


def test_connect_stream() -> None:
    root = parse(
        connect_stream(
            STREAM_URL,
            {"From": "+15551230000", "CallerName": 'Ada "A&B" <O\'Neil>', "Empty": "", "No": None},
        )
    )
    assert tags(root) == ["Connect"]
    (stream,) = root.find("Connect")
    assert stream.tag == "Stream"
    assert stream.attrib == {"url": STREAM_URL}
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "From", "value": "+15551230000"}),
        ("Parameter", {"name": "CallerName", "value": 'Ada "A&B" <O\'Neil>'}),
    ]


def test_characters_xml_cannot_carry_are_dropped() -> None:
    root = parse(connect_stream(STREAM_URL, {"Name": "a\x00b\x07c\td"}))
    parameter = root.find("Connect/Stream/Parameter")
    assert parameter is not None and parameter.get("value") == "abc\td"


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8080/twilio/media", "ws://localhost:1/twilio/media"])
def test_plain_ws_only_to_loopback(url: str) -> None:
    assert ET.fromstring(connect_stream(url, {})).find("Connect/Stream") is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://voice.example.com/twilio/media",
        "ws://voice.example.com/twilio/media",
        "voice.example.com/twilio/media",
        "wss:///twilio/media",
        "wss://voice.example.com/twilio/media?call=CA1",  # Twilio error 31922
        "wss://voice.example.com/twilio/media?",
        "wss://voice.example.com/twilio/media#top",
        "",
    ],
)
def test_stream_url_must_be_plain_wss(url: str) -> None:
    """Only wss:// (ws:// to a loopback host is for local replay)."""
    with pytest.raises(ValueError):
        connect_stream(url, {})
    with pytest.raises(ValueError):
        start_stream(url, {})


def test_a_parameter_needs_a_name() -> None:
    with pytest.raises(ValueError):
        connect_stream(STREAM_URL, {"": "value"})


def test_start_stream_forks_then_pauses() -> None:
    root = parse(start_stream(STREAM_URL, {"mode": "listen"}, pause_s=30, name="fork"))
    assert tags(root) == ["Start", "Pause"]
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.attrib == {"url": STREAM_URL, "name": "fork"}
    assert [p.attrib for p in stream] == [{"name": "mode", "value": "listen"}]
    assert root.find("Pause").attrib == {"length": "30"}
    assert "name" not in parse(start_stream(STREAM_URL, {})).find("Start/Stream").attrib
    with pytest.raises(ValueError):
        start_stream(STREAM_URL, {}, pause_s=0)


# --- <Dial> ---------------------------------------------------------------------


def test_dial_a_number_recorded_with_an_action() -> None:
    root = parse(
        dial(
            "+14155550100",
            timeout_s=20,
            record=True,
            action_url="https://voice.example.com/twilio/dial-result",
            caller_id="+15557650000",
            recording_status_callback="https://voice.example.com/twilio/recording",
        )
    )
    assert tags(root) == ["Dial"]
    verb = root.find("Dial")
    assert verb is not None
    assert verb.attrib == {
        "action": "https://voice.example.com/twilio/dial-result",
        "method": "POST",
        "timeout": "20",
        "callerId": "+15557650000",
        "record": "record-from-answer-dual",
        "recordingStatusCallback": "https://voice.example.com/twilio/recording",
    }
    assert [(child.tag, child.text) for child in verb] == [("Number", "+14155550100")]


def test_dial_a_sip_uri_unrecorded_without_action() -> None:
    uri = "sip:alice@pbx.example.com:5061;transport=tls"
    verb = parse(dial(uri, timeout_s=30, record=False, action_url=None)).find("Dial")
    assert verb is not None
    assert verb.attrib == {"timeout": "30"}
    assert [(child.tag, child.text) for child in verb] == [("Sip", uri)]


@pytest.mark.parametrize("to", ["14155550100", "+0123", "operator", "tel:+14155550100", ""])
def test_dial_rejects_what_is_neither_number_nor_sip(to: str) -> None:
    with pytest.raises(ValueError):
        dial(to, timeout_s=20, record=False, action_url=None)


@pytest.mark.parametrize("timeout_s", [4, 0, -1, 601])
def test_dial_timeout_within_twilio_limits(timeout_s: int) -> None:
    with pytest.raises(ValueError):
        dial("+14155550100", timeout_s=timeout_s, record=False, action_url=None)


def test_conference() -> None:
    verb = parse(
        conference(
            "support-CA123",
            record=True,
            status_callback="https://voice.example.com/twilio/status",
            recording_status_callback="https://voice.example.com/twilio/recording",
        )
    ).find("Dial")
    assert verb is not None and verb.attrib == {}
    (room,) = verb
    assert room.tag == "Conference" and room.text == "support-CA123"
    assert room.attrib == {
        "record": "record-from-start",
        "statusCallback": "https://voice.example.com/twilio/status",
        "recordingStatusCallback": "https://voice.example.com/twilio/recording",
    }
    unrecorded = parse(conference("room & <board>", record=False)).find("Dial/Conference")
    assert unrecorded is not None
    assert unrecorded.attrib == {} and unrecorded.text == "room & <board>"
    with pytest.raises(ValueError):
        conference("  ", record=False)


# --- <Record>, <Hangup>, <Say> -------------------------------------------------------


def test_voicemail_with_an_action() -> None:
    root = parse(
        voicemail(
            max_s=120,
            action_url="https://voice.example.com/twilio/voicemail",
            recording_status_callback="https://voice.example.com/twilio/recording",
        )
    )
    assert tags(root) == ["Record"]
    assert root.find("Record").attrib == {
        "maxLength": "120",
        "playBeep": "true",
        "action": "https://voice.example.com/twilio/voicemail",
        "method": "POST",
        "recordingStatusCallback": "https://voice.example.com/twilio/recording",
    }


def test_voicemail_without_an_action_hangs_up() -> None:
    root = parse(voicemail(max_s=60, action_url=None, beep=False))
    assert tags(root) == ["Record", "Hangup"]
    assert root.find("Record").attrib == {"maxLength": "60", "playBeep": "false"}
    with pytest.raises(ValueError):
        voicemail(max_s=0, action_url=None)


def test_hangup() -> None:
    assert tags(parse(hangup())) == ["Hangup"]


def test_say_and_hangup_is_the_fallback() -> None:
    root = parse(FALLBACK_TWIML)
    assert tags(root) == ["Say", "Hangup"]
    assert root.find("Say").text == FALLBACK_TEXT
    assert say_and_hangup() == FALLBACK_TWIML
    voiced = parse(say_and_hangup("Goodbye & thanks", voice="Polly.Joanna")).find("Say")
    assert voiced is not None
    assert voiced.attrib == {"voice": "Polly.Joanna"} and voiced.text == "Goodbye & thanks"


def test_say_pause() -> None:
    root = parse(say_pause("Say <billing> or support.", "Polly.Joanna", 4))
    assert tags(root) == ["Say", "Pause"]
    assert root.find("Say").attrib == {"voice": "Polly.Joanna"}
    assert root.find("Say").text == "Say <billing> or support."
    assert root.find("Pause").attrib == {"length": "4"}
    assert "voice" not in parse(say_pause("Hi", None, 1)).find("Say").attrib
    with pytest.raises(ValueError):
        say_pause("   ", "Polly.Joanna", 1)
    with pytest.raises(ValueError):
        say_pause("Hi", "Polly.Joanna", 0)
    with pytest.raises(ValueError):
        say_and_hangup("\x00")


# --- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s", ["+14155550100", "+442071234567", "+12", "+123456789012345", "+4915112345678"]
)
def test_e164_valid(s: str) -> None:
    assert is_e164(s)


@pytest.mark.parametrize(
    "s",
    [
        "",
        "+",
        "+1",
        "14155550100",
        "+0123456",
        "+1234567890123456",  # 16 digits
        "+1 415 555 0100",
        "+1-415-555-0100",
        "+14155550100\n",
        " +14155550100",
        "+١٤١٥٥٥٥٠١٠٠",  # non-ASCII digits
        "++14155550100",
    ],
)
def test_e164_invalid(s: str) -> None:
    assert not is_e164(s)


@pytest.mark.parametrize(
    "s",
    [
        "sip:alice@example.com",
        "sip:+14155550100@pbx.example.com:5060;transport=tls",
        "SIP:bob@10.0.0.1",
        "sip:agent.1@[2001:db8::1]:5061",
        "sip:queue-7@sip.example.com;user=phone;transport=udp",
        "sip:alice@example.com.",
    ],
)
def test_sip_uri_valid(s: str) -> None:
    assert is_sip_uri(s)


@pytest.mark.parametrize(
    "s",
    [
        "sip:example.com",
        "sip:alice@",
        "sip:@example.com",
        "sips:alice@example.com",
        "sip:alice:secret@example.com",
        "sip:alice@example.com?X-Header=1",
        "sip:alice@example.com:70000",
        "sip:alice@example.com:0",
        "sip:al ice@example.com",
        'sip:al"ice@example.com',
        "sip:alice@exa_mple.com",
        "sip:alice@example.com\n",
        "tel:+14155550100",
        "alice@example.com",
    ],
)
def test_sip_uri_invalid(s: str) -> None:
    assert not is_sip_uri(s)


@pytest.mark.parametrize(
    ("s", "masked"),
    [
        ("+15551230000", "+1555***0000"),
        ("+442071234567", "+4420***4567"),
        ("+123456789012345", "+1234***2345"),
        ("+12345678", "+1***5678"),
        ("+12345", "+***45"),
        ("+123", "+***"),
        ("+12", "+***"),
        ("sip:alice@example.com", "sip:al***@example.com"),
        ("sip:+14155550100@pbx.example.com:5060;transport=tls", "sip:+1***@pbx.example.com"),
        ("sip:bob@example.com", "sip:***@example.com"),
        ("anonymous", "***"),
        ("", "***"),
        ("14155550100", "***"),
    ],
)
def test_mask_number(s: str, masked: str) -> None:
    assert mask_number(s) == masked


@pytest.mark.parametrize("length", range(2, 16))
def test_masking_always_hides_at_least_three_digits(length: int) -> None:
    number = "+" + "".join(str(1 + n % 9) for n in range(length))
    shown = len(re.findall(r"[0-9]", mask_number(number)))
    assert shown <= max(0, length - 3)


# --- Twilio-rendered speech and what follows a stream -------------------------------------

BASE = "https://voice.example.com"


def test_connect_stream_then_redirect() -> None:
    root = parse(connect_stream(STREAM_URL, {"From": "+15551230000"}, then_redirect=f"{BASE}/twilio/continue"))
    assert tags(root) == ["Connect", "Redirect"]
    assert root[1].attrib == {"method": "POST"} and root[1].text == f"{BASE}/twilio/continue"


def test_hold_listens_for_a_key_then_comes_back() -> None:
    root = parse(hold(keys_url=f"{BASE}/twilio/keys", continue_url=f"{BASE}/twilio/continue", hold_s=10))
    assert tags(root) == ["Gather", "Redirect"]
    assert root[0].attrib == {
        "action": f"{BASE}/twilio/keys", "input": "dtmf", "method": "POST", "numDigits": "1", "timeout": "10",
    }  # fmt: skip
    assert list(root[0]) == []
    with pytest.raises(ValueError, match="hold_s"):
        hold(keys_url="k", continue_url="c", hold_s=0)


def test_start_stream_and_hold_forks_a_named_one_way_stream() -> None:
    root = parse(
        start_stream_and_hold(
            STREAM_URL, {"From": "sip:alice@example.com", "Empty": ""},
            keys_url=f"{BASE}/twilio/keys", continue_url=f"{BASE}/twilio/continue", hold_s=10,
        )
    )  # fmt: skip
    assert tags(root) == ["Start", "Gather", "Redirect"]
    stream = root.find("Start/Stream")
    assert stream is not None and stream.attrib == {"name": "callstream", "url": STREAM_URL}
    assert [p.attrib for p in stream] == [{"name": "From", "value": "sip:alice@example.com"}]
    with pytest.raises(ValueError, match="31922"):
        start_stream_and_hold(STREAM_URL + "?a=1", {}, keys_url="k", continue_url="c", hold_s=10)


def test_speak_a_prompt_the_caller_may_answer_with_keys() -> None:
    root = parse(
        speak("Press 1 & <go>.", voice="Polly.Joanna", language="en-US",
              said_url=f"{BASE}/twilio/said?say_id=3", keys=True)
    )  # fmt: skip
    assert tags(root) == ["Gather"]
    gather = root[0]
    assert gather.attrib == {
        "action": f"{BASE}/twilio/said?say_id=3", "actionOnEmptyResult": "true", "input": "dtmf",
        "method": "POST", "numDigits": "1", "timeout": "1",
    }  # fmt: skip
    [say] = list(gather)
    assert say.tag == "Say" and say.text == "Press 1 & <go>."
    assert say.attrib == {"voice": "Polly.Joanna", "language": "en-US"}


def test_speak_a_prompt_without_keys_redirects_when_it_ends() -> None:
    root = parse(speak("Goodbye.", voice="Polly.Matthew", language=None, said_url=f"{BASE}/s?say_id=1", keys=False))
    assert tags(root) == ["Say", "Redirect"]
    assert root[0].attrib == {"voice": "Polly.Matthew"} and root[1].text == f"{BASE}/s?say_id=1"
    with pytest.raises(ValueError):
        speak("  ", voice=None, language=None, said_url="s", keys=False)
    with pytest.raises(ValueError, match="gather_timeout_s"):
        speak("Hi", voice=None, language=None, said_url="s", keys=True, gather_timeout_s=0)


def test_a_hand_on_stops_the_one_way_stream_first() -> None:
    original = dial("+14155550100", timeout_s=20, record=False, action_url=f"{BASE}/twilio/dial-result")
    root = parse(stream_stopped_first(original))
    assert tags(root) == ["Stop", "Dial"]
    assert root.find("Stop/Stream").attrib == {"name": "callstream"}  # type: ignore[union-attr]
    assert ET.tostring(root[1]) == ET.tostring(ET.fromstring(original)[0])
    assert tags(parse(stream_stopped_first(hangup()))) == ["Stop", "Hangup"]
    with pytest.raises(ValueError):
        stream_stopped_first("<Dial/>")


def test_numbers_in_a_message_are_masked() -> None:
    text = "The 'To' number +15005550001 is not valid; sip:alice@example.com;transport=tls refused. Code 21211."
    assert mask_numbers_in(text) == (
        "The 'To' number +1500***0001 is not valid; sip:al***@example.com refused. Code 21211."
    )
