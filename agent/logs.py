"""Logging: every line of a call carries its call SID; numbers are masked by callers.

`call_logger(call_sid)` gives a LoggerAdapter that stamps `call_sid` on each
record; records from elsewhere get `-`. `configure_logging(json_lines=True)`
switches to one JSON object per line for log shippers.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

LOGGER_NAME = "callstream"


class _CallSidDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_sid"):
            record.call_sid = "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "call_sid": getattr(record, "call_sid", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallSidDefault())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(call_sid)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level.upper() != "DEBUG":
        # twilio's HTTP clients log every request's headers at INFO (call updates
        # are frequent with CALLSTREAM_SPEECH=twiml); our own lines say what matters
        logging.getLogger("twilio").setLevel(logging.WARNING)


def call_logger(call_sid: str, name: str = LOGGER_NAME) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(logging.getLogger(name), {"call_sid": call_sid})
