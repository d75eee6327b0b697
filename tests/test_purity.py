"""`media/` and `twiml/` are pure cores: no event loop, no network, no vendor SDK.

An AST walk over every module finds imports anywhere in the file (top level,
inside functions, under `if TYPE_CHECKING`), `import x` and `from x import y`
alike, plus `importlib.import_module("x")` / `__import__("x")` with a literal.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_PACKAGES = ("media", "twiml")
FORBIDDEN = (
    "asyncio",
    "starlette",
    "uvicorn",
    "httpx",
    "aiohttp",
    "redis",
    "websockets",
    "deepgram",
    "boto3",
    "twilio.rest",
    "requests",
    "socket",
)
FILE_IO_ALLOWED = {"media/wav.py"}  # the one place in media/ that opens files


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything a module imports; relative imports skipped."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from twilio import rest` imports twilio.rest
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            literal = first.value if isinstance(first, ast.Constant) else None
            if name in ("import_module", "__import__") and isinstance(literal, str):
                yield node.lineno, literal


def forbidden_imports(source: str) -> list[str]:
    found = sorted(
        (line, module)
        for line, module in imported_modules(ast.parse(source))
        if any(module == banned or module.startswith(banned + ".") for banned in FORBIDDEN)
    )
    return [f"line {line}: {module}" for line, module in found]


def opens_files(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "open"
        ):
            found.append(f"line {node.lineno}: open()")
    found += [f"line {line}: {m}" for line, m in imported_modules(ast.parse(source)) if m == "wave"]
    return found


def pure_modules() -> list[Path]:
    return sorted(p for package in PURE_PACKAGES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io_library(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "path",
    [p for p in pure_modules() if p.relative_to(ROOT).as_posix() not in FILE_IO_ALLOWED],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_pure_module_does_no_file_io(path: Path) -> None:
    assert opens_files(path.read_text(encoding="utf-8")) == []


def test_the_walk_covers_both_packages() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in pure_modules()}
    assert {"media/__init__.py", "media/turns.py", "twiml/__init__.py"} <= names


def test_checker_catches_every_form() -> None:
    source = """
import os, asyncio.subprocess as sp
from twilio import rest
from twilio.rest import Client
from . import socket
from socketserver import TCPServer
import twiml.protocol

def later():
    import redis.asyncio
    from websockets.sync.client import connect
    return importlib.import_module("httpx"), __import__("socket")

if TYPE_CHECKING:
    from starlette.websockets import WebSocket
"""
    assert forbidden_imports(source) == [
        "line 2: asyncio.subprocess",
        "line 3: twilio.rest",
        "line 4: twilio.rest",
        "line 4: twilio.rest.Client",
        "line 10: redis.asyncio",
        "line 11: websockets.sync.client",
        "line 11: websockets.sync.client.connect",
        "line 12: httpx",
        "line 12: socket",
        "line 15: starlette.websockets",
        "line 15: starlette.websockets.WebSocket",
    ]
    assert forbidden_imports("from twilio.request_validator import RequestValidator") == []
    assert opens_files("import wave\nwith open('x') as f: pass") == [
        "line 2: open()",
        "line 1: wave",
    ]
