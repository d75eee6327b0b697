"""What a call session's parts share: its dependencies, its socket port and
the little mutable state every part reads.

A `CallSession` (agent/session.py) is a façade over a few collaborators, each
in its own module: the socket side (agent/session_socket.py), hearing the
caller (agent/session_listen.py), acting on the dialog (agent/session_actions.py)
and the call's record (agent/session_end.py). They do not reach into each
other's fields; what more than one of them must see lives in one `CallState`,
deliberately small:

- `call_sid`, `log`, `tasks`: who the call is, where it logs, the tasks it owns
  (all three are replaced when `start` names the call);
- `now_ms`: the session clock, the end of the latest inbound frame on the media
  timeline (the per-frame path advances it);
- `deadline`: the dialog's next deadline, checked on every frame;
- `speaker`: the agent's voice, pumped on every frame, told what to say;
- `end_reason`, `outcome`: why the call ended, where it was handed on;
- `closing`, `close_with`: the socket is closed (nothing more goes to Twilio),
  or should be by the reader at its next message with this code and reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from agent.feed import Feed
from agent.flow import Flow
from agent.logs import call_logger
from agent.ports import ArchiveQueue, CallControl, CallStore, SpeechToText, TextToSpeech
from agent.speaker import AgentVoice
from agent.tasks import TaskSet


class MediaSocket(Protocol):
    """The WebSocket as the session needs it (Starlette or websockets adapt to it)."""

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer has gone."""

    async def send(self, text: str) -> None: ...

    async def send_all(self, texts: list[str]) -> None:
        """Several messages in order (one write where the socket can)."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(frozen=True)
class SessionDeps:
    flow: Flow
    tts: TextToSpeech
    stt: SpeechToText | None
    call_control: CallControl | None
    store: CallStore
    feed: Feed
    base_url: str  # https://host as Twilio reaches us (action URLs)
    end_silence_ms: int = 700
    vad_aggressiveness: int = 2
    archive: ArchiveQueue | None = None
    stt_fallback: SpeechToText | None = None  # takes over when `stt` fails for good
    tts_fallback: TextToSpeech | None = None  # speaks a prompt `tts` could not
    speech: str = "stream"  # CALLSTREAM_SPEECH: stream | twiml
    max_messages_per_s: int = 0  # CALLSTREAM_MAX_MESSAGES_PER_S (0: no limit)
    start_timeout_s: float = 10.0  # CALLSTREAM_START_TIMEOUT_S


@dataclass
class CallStats:
    bargeins: list[int] = field(default_factory=list)  # latency ms (media timeline)
    response_ms: list[float] = field(default_factory=list)  # STT final → first audio out (wall)


def _unnamed_log() -> logging.LoggerAdapter[logging.Logger]:
    return call_logger("-", "callstream.session")


@dataclass(slots=True, eq=False)
class CallState:
    """The fields more than one part of the session reads (see the module docstring)."""

    log: logging.LoggerAdapter[logging.Logger] = field(default_factory=_unnamed_log)
    tasks: TaskSet = field(init=False)
    call_sid: str = "-"
    now_ms: int = 0
    deadline: int | None = None
    speaker: AgentVoice | None = None
    end_reason: str = "socket_closed"
    outcome: str | None = None
    closing: bool = False
    close_with: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        self.tasks = TaskSet(self.log)

    def name(self, call_sid: str) -> None:
        """`start` named the call: log and own tasks under its SID from now on."""
        self.call_sid = call_sid
        self.log = call_logger(call_sid, "callstream.session")
        self.tasks = TaskSet(self.log)
