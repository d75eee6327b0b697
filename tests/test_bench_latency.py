"""The latency benchmarks run end to end at tiny scale (`callstream bench
bargein|turn|webhook`): real server processes, real sockets. They check the
reports' shape and sanity, never speed."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from agent.bench import bargein, webhook
from agent.bench.bargein_audio import noise_clip, speech_clips
from agent.bench.webhook_server import server_process
from agent.cli import main


def _bench_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    rc = main(["bench", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_bench_webhook_posts_signed_calls_and_gets_stream_twiml(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _bench_json(capsys, "webhook", "--rps", "40", "--seconds", "0.5", "--warmup", "0", "--baseline")
    assert rc == 0
    assert report["requests"] == 20 and report["ok"] == 20 and report["errors"] == {}
    latency = report["latency_ms"]
    assert isinstance(latency, dict) and latency["count"] == 20 and 0 < latency["p50"] <= latency["max"]
    baseline = report["baseline_healthz_ms"]
    assert isinstance(baseline, dict) and baseline["count"] == 20
    assert isinstance(report["server_cpu_ms_per_request"], float)


def test_bench_webhook_counts_refused_requests_as_errors() -> None:
    """A wrong token: the server answers 403 and the benchmark says so."""
    with server_process() as server:
        wrong = dataclasses.replace(server, auth_token="0" * 32)
        report = asyncio.run(webhook.measure(wrong, 40, 0.25, 0))
    assert report.ok == 0 and report.errors == {"http_403": 10}
    assert not report.meets_target


def test_bench_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="--rps"):
        main(["bench", "webhook", "--rps", "0"])
    with pytest.raises(SystemExit, match="--trials"):
        main(["bench", "bargein", "--trials", "0"])
    with pytest.raises(SystemExit, match="--turns"):
        main(["bench", "turn", "--turns", "0"])


def test_bench_bargein_speech_over_the_greeting_gets_a_clear(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _bench_json(
        capsys, "bargein", "--trials", "2", "--concurrency", "2", "--noise-seeds", "0", "--stt", "none"
    )
    assert rc == 0
    assert report["missed"] == [] and report["errors"] == []
    for key in ("media_timeline_ms", "media_timeline_from_voicing_ms", "wall_ms"):
        figures = report[key]
        assert isinstance(figures, dict) and figures["count"] == 2
        assert 0 < figures["p50"] <= figures["max"], key
    assert report["noise_trials"] == 0 and report["false_bargeins"] == 0


def test_bench_bargein_noise_call_runs_over_the_greeting() -> None:
    """A noise-only call plays through the greeting; a clear would be counted."""
    clip = noise_clip("clicks", -20.0, seed=0, ms=1000)
    speech = speech_clips()[0]
    assert speech.onset_ms is not None and speech.voiced_onset_ms is not None
    assert speech.onset_ms <= speech.voiced_onset_ms

    async def trials() -> tuple[bargein.Trial, bargein.Trial]:
        with server_process({"CALLSTREAM_STT": "none"}) as server:
            floor = bytes([0xFF]) * 8000
            noise = await bargein.run_trial(server, bargein.Trial(clip, 0, lockstep=True), floor)
            talk = await bargein.run_trial(server, bargein.Trial(speech, 600, lockstep=True), floor)
        return noise, talk

    noise, talk = asyncio.run(trials())
    assert noise.error is None and noise.agent_start_frame is not None and noise.speech_start_frame is not None
    assert talk.error is None and talk.clears_after_speech()
    latency = talk.media_latency_ms()
    assert latency is not None and latency > 0


def test_bench_turn_times_every_turn(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _bench_json(capsys, "turn", "--turns", "6")
    assert rc == 0
    assert report["turns"] == 6 and report["unanswered"] == 0
    overhead = report["overhead_ms"]
    assert isinstance(overhead, dict) and overhead["count"] == 6 and 0 < overhead["p50"] <= overhead["max"]
    assert isinstance(report["calls"], int) and report["calls"] >= 2
