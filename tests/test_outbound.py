"""`callstream call`: the CLI as a user runs it, against the local fake Twilio
REST API (served by uvicorn on its own thread, so the command's asyncio.run
is the only loop here)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from agent.cli import main
from agent.fake_twilio import FakeTwilioRest
from agent.serving import base_url_of, bound_socket, serve_in_background

ACCOUNT = "AC" + "3" * 32
TOKEN = "outbound-token"
PUBLIC = "https://voice.example.com"


@pytest.fixture(scope="module")
def served_rest() -> Iterator[FakeTwilioRest]:
    fake = FakeTwilioRest(ACCOUNT, TOKEN)
    sock = bound_socket()
    fake.base = base_url_of(sock)  # type: ignore[attr-defined]
    started, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with serve_in_background(fake.app, sock):
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield fake
    stop.set()
    thread.join(10)


@pytest.fixture
def rest(served_rest: FakeTwilioRest) -> FakeTwilioRest:
    served_rest.reset()
    return served_rest


@pytest.fixture
def env(rest: FakeTwilioRest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    values = {
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_API_BASE": rest.base,  # type: ignore[attr-defined]
        "PUBLIC_BASE_URL": PUBLIC,
        "TWILIO_FROM_NUMBER": "+15557770000",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_call_places_it_with_our_webhook_and_status_callback(rest, env, capsys):
    assert main(["call", "+14155550100"]) == 0
    [call] = rest.calls.values()
    assert call.direction == "outbound-api" and call.to == "+14155550100" and call.from_ == "+15557770000"
    assert call.created["Url"] == f"{PUBLIC}/twilio/voice"
    assert call.created["StatusCallback"] == f"{PUBLIC}/twilio/status"
    assert call.created["StatusCallbackMethod"] == "POST"
    assert call.status_events == ["initiated", "ringing", "answered", "completed"]
    out, err = capsys.readouterr()
    assert out.strip() == call.sid
    assert "+1415***0100" in err and "+14155550100" not in err


def test_call_a_sip_address_from_the_flag(rest, env, capsys):
    assert main(["call", "sip:alice@pbx.example.com", "--from", "+15550001111"]) == 0
    [call] = rest.calls.values()
    assert (call.to, call.from_) == ("sip:alice@pbx.example.com", "+15550001111")


@pytest.mark.parametrize("to", ["4155550100", "+0123456", "+1415555010012345", "sip:nohost", "tel:+14155550100"])
def test_an_invalid_number_is_refused_before_any_request(rest, env, capsys, to):
    assert main(["call", to]) == 2
    assert rest.requests == []
    err = capsys.readouterr().err
    assert f"TO {to!r}" in err and "E.164" in err


def test_an_invalid_caller_id_is_refused_before_any_request(rest, env, capsys):
    assert main(["call", "+14155550100", "--from", "Acme"]) == 2
    assert rest.requests == [] and "--from 'Acme'" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL"])
def test_missing_settings_are_named(rest, env, monkeypatch, capsys, missing):
    monkeypatch.delenv(missing)
    if missing == "TWILIO_ACCOUNT_SID":
        monkeypatch.delenv("TWILIO_AUTH_TOKEN")  # set alone it is a start-up error of its own
    assert main(["call", "+14155550100"]) == 2
    assert missing in capsys.readouterr().err and rest.requests == []


def test_no_caller_id_says_how_to_give_one(rest, env, monkeypatch, capsys):
    monkeypatch.delenv("TWILIO_FROM_NUMBER")
    assert main(["call", "+14155550100"]) == 2
    err = capsys.readouterr().err
    assert "--from" in err and "TWILIO_FROM_NUMBER" in err


def test_wrong_credentials_20003_are_explained_and_not_retried(rest, env, monkeypatch, capsys):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong")
    assert main(["call", "+14155550100"]) == 1
    err = capsys.readouterr().err
    assert "20003" in err and "TWILIO_AUTH_TOKEN" in err
    assert len(rest.requests) == 1 and rest.calls == {}


def test_invalid_number_21211_from_twilio_is_explained(rest, env, capsys):
    rest.fail_next(400, 21211, "The 'To' number +15005550001 is not a valid phone number.")
    assert main(["call", "+15005550001"]) == 1
    assert "21211" in capsys.readouterr().err and len(rest.requests) == 1


def test_rate_limit_20429_is_retried_then_placed(rest, env, capsys):
    rest.fail_next(429, 20429, "Too Many Requests", times=2)
    assert main(["call", "+14155550100"]) == 0
    assert len(rest.requests) == 3 and len(rest.calls) == 1


def test_rate_limit_20429_that_persists_is_explained(rest, env, capsys):
    rest.fail_next(429, 20429, "Too Many Requests", times=5)
    assert main(["call", "+14155550100"]) == 1
    assert "20429" in capsys.readouterr().err and len(rest.requests) == 3 and rest.calls == {}
