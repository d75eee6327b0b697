"""`callstream serve` as a real process, for tests of what only a process has
(signals, exit codes, its log as written)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.stream_url = f"ws://127.0.0.1:{port}/twilio/media"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                assert self.process.poll() is None, self.stderr()
                try:
                    if (await client.get(self.base + "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("server never became ready")

    async def exit_code(self, timeout_s: float = 30) -> int:
        for _ in range(int(timeout_s * 10)):
            code = self.process.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)
        raise AssertionError("server did not exit after SIGTERM")

    def stderr(self) -> str:
        return self.log.read_text()


@asynccontextmanager
async def serve(archive: Path, *args: str, **env: str) -> AsyncIterator[ServeProcess]:
    """`callstream serve` on a free port with the offline defaults (no STT), its log in a file."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "CALLSTREAM_", "REDIS_"))}
    log = archive.parent / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--port", str(port), *args],
            env={**clean, "CALLSTREAM_STT": "none", "CALLSTREAM_ARCHIVE": str(archive), **env},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
        )
    server = ServeProcess(process, port, log)
    try:
        await server.wait_ready()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
