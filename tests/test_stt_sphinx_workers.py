"""The offline recognizer's decoder worker processes: a worker killed while
idle or in the middle of a call's decode, twice on one decode, a worker that
never answers at shutdown. Real processes, real signals, real pocketsphinx.

A decode is caught in flight deterministically: the worker is stopped
(SIGSTOP) before the turn ends, the test waits until the pool says the
call's decode is in flight, then kills it (SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_stt_sphinx import Call, open_call, said

from agent.ports import SttFailure, Transcript
from agent.stt_sphinx import SphinxSpeechToText
from agent.stt_sphinx_workers import DecoderPool

ROOT = Path(__file__).resolve().parent.parent


async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll the loop until `condition()`; a hang guard, not a timing check."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def pool_of(stt: SphinxSpeechToText) -> DecoderPool:
    return stt._pool


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def end_turn_with_decode_in_flight(call: Call, pool: DecoderPool, audio: bytes) -> int:
    """Play a turn to stopped workers; return the pid of the one the final's decode is in."""
    pids = [p for p in pool.pids if p is not None]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    call.play(audio)
    call.stream.end_turn(call.now)
    sid = call.stream.call_sid
    await until(lambda: any(s == sid for _, s in pool.busy()), "decode in flight")
    pid = next(p for p, s in pool.busy() if s == sid)
    assert pid is not None
    return pid


async def test_a_worker_killed_while_idle_is_restarted_for_the_next_decode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stt = SphinxSpeechToText(workers=1)
    try:
        await stt.warm_up()
        pool = pool_of(stt)
        pid = pool.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        process = pool._workers[0].process
        assert process is not None
        # reaped only once all its threads are gone (a zombie leader may wait)
        await until(lambda: process.poll() is not None, "worker dead")
        call = await open_call(stt)
        with caplog.at_level(logging.INFO, "agent.stt_sphinx_workers"):
            final = await call.turn(said("billing", "en-us+f2"))
        assert final.text == "billing"
        assert pool.restarts == 1 and pool.pids[0] != pid
        assert any("died while idle" in r.message and "CAtest" in r.message for r in caplog.records)
        assert not any(isinstance(e, SttFailure) for e in call.events)
        await call.stream.aclose()
    finally:
        await stt.aclose()


async def test_a_worker_dying_mid_decode_fails_over_to_a_restarted_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stt = SphinxSpeechToText(workers=1)
    try:
        await stt.warm_up()
        pool = pool_of(stt)
        call = await open_call(stt)
        with caplog.at_level(logging.INFO, "agent.stt_sphinx_workers"):
            pid = await end_turn_with_decode_in_flight(call, pool, said("agent", "en-us+f5"))
            os.kill(pid, signal.SIGKILL)
            await call.stream.flush()
        finals = [e for e in call.events if isinstance(e, Transcript) and e.end_of_turn]
        assert [f.text for f in finals] == ["agent"]  # decoded again by the new worker
        assert not any(isinstance(e, SttFailure) for e in call.events)
        assert pool.restarts == 1
        assert any(
            "died" in r.message and "CAtest" in r.message and "decoding again" in r.message
            for r in caplog.records
        )
        await call.stream.aclose()
    finally:
        await stt.aclose()


async def test_a_worker_dying_twice_on_one_decode_fails_that_turn_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stt = SphinxSpeechToText(workers=1)
    try:
        await stt.warm_up()
        pool = pool_of(stt)
        call = await open_call(stt)
        with caplog.at_level(logging.INFO):
            pid = await end_turn_with_decode_in_flight(call, pool, said("agent", "en-us+f5"))
            os.kill(pid, signal.SIGKILL)
            # the replacement, killed as soon as it exists (before it answers)
            await until(lambda: pool.pids[0] not in (None, pid), "replacement started")
            second = pool.pids[0]
            assert second is not None
            os.kill(second, signal.SIGKILL)
            await call.stream.flush()
        failures = [e for e in call.events if isinstance(e, SttFailure)]
        assert len(failures) == 1 and failures[0].retryable
        assert "died" in failures[0].reason
        finals = [e for e in call.events if isinstance(e, Transcript) and e.end_of_turn]
        assert [f.text for f in finals] == [""]  # the turn still ends
        assert any(
            "CAtest" in r.message and "the decode fails" in r.message for r in caplog.records
        )
        # the call goes on: the next turn is decoded by a third worker
        assert (await call.turn(said("billing", "en-us+f2"))).text == "billing"
        assert pool.restarts == 2
        await call.stream.aclose()
    finally:
        await stt.aclose()


