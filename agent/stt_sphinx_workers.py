"""pocketsphinx decodes in worker processes, off the server's event loop.

Why processes: pocketsphinx holds the GIL for the whole of a decode call
(20–200 ms; its compiled module never releases it), so decoding on a thread
froze the event loop, and every call's media path with it, while any call was
recognised. A decode in another process costs the server only the pipe I/O,
done by a thread that waits in `recv` with the GIL released.

    event loop ── job (utterance PCM, phrases, partial) ──▶ SimpleQueue
    thread i   ── takes a job, sends it to its process, waits for the answer,
                  settles the job's future on the job's loop (call_soon_threadsafe)
    process i  ── one `Recognizer`; answers ("ok", text, confidence, frames),
                  ("init", message) when the model does not load, or
                  ("error", message)

`workers` (CALLSTREAM_SPHINX_WORKERS) thread+process pairs serve every call.
A decode depends only on its audio and phrases (`agent/stt_sphinx_decoder.py`),
so any worker serves any call's decode: nothing is pinned, and a worker that
dies loses no call state. Faults:

    worker dead while idle         → restarted before the next decode (logged)
    worker dies during a decode    → logged with the call SID, restarted, the
                                     decode sent again once; dying again (or no
                                     answer within decode_timeout_s) raises
                                     WorkerDied (the stream reports SttFailure,
                                     retryable, and ends the turn empty)
    close                          → queued decodes fail with PoolClosed; each
                                     process is asked to stop, then terminated,
                                     then killed (a few seconds at most)

Each worker is a fresh interpreter (`python -c …`, like multiprocessing's
"spawn": never fork a process running an event loop and threads) talking
over a socket pair with multiprocessing's `Connection` framing. Not
multiprocessing's spawn itself: it re-imports the server's `__main__` in the
child, which starts processes again from any entry script without a
`__main__` guard. Each pool thread starts its worker as soon as it starts:
when the first stream opens (`start`), on a decode, or at `warm_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.sphinx_grammar import Judgement
from agent.stt_sphinx_decoder import RecognizerInitError

if TYPE_CHECKING:
    from agent.stt_sphinx import SphinxSettings

log = logging.getLogger(__name__)

STOP_WAIT_S = 2.0  # a process asked to stop, then terminated, then killed


class WorkerDied(RuntimeError):
    """A decoder worker process died (or hung) twice on one decode."""


class PoolClosed(RuntimeError):
    """The decode was asked of a pool that is closing."""


# --- the worker process ------------------------------------------------------------


def serve_decodes(conn: Connection, model_dir: str | None, max_grammars: int) -> None:
    """A worker process's main: decode what arrives until told to stop (None)
    or the server's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    from agent.stt_sphinx_decoder import Recognizer

    recognizer: Recognizer | None = None
    init_error: str | None = None
    try:
        recognizer = Recognizer(model_dir, max_grammars)  # load now, not on the first call
    except RecognizerInitError as exc:
        init_error = str(exc)
    conn.send(("ready", init_error))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        pcm, phrases, partial = message
        if recognizer is None:
            try:
                recognizer = Recognizer(model_dir, max_grammars)
            except RecognizerInitError as exc:
                init_error = str(exc)
                conn.send(("init", init_error))
                continue
        try:
            audio = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
            j = recognizer.recognize(audio, tuple(phrases), partial=partial)
        except Exception as exc:
            recognizer = None  # one that raised may be stuck mid-utterance
            conn.send(("error", repr(exc)))
            continue
        conn.send(("ok", j.text, j.confidence, j.speech_frames))


_CHILD = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from agent.stt_sphinx_workers import child_main; child_main()"
)


# one decode is one thread's work: no BLAS thread pools in the workers
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _spawn(settings: SphinxSettings) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start one worker: a fresh interpreter with our import path, the
    socket's other end as its only extra descriptor."""
    ours, theirs = socket.socketpair()
    try:
        config = {"fd": theirs.fileno(), "model_dir": settings.model_dir,
                  "max_grammars": settings.max_grammars}
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(sys.path), json.dumps(config)],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_CHILD_ENV | dict(os.environ),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Connection(ours.detach())


