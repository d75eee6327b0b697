"""REDIS_URL pointing at nothing: a clear refusal at start-up, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import ConfigError, load_settings
from agent.wiring import build_shared_state

ROOT = Path(__file__).resolve().parent.parent


def test_serve_refuses_an_unreachable_redis_naming_redis_url():
    env = dict(os.environ, REDIS_URL="redis://:s3cret@127.0.0.1:1/0")  # nothing listens on port 1
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "serve", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2
    assert "REDIS_URL=redis://:***@127.0.0.1:1/0: cannot reach Redis" in done.stderr
    assert "s3cret" not in done.stderr


async def test_building_the_services_refuses_too():
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}, env_file=None)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        await build_shared_state(settings)


def test_redis_url_must_be_a_redis_url():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_settings({"REDIS_URL": "http://127.0.0.1:6379"}, env_file=None)
    settings = load_settings({"REDIS_URL": "redis://h:1/2", "CALLSTREAM_REDIS_PREFIX": "cs-a:"}, env_file=None)
    assert (settings.redis_url, settings.redis_prefix) == ("redis://h:1/2", "cs-a:")
