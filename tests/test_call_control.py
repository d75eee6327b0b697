"""Twilio REST call control, driven by the official client against the local fake."""

import pytest

from agent.call_control import TwilioCallControl
from agent.fake_twilio import FakeTwilioRest, outcome_of
from agent.ports import CallControlError
from agent.serving import base_url_of, bound_socket, serve_in_background

ACCOUNT = "AC" + "1" * 32
TOKEN = "secret-token"
CALL = "CA" + "2" * 32
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number>+14155550100</Number></Dial></Response>'


@pytest.fixture
async def rest():
    fake = FakeTwilioRest(ACCOUNT, TOKEN)
    sock = bound_socket()
    async with serve_in_background(fake.app, sock):
        fake.base = base_url_of(sock)
        yield fake


@pytest.fixture
async def control(rest):
    c = TwilioCallControl(ACCOUNT, TOKEN, rest.base, backoff_s=0.001)
    yield c
    await c.aclose()


async def test_update_twiml_reaches_the_call(rest, control):
    rest.add_call(CALL)
    await control.update_twiml(CALL, TWIML)
    assert rest.calls[CALL].updates == [{"Twiml": TWIML}]
    assert rest.requests[-1] == ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json")


async def test_hang_up_completes_the_call(rest, control):
    rest.add_call(CALL)
    await control.hang_up(CALL)
    assert rest.calls[CALL].updates == [{"Status": "completed"}]
    assert rest.calls[CALL].status == "completed"
    with pytest.raises(CallControlError) as info:  # no longer in progress: 21220
        await control.update_twiml(CALL, TWIML)
    assert info.value.code == 21220 and not info.value.retryable


async def test_wrong_credentials_are_20003_and_not_retried(rest):
    rest.add_call(CALL)
    bad = TwilioCallControl(ACCOUNT, "wrong", rest.base, backoff_s=0.001)
    try:
        with pytest.raises(CallControlError) as info:
            await bad.update_twiml(CALL, TWIML)
    finally:
        await bad.aclose()
    assert info.value.code == 20003 and not info.value.retryable
    assert len(rest.requests) == 1


async def test_rate_limit_is_retried_with_backoff(rest, control):
    rest.add_call(CALL)
    rest.fail_next(429, 20429, "Too Many Requests", times=2)
    await control.update_twiml(CALL, TWIML)
    assert len(rest.requests) == 3
    assert rest.calls[CALL].updates == [{"Twiml": TWIML}]


async def test_server_errors_give_up_after_the_attempts(rest, control):
    rest.add_call(CALL)
    rest.fail_next(503, 20500, "Service Unavailable", times=5)
    with pytest.raises(CallControlError) as info:
        await control.update_twiml(CALL, TWIML)
    assert info.value.retryable and info.value.code == 20500
    assert len(rest.requests) == 3


async def test_unknown_call_is_404(rest, control):
    with pytest.raises(CallControlError) as info:
        await control.hang_up("CA" + "9" * 32)
    assert info.value.code == 20404


async def test_unreachable_api_is_retryable(control):
    c = TwilioCallControl(ACCOUNT, TOKEN, "http://127.0.0.1:9", attempts=2, backoff_s=0.001)
    try:
        with pytest.raises(CallControlError) as info:
            await c.hang_up(CALL)
    finally:
        await c.aclose()
    assert info.value.retryable


async def test_fake_rejects_invalid_twiml(rest, control):
    rest.add_call(CALL)
    with pytest.raises(CallControlError) as info:
        await control.update_twiml(CALL, "<Response><Dial>")
    assert info.value.code == 12100


@pytest.mark.parametrize(
    ("update", "outcome"),
    [
        ({"Status": "completed"}, "hangup"),
        ({"Twiml": TWIML}, "transfer:+14155550100"),
        ({"Twiml": "<Response><Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>"}, "transfer:sip:desk@pbx.example.com"),
        ({"Twiml": "<Response><Dial><Conference>support-CA1</Conference></Dial></Response>"}, "conference:support-CA1"),
        ({"Twiml": '<Response><Record maxLength="120"/></Response>'}, "voicemail"),
        ({"Twiml": "<Response><Hangup/></Response>"}, "hangup"),
        ({"Url": "https://x/y"}, "redirect:https://x/y"),
    ],
)
def test_outcome_of_an_update(update, outcome):
    assert outcome_of(update) == outcome
