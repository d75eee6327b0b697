"""Acceptance for the production speech providers: the shipped fixture calls
pass with CALLSTREAM_STT=deepgram and CALLSTREAM_TTS=polly against local fakes
of both APIs (`callstream replay --fakes`), and `callstream serve` refuses to
start with a missing or refused credential, naming the setting."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.fake_deepgram import FakeDeepgram
from agent.fixtures import find_fixtures
from agent.replay import replay
from agent.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CALLS = ROOT / "fixtures" / "calls"
CLOUD = {"CALLSTREAM_STT": "deepgram", "CALLSTREAM_TTS": "polly", "DEEPGRAM_API_KEY": "k", "AWS_REGION": "us-east-1"}


async def test_every_shipped_fixture_call_passes_over_deepgram_and_polly_fakes():
    fixtures = find_fixtures([CALLS])
    results = await replay(fixtures, load_settings(CLOUD, env_file=None), fakes=True)
    for r in results:
        assert r.passed, (r.fixture, r.failures, r.error)
    barge = next(r for r in results if r.fixture == "bargein_agent")
    assert barge.bargein_ms and max(barge.bargein_ms) <= 120
    spoken = next(r for r in results if r.fixture == "spoken_billing")
    assert spoken.caller_transcript == ["Billing."]  # Deepgram's smart_format, through the fake


def test_replay_fakes_is_for_the_in_process_server(capsys):
    assert main(["replay", str(CALLS), "--fakes", "--url", "ws://127.0.0.1:9/twilio/media"]) == 2
    assert "--fakes" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CALLSTREAM_", "DEEPGRAM_", "AWS_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "serve", "--port", str(free_port()),
        env={**clean, "AWS_EC2_METADATA_DISABLED": "true", **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CALLSTREAM_STT": "deepgram"}, "DEEPGRAM_API_KEY"),
        ({"CALLSTREAM_TTS": "polly"}, "AWS_REGION"),
        ({"CALLSTREAM_TTS": "polly", "AWS_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
          "AWS_CONFIG_FILE": "/nonexistent"}, "AWS_ACCESS_KEY_ID"),
    ],
)
async def test_serve_names_a_missing_credential(env, named):
    code, err = await serve(env)
    assert code == 2 and named in err, err


async def test_serve_with_a_key_deepgram_refuses_exits_naming_it():
    async with FakeDeepgram("the-right-key").running() as fake:
        code, err = await serve(
            {"CALLSTREAM_STT": "deepgram", "DEEPGRAM_API_KEY": "a-wrong-key", "DEEPGRAM_URL": fake.base_url}
        )
    assert code == 2 and "DEEPGRAM_API_KEY" in err and "401" in err, err
    assert "a-wrong-key" not in err