async def test_close_stops_every_worker_even_one_that_never_answers() -> None:
    stt = SphinxSpeechToText(workers=2)
    await stt.warm_up()
    pool = pool_of(stt)
    pids = [p for p in pool.pids if p is not None]
    assert len(pids) == 2 and pool.created == 2
    call = await open_call(stt)
    await end_turn_with_decode_in_flight(call, pool, said("agent", "en-us+f5"))
    # a hang guard: ~2 s for the busy worker (killed), ~4 s for the stopped
    # idle one (asked, SIGTERM stays pending on a stopped process, SIGKILL)
    await asyncio.wait_for(stt.aclose(), 60)
    assert all(gone(pid) for pid in pids)
    await call.stream.flush()
    finals = [e for e in call.events if isinstance(e, Transcript) and e.end_of_turn]
    assert [f.text for f in finals] == [""]  # the decode cut short still ends the turn
    with pytest.raises(RuntimeError, match="closed"):
        await pool.recognize(np.zeros(800, np.int16), ["agent"], partial=False)
    await call.stream.aclose()


def test_the_worker_count_is_a_setting() -> None:
    from agent.settings import ConfigError, load_settings
    from agent.stt_sphinx import default_workers
    from agent.wiring import build_speech_to_text

    stt = build_speech_to_text(load_settings({"CALLSTREAM_SPHINX_WORKERS": "3"}, env_file=None))
    assert isinstance(stt, SphinxSpeechToText) and stt.settings.workers == 3
    stt = build_speech_to_text(load_settings({}, env_file=None))
    assert isinstance(stt, SphinxSpeechToText) and stt.settings.workers == default_workers()
    for bad in ("-1", "65", "two"):
        with pytest.raises(ConfigError, match="CALLSTREAM_SPHINX_WORKERS"):
            load_settings({"CALLSTREAM_SPHINX_WORKERS": bad}, env_file=None)


def test_workers_start_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    """The workers do not re-import the server's __main__ (multiprocessing's
    spawn would, and this script would then start processes recursively)."""
    script = tmp_path / "serve.py"
    script.write_text(
        "import asyncio\n"
        "import numpy as np\n"
        "from agent.stt_sphinx import SphinxSpeechToText\n"
        "async def main():\n"
        "    stt = SphinxSpeechToText(workers=1)\n"
        "    j = await stt._pool.recognize(np.zeros(8000, np.int16), ['agent'], partial=False)\n"
        "    await stt.aclose()\n"
        "    print('decoded', repr(j.text), stt.decoders_created)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "decoded '' 1"
    assert "bootstrapping" not in done.stderr


async def test_workers_start_when_the_first_stream_opens() -> None:
    """They load while the first call's greeting plays, not on its first turn."""
    stt = SphinxSpeechToText(workers=2)
    try:
        pool = pool_of(stt)
        assert pool.pids == [None, None]
        call = await open_call(stt)
        await until(lambda: None not in pool.pids, "workers started")
        assert pool.created == 2 and not call.events
        assert (await call.turn(said("billing", "en-us+f2"))).text == "billing"
        assert pool.created == 2
        await call.stream.aclose()
    finally:
        await stt.aclose()


async def test_a_provider_never_used_closes_cleanly() -> None:
    stt = SphinxSpeechToText(workers=2)
    await stt.aclose()
    await stt.aclose()  # twice is harmless
    assert stt.decoders_created == 0
