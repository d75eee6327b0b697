"""twiml/ stays pure: no I/O library is imported, read from the source (AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "twiml"

FORBIDDEN = {
    "asyncio",
    "starlette",
    "uvicorn",
    "httpx",
    "aiohttp",
    "redis",
    "websockets",
    "deepgram",
    "boto3",
    "botocore",
    "socket",
    "requests",
    "agent",  # imports go one way: agent uses twiml
}
TWILIO_ALLOWED = {"twilio.twiml.voice_response", "twilio.request_validator"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


SOURCES = sorted(PACKAGE.glob("*.py"))


def test_the_package_has_sources() -> None:
    assert {path.name for path in SOURCES} >= {
        "messages.py",
        "stream.py",
        "documents.py",
        "signature.py",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.name)
def test_no_io_imports(path: Path) -> None:
    for module in imported_modules(path):
        root = module.split(".")[0]
        assert root not in FORBIDDEN, f"{path.name} imports {module}"
        if root == "twilio":
            assert module in TWILIO_ALLOWED, (
                f"{path.name} imports {module} (only pure twilio parts)"
            )