def child_main() -> None:
    """`_CHILD`'s entry point: argv[2] says which descriptor and model."""
    config = json.loads(sys.argv[2])
    serve_decodes(Connection(config["fd"]), config["model_dir"], config["max_grammars"])


# --- the server's side -------------------------------------------------------------------


@dataclass
class _Job:
    pcm: bytes
    phrases: tuple[str, ...]
    partial: bool
    call_sid: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Judgement]


class _Worker:
    """One process and its pipe; used by one pool thread (and `warm_up`/`kill`
    under `lock`)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.busy_sid: str | None = None  # the call whose decode is in flight
        self.starts = 0

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None else None

    def kill(self) -> None:
        """SIGKILL the process (from another thread: the one waiting on its
        pipe sees it close)."""
        process = self.process
        if process is not None:
            with contextlib.suppress(OSError):  # already gone
                process.kill()

    def stop(self) -> None:
        """Ask the process to stop; terminate, then kill it if it does not."""
        with self.lock:
            process, conn = self.process, self.conn
            self.process = self.conn = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        if process is None:
            return
        for end in (None, process.terminate, process.kill):
            if end is not None:
                end()
            try:
                process.wait(STOP_WAIT_S)
                return
            except subprocess.TimeoutExpired:
                continue


class DecoderPool:
    """`workers` decoder processes shared by every call; see the module docstring."""

    def __init__(self, settings: SphinxSettings, *, decode_timeout_s: float = 60.0) -> None:
        self._settings = settings
        self._decode_timeout_s = decode_timeout_s
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers = [_Worker(i) for i in range(max(1, settings.workers))]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0  # worker processes started (each loads one decoder)
        self.restarts = 0  # of them, started in place of one that died

    @property
    def pids(self) -> list[int | None]:
        return [w.pid for w in self._workers]

    def busy(self) -> list[tuple[int | None, str]]:
        """(pid, call SID) of each decode in flight."""
        return [(w.pid, w.busy_sid) for w in self._workers if w.busy_sid is not None]

    async def recognize(
        self,
        pcm8k: npt.NDArray[np.int16],
        phrases: Sequence[str],
        *,
        partial: bool,
        call_sid: str = "",
    ) -> Judgement:
        if self._closed:
            raise PoolClosed("the sphinx decoder pool is closed")
        self._start_threads()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Judgement] = loop.create_future()
        pcm = np.ascontiguousarray(pcm8k, dtype="<i2").tobytes()
        self._jobs.put(_Job(pcm, tuple(phrases), partial, call_sid, loop, future))
        return await future

    async def warm_up(self) -> None:
        """Start every worker process and wait for its decoder to load, now
        rather than on the first utterances."""
        self._start_threads()
        results = await asyncio.gather(
            *(asyncio.to_thread(self._ensure_process, w, "warm-up") for w in self._workers),
            return_exceptions=True,
        )
        for worker, result in zip(self._workers, results, strict=True):
            if isinstance(result, BaseException):  # the first decode starts it again
                log.error("sphinx: decoder worker %d did not start: %r", worker.index, result)

    def close(self) -> None:
        """Stop taking decodes; the pool threads stop their processes (at
        most a few seconds each) and exit. `aclose` also waits for that."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:  # workers exist only once their threads do
            self._jobs.put(None)

    async def aclose(self) -> None:
        self.close()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        """Wait for the pool threads; a decode still running after
        STOP_WAIT_S is cut short by killing its process."""
        if not self._threads:
            return  # never started: no workers either
        deadline = time.monotonic() + STOP_WAIT_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for worker, thread in zip(self._workers, self._threads, strict=True):
            if thread.is_alive():
                log.warning("sphinx: decoder worker %d still busy at close: killing it", worker.index)
                worker.kill()
        for thread in self._threads:
            thread.join(STOP_WAIT_S * 4)

    # --- pool threads ---------------------------------------------------------------

    def start(self) -> None:
        """Start the pool threads, each starting its worker process, without
        waiting (the provider calls this when the first call's stream opens)."""
        self._start_threads()

    def _start_threads(self) -> None:
        with self._lock:
            if self._threads or self._closed:
                return
            for worker in self._workers:
                thread = threading.Thread(
                    target=self._serve, args=(worker,), name=f"sphinx-{worker.index}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _serve(self, worker: _Worker) -> None:
        try:
            try:
                self._ensure_process(worker, "-")  # ready before the first decode
            except Exception as exc:  # the first decode tries again
                log.error("sphinx: decoder worker %d did not start: %r", worker.index, exc)
            while (job := self._jobs.get()) is not None:
                if job.future.cancelled():
                    continue  # the stream closed meanwhile
                result: Judgement | None = None
                error: BaseException | None = None
                try:
                    if self._closed:
                        raise PoolClosed("the sphinx decoder pool is closing")
                    result = self._decode(worker, job)
                except Exception as exc:
                    error = exc
                with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                    job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        finally:
            worker.stop()

    def _decode(self, worker: _Worker, job: _Job) -> Judgement:
        for attempt in (1, 2):
            worker.busy_sid = job.call_sid or "-"
            try:
                conn = self._ensure_process(worker, job.call_sid)
                conn.send((job.pcm, job.phrases, job.partial))
                if not conn.poll(self._decode_timeout_s):
                    raise TimeoutError(f"no answer in {self._decode_timeout_s:g} s")
                reply = conn.recv()
            except (EOFError, OSError) as exc:  # TimeoutError is an OSError
                pid, code = self._discard(worker)
                what = "hung" if isinstance(exc, TimeoutError) else f"died (exit code {code})"
                if attempt == 2 or self._closed:
                    log.error(
                        "sphinx: decoder worker %d (pid %s) %s decoding for call %s again: "
                        "the decode fails", worker.index, pid, what, job.call_sid or "-",
                    )
                    raise WorkerDied(f"decoder worker {what} twice on one decode") from exc
                log.error(
                    "sphinx: decoder worker %d (pid %s) %s decoding for call %s: "
                    "restarting it and decoding again", worker.index, pid, what, job.call_sid or "-",
                )
                continue
            finally:
                worker.busy_sid = None
            return _answer(reply)
        raise AssertionError("unreachable")

    def _ensure_process(self, worker: _Worker, call_sid: str) -> Connection:
        with worker.lock:
            if self._closed:
                raise PoolClosed("the sphinx decoder pool is closing")
            if worker.process is not None and worker.conn is not None:
                if worker.process.poll() is None:
                    return worker.conn
                log.error(
                    "sphinx: decoder worker %d (pid %s) died while idle (exit code %s); "
                    "restarting it for call %s",
                    worker.index, worker.process.pid, worker.process.returncode, call_sid or "-",
                )
                self._reap(worker)
            process, ours = _spawn(self._settings)
            with self._lock:  # counted before the pid shows (readers poll pids, then counts)
                self.restarts += worker.starts > 0
                self.created += 1
            worker.process, worker.conn = process, ours
            worker.starts += 1
            # wait for the model to load (the GIL is released meanwhile)
            try:
                if not ours.poll(self._decode_timeout_s):
                    raise TimeoutError(f"not ready in {self._decode_timeout_s:g} s")
                _, init_error = ours.recv()
            except BaseException:
                if process.poll() is None:
                    process.kill()
                self._reap(worker)  # the next decode starts another
                raise
            if init_error:
                log.error("sphinx: decoder worker %d (pid %s) started but its model did not "
                          "load: %s", worker.index, process.pid, init_error)
            else:
                log.info("sphinx: decoder worker %d started (pid %s)", worker.index, process.pid)
            return ours

    def _discard(self, worker: _Worker) -> tuple[int | None, int | None]:
        with worker.lock:
            pid = worker.pid
            process = worker.process
            if process is not None and process.poll() is None:
                process.kill()  # hung, or its pipe broke: do not trust it
            code = self._reap(worker)
        return pid, code

    @staticmethod
    def _reap(worker: _Worker) -> int | None:
        """Forget the worker's (dead) process. Call with `worker.lock` held."""
        process, conn = worker.process, worker.conn
        worker.process = worker.conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_WAIT_S)
        return process.returncode


def _answer(reply: Any) -> Judgement:
    kind = reply[0]
    if kind == "ok":
        return Judgement(reply[1], reply[2], reply[3])
    if kind == "init":
        raise RecognizerInitError(reply[1])
    raise RuntimeError(f"decoder worker: {reply[1]}")


def _settle(
    future: asyncio.Future[Judgement], result: Judgement | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
