"""The CI rule in tests/conftest.py: with CALLSTREAM_REQUIRE_REDIS=1 a skipped
`redis` test, or no `redis` test at all, fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CASES = {
    "skipped": "import pytest\n\n@pytest.mark.redis\ndef test_needs_redis():\n    pytest.skip('no redis here')\n",
    "ran": "import pytest\n\n@pytest.mark.redis\ndef test_needs_redis():\n    pass\n",
    "none": "def test_plain():\n    pass\n",
}


def run(tmp_path: Path, case: str, require: bool) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / case
    folder.mkdir(exist_ok=True)
    shutil.copy(HERE / "conftest.py", folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    redis: needs a real redis-server\n")
    (folder / f"test_{case}.py").write_text(CASES[case])
    env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_REQUIRE_REDIS"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the rule needs no plugin: start fast
    if require:
        env["CALLSTREAM_REQUIRE_REDIS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("case", "require", "code", "says"),
    [
        ("skipped", True, 1, "1 Redis test(s) skipped"),
        ("none", True, 1, "no Redis test ran"),
        ("ran", True, 0, "1 Redis tests ran"),
    ],
)
def test_the_rule(tmp_path, case, require, code, says):
    done = run(tmp_path, case, require)
    assert done.returncode == code, done.stdout + done.stderr
    assert says in done.stdout
