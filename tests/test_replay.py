"""`callstream replay` end to end: the shipped fixture calls through the real
server with the real offline speech (pocketsphinx, eSpeak NG)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from agent.cli import main
from agent.fixtures import find_fixtures
from agent.replay import replay
from agent.settings import load_settings
from media.wav import read_wav

ROOT = Path(__file__).resolve().parent.parent
CALLS = ROOT / "fixtures" / "calls"


async def test_every_shipped_fixture_call_passes_in_lockstep(tmp_path):
    fixtures = find_fixtures([CALLS])
    assert len(fixtures) >= 6
    archive = tmp_path / "archive"
    results = await replay(fixtures, load_settings({}, env_file=None), out_dir=tmp_path, archive=str(archive))
    for r in results:
        assert r.passed, (r.fixture, r.failures, r.error)
    check_archive(archive, results)
    by_name = {r.fixture: r for r in results}
    barge = by_name["bargein_agent"]
    assert barge.bargein_ms and max(barge.bargein_ms) <= 120
    assert barge.agent_turns[0]["interrupted"]
    # the stereo recording: caller left, agent right; cleared audio is not in the agent track
    wav = read_wav(tmp_path / "bargein_agent.wav")
    assert wav.rate == 8000 and wav.channels == 2
    agent = wav.samples[:, 1].astype(float)
    heard = barge.agent_turns[0]["heard_ms"]
    assert abs(agent[: 8 * heard]).max() > 1000  # the greeting, up to where it was cut
    gap = agent[8 * (heard + 300) : 8 * (heard + 600)]
    assert abs(gap).max() < 100  # silence after the clear, before the next prompt


def check_archive(archive: Path, results: list) -> None:
    """Every replayed call is in the archive, consistent, with nothing sensitive in it."""
    folders = {p.parent.name: p.parent for p in archive.rglob("call.json")}
    assert sorted(folders) == sorted(r.call_sid for r in results)
    everything = b"".join(p.read_bytes() for p in archive.rglob("*") if p.is_file())
    assert b"481516" not in everything  # billing_dtmf's account number
    for r in results:
        folder = folders[r.call_sid]
        meta = orjson.loads((folder / "call.json").read_bytes())
        assert meta["path"] == r.path and meta["from"].count("*") == 3
        turns = orjson.loads((folder / "transcript.json").read_bytes())["turns"]
        caller = [t["text"] for t in turns if t["speaker"] == "caller" and t["text"]]
        assert caller == r.caller_transcript
        assert [t["interrupted"] for t in turns if t["speaker"] == "agent"] == [t["interrupted"] for t in r.agent_turns]
        vtt = (folder / "transcript.vtt").read_text()
        assert vtt.startswith("WEBVTT") and vtt.count(" --> ") == sum(1 for t in turns if t.get("heard_text", t["text"]))
        wav = read_wav(folder / "audio.wav")
        assert wav.rate == 8000 and wav.channels == 2
        assert abs(wav.samples[:, 1].astype(float)).max() > 1000  # the agent spoke
        if r.caller_transcript:
            assert abs(wav.samples[:, 0].astype(float)).max() > 1000  # and the caller did
    if "billing_dtmf" in {r.fixture for r in results}:
        billing = folders[next(r.call_sid for r in results if r.fixture == "billing_dtmf")]
        assert orjson.loads((billing / "call.json").read_bytes())["slots"] == {"account": "***"}


async def test_replay_at_a_multiple_of_real_time_without_lockstep():
    fixtures = find_fixtures([CALLS / "bargein_agent.yaml", CALLS / "dtmf_support.yaml"])
    results = await replay(fixtures, load_settings({}, env_file=None), speed=4.0)
    assert all(r.passed for r in results), [(r.fixture, r.failures, r.error) for r in results]


def test_cli_exit_code_and_json_report(tmp_path, capsys):
    bad = tmp_path / "wrong.yaml"
    shutil.copy(CALLS / "dtmf_support.wav", tmp_path / "dtmf_support.wav")
    text = (CALLS / "dtmf_support.yaml").read_text().replace("conference:support-{call_sid}", "hangup")
    bad.write_text(text)
    assert main(["replay", str(bad), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    call = report["calls"][0]
    assert call["passed"] is False and "expected 'hangup'" in call["failures"][0]
    assert report["summary"] == report["summary"] | {"calls": 1, "passed": 0, "failed": 1}


def test_cli_flow_check(capsys):
    assert main(["flow", "check", str(ROOT / "fixtures/flows/acme.yaml")]) == 0
    assert "ok (7 states)" in capsys.readouterr().out
    assert main(["flow", "check", str(ROOT / "fixtures/flows/bad/typos.yaml")]) == 1
    assert "typos.yaml:" in capsys.readouterr().out
    assert main(["flow", "check", "/nonexistent.yaml"]) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_a_public_bind_without_a_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CALLSTREAM_"))}
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2 and "TWILIO_AUTH_TOKEN" in done.stderr


def test_serve_names_a_bad_setting():
    env = dict(os.environ, CALLSTREAM_TTS="festival")
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "serve", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2 and "CALLSTREAM_TTS" in done.stderr


@pytest.mark.slow
def test_replay_against_a_separately_started_server(tmp_path):
    """`callstream serve` in its own process, `callstream replay --url` in another."""
    port, rest_port = free_port(), free_port()
    env = dict(
        os.environ,
        TWILIO_ACCOUNT_SID="AC" + "7" * 32,
        TWILIO_AUTH_TOKEN="shared-token",
        TWILIO_API_BASE=f"http://127.0.0.1:{rest_port}",
        CALLSTREAM_OPS_TOKEN="ops-token",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        CALLSTREAM_ARCHIVE=str(tmp_path / "archive"),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        done = subprocess.run(
            [
                sys.executable, "-m", "agent.cli", "replay", str(CALLS / "bargein_agent.yaml"),
                "--url", f"ws://127.0.0.1:{port}/twilio/media", "--rest-port", str(rest_port), "--json",
            ],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert orjson.loads(done.stdout)["summary"]["passed"] == 1
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert "+15551230000" not in out  # numbers masked in the server's log
