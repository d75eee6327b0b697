"""The dialog engine: walks a checked flow, driven by call events.

Pure and deterministic: `handle(event, now_ms) -> list[Action]` and
`next_deadline() -> int | None`, with times in milliseconds on the call's media
timeline. No I/O, no clock, no logging. Types are in `agent/dialog_types.py`.

Theory of operation
-------------------
The engine is in one state of the flow (`engine.state`) and in one phase:

    IDLE          not started: waits for CallStarted (also after `restore`)
    PROMPTING     the state's latest prompt (a Say) is playing
    LISTENING     the state waits for the caller (intents or collect)
    TRANSFERRING  a Transfer was sent: waits for TransferFailed or a new CallStarted
    DONE          HangUp, Conference or Voicemail was sent: everything is ignored

Entering a state emits `Transition`, then `Say` if the state has `say`, then
`Listen` if it listens (again with every re-prompt). When that prompt ends (`PromptFinished` or
`PromptInterrupted` with its say_id; older ids are stale and ignored), or at
once if there is no prompt, the state does its one thing:

    intents, collect     → LISTENING; the no-input timer starts, unless the
                           caller is speaking (barge-in): then it starts after
                           their turn, if the turn does not resolve the state
    transfer             → Transfer, TRANSFERRING
    conference, voicemail, hangup → Conference / Voicemail / HangUp, DONE
    next                 → Transition(state, next, "next") and enter next

An interrupted prompt counts as ended: the caller who talks over "Transferring
you to an agent" is transferred without hearing the rest. A listening state with
`barge_in` takes speech and keys while its prompt still plays; without it they
are ignored until the prompt has finished.

A failed turn (no-match: speech or a key that selects nothing; no-input: the
timer ran out) re-prompts with `no_match` / `no_input` (else `say`) up to
`max_retries` times, each shown as Transition(state, state, "no_match" |
"no_input"); the next failure goes to the fallback state (intent "fallback"),
or hangs up with reason "no_fallback".

`_HANDLED` below is the table of which events each phase acts on; the rest
are ignored. `Tick` counts only at or after `next_deadline()`.

Session contract: every CallerSpeechStarted is followed by a CallerSpeechFinal
(maybe with empty text) or, for a sound too short to be a turn, by
CallerSpeechAbandoned (the no-input timer restarts; no attempt is spent);
while the caller speaks there is no deadline.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from agent.dialog_types import (
    Action,
    CallerSpeechAbandoned,
    CallerSpeechFinal,
    CallerSpeechStarted,
    CallStarted,
    Conference,
    DtmfPressed,
    Event,
    HangUp,
    Listen,
    PromptFinished,
    PromptInterrupted,
    Say,
    SlotFilled,
    Tick,
    Transfer,
    TransferFailed,
    Transition,
    Voicemail,
)
from agent.flow import CALL_SID, Flow, State
from agent.intents import DIGIT_PHRASES, IntentMatcher, spoken_digits


class Phase(enum.Enum):
    IDLE = "idle"
    PROMPTING = "prompting"
    LISTENING = "listening"
    TRANSFERRING = "transferring"
    DONE = "done"


# The events each phase acts on; any other event is ignored (returns []).
# CallerSpeechStarted/Final also track whether the caller is speaking, in every phase.
_HANDLED: dict[Phase, tuple[type, ...]] = {
    Phase.IDLE: (CallStarted,),
    Phase.PROMPTING: (PromptFinished, PromptInterrupted, CallerSpeechFinal, DtmfPressed),
    Phase.LISTENING: (CallerSpeechStarted, CallerSpeechFinal, CallerSpeechAbandoned, DtmfPressed, Tick),
    Phase.TRANSFERRING: (TransferFailed, CallStarted),
    Phase.DONE: (),
}

_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DIGITS = frozenset("0123456789")
SNAPSHOT_VERSION = 1


class DialogEngine:
    """One call's walk through a flow. See the module docstring."""

    def __init__(self, flow: Flow, call_sid: str) -> None:
        self.flow = flow
        self.call_sid = call_sid
        self._phase = Phase.IDLE
        self._state: str | None = None
        self._path: list[str] = []
        self._slots: dict[str, str] = {}
        self._sensitive: set[str] = set()
        self._last_say_id = 0
        self._prompt_id: int | None = None  # the Say whose end the state waits for
        self._deadline: int | None = None
        self._caller_speaking = False
        self._attempts = 0  # failed turns in the current state
        self._digits = ""  # collected so far in the current state
        self._matchers = {
            name: IntentMatcher((i.name, i.phrases, i.dtmf) for i in state.intents)
            for name, state in flow.states.items()
        }

    # -- read-only view

    @property
    def state(self) -> str | None:
        """The current state's name; None before the call started."""
        return self._state

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def path(self) -> list[str]:
        """States entered, in order; a state is never listed twice in a row
        (re-prompts and re-entries of the same state are not new steps)."""
        return list(self._path)

    @property
    def slots(self) -> dict[str, str]:
        """Collected slot values, sensitive ones in clear: mask with `sensitive_slots`."""
        return dict(self._slots)

    @property
    def sensitive_slots(self) -> frozenset[str]:
        """Names of the collected slots whose values must never be logged."""
        return frozenset(self._sensitive)

    @property
    def finished(self) -> bool:
        """HangUp, Conference or Voicemail was emitted. After a Transfer the
        engine is not finished: the transfer may fail and the call come back."""
        return self._phase is Phase.DONE

    def next_deadline(self) -> int | None:
        """When to send Tick (media-timeline ms), or None if nothing is timed."""
        return self._deadline

    # -- events in, actions out

    def handle(self, event: Event, now_ms: int) -> list[Action]:
        """Apply `event`, which happened at `now_ms`; return what to do."""
        if isinstance(event, CallerSpeechStarted):
            self._caller_speaking = True
        elif isinstance(event, (CallerSpeechFinal, CallerSpeechAbandoned)):
            self._caller_speaking = False
        if not isinstance(event, _HANDLED[self._phase]):
            return []
        match event:
            case CallStarted(resume_state=resume):
                return self._start(resume, now_ms)
            case PromptFinished(say_id=say_id) | PromptInterrupted(say_id=say_id):
                if say_id != self._prompt_id:
                    return []
                return self._prompt_ended(now_ms, interrupted=isinstance(event, PromptInterrupted))
            case CallerSpeechStarted():
                self._deadline = None
                return []
            case CallerSpeechAbandoned():
                self._deadline = now_ms + self._no_input_ms(self._current())
                return []
            case CallerSpeechFinal(text=text):
                if not self._accepts_input(now_ms):
                    return []
                return self._on_speech(text, now_ms)
            case DtmfPressed(digit=key):
                if self._ignores_key(key) or not self._accepts_input(now_ms):
                    return []
                return self._on_key(key, now_ms)
            case Tick():
                if self._deadline is None or now_ms < self._deadline:
                    return []
                return self._on_timeout(now_ms)
            case TransferFailed():
                return self._on_transfer_failed(now_ms)
        return []  # pragma: no cover - every handled type has a case

    # -- entering states and prompting

    def _start(self, resume: str | None, now: int) -> list[Action]:
        states = self.flow.states
        came_from = self._state
        if resume is None and came_from is None:
            target, intent = self.flow.start, None
        else:
            wanted = resume if resume is not None else came_from
            known = wanted in states
            target = wanted if wanted is not None and known else self.flow.start
            intent = "resume" if known else "resume_unknown"
        self._prompt_id = None
        self._deadline = None
        self._caller_speaking = False
        return self._enter(target, came_from, intent, now)

    def _enter(
        self, target: str, came_from: str | None, intent: str | None, now: int
    ) -> list[Action]:
        actions: list[Action] = []
        for _ in range(len(self.flow.states) + 1):
            actions.append(Transition(came_from, target, intent))
            self._state = target
            if not self._path or self._path[-1] != target:
                self._path.append(target)
            self._attempts = 0
            self._digits = ""
            state = self.flow.states[target]
            if state.say is not None or state.next is None or not state.only_next:
                return actions + self._prompt(state, state.say, now)
            came_from, target, intent = target, state.next, "next"  # silent pass-through
        raise RuntimeError(f"flow {self.flow.name!r}: states loop through next without a prompt")

    def _prompt(self, state: State, text: str | None, now: int) -> list[Action]:
        """Say `text` (if any) in the current state and wait for it to end."""
        actions: list[Action] = []
        self._deadline = None
        if text is not None:
            say = self._say(state, text)
            actions.append(say)
            self._prompt_id = say.say_id
            self._phase = Phase.PROMPTING
        if state.listens:
            actions.append(self._listen(state))
        if text is None:
            actions += self._prompt_ended(now, interrupted=False)
        return actions

    def _prompt_ended(self, now: int, *, interrupted: bool) -> list[Action]:
        state = self._current()
        self._prompt_id = None
        if state.listens:
            self._listen_now(state, now, timer=not interrupted)
            return []
        if state.transfer is not None:
            self._phase = Phase.TRANSFERRING
            t = state.transfer
            return [Transfer(state.name, t.to, t.timeout_s, t.record, t.on_fail)]
        if state.only_next:
            assert state.next is not None
            return self._enter(state.next, state.name, "next", now)
        self._phase = Phase.DONE
        if state.conference is not None:
            room = state.conference.room.replace("{" + CALL_SID + "}", self.call_sid)
            return [Conference(state.name, room, state.conference.record)]
        if state.voicemail is not None:
            return [Voicemail(state.name, state.voicemail.max_s, state.voicemail.next)]
        return [HangUp(state.name, "completed" if state.hangup else "dead_end")]

    def _listen_now(self, state: State, now: int, *, timer: bool) -> None:
        """Wait for the caller; the no-input timer runs unless they are speaking."""
        self._phase = Phase.LISTENING
        self._prompt_id = None
        self._deadline = (
            now + self._no_input_ms(state) if timer and not self._caller_speaking else None
        )

    def _say(self, state: State, text: str) -> Say:
        self._last_say_id += 1
        return Say(
            say_id=self._last_say_id,
            state=state.name,
            text=self._render(text, masked=False),
            log_text=self._render(text, masked=True),
            voice=self.flow.voice,
            language=self.flow.language,
            barge_in=self._barge_in(state),
            listens=state.listens,
        )

    def _render(self, template: str, *, masked: bool) -> str:
        """Fill {call_sid} and {slot}; a slot not collected yet is empty."""

        def fill(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == CALL_SID:
                return self.call_sid
            if name not in self._slots:
                return ""
            return "***" if masked and name in self._sensitive else self._slots[name]

        return _SLOT.sub(fill, template)

    def _listen(self, state: State) -> Listen:
        if state.collect is not None:
            return Listen(state.name, DIGIT_PHRASES, state.collect.sensitive)
        phrases = dict.fromkeys(p for intent in state.intents for p in intent.phrases)
        return Listen(state.name, tuple(phrases))

    # -- the caller's turn

    def _accepts_input(self, now: int) -> bool:
        """Input while prompting counts only in a listening state with barge-in;
        it ends the prompt for the engine (as PromptInterrupted would)."""
        if self._phase is Phase.PROMPTING:
            state = self._current()
            if not (state.listens and self._barge_in(state)):
                return False
            self._listen_now(state, now, timer=True)
        return True

    def _ignores_key(self, key: str) -> bool:
        """While collecting, keys that are neither digits, `*` nor the finish
        key (# without finish_on_key, A-D) do nothing at all."""
        state = self._current()
        if state.collect is None:
            return False
        return not (key in _DIGITS or key == "*" or key == state.collect.finish_on_key)

    def _on_speech(self, text: str, now: int) -> list[Action]:
        state = self._current()
        if state.collect is not None:
            return self._collect_spoken(state, spoken_digits(text), now)
        intent = self._matchers[state.name].match_speech(text)
        return self._fail("no_match", now) if intent is None else self._matched(state, intent, now)

    def _on_key(self, key: str, now: int) -> list[Action]:
        state = self._current()
        if state.collect is not None:
            return self._collect_key(state, key, now)
        intent = self._matchers[state.name].match_dtmf(key)
        return self._fail("no_match", now) if intent is None else self._matched(state, intent, now)

    def _on_timeout(self, now: int) -> list[Action]:
        return self._fail("no_match" if self._digits else "no_input", now)

    def _matched(self, state: State, intent_name: str, now: int) -> list[Action]:
        intent = next(i for i in state.intents if i.name == intent_name)
        return self._enter(intent.next, state.name, intent.name, now)

    def _collect_key(self, state: State, key: str, now: int) -> list[Action]:
        """Digits accumulate; `*` (unless it is the finish key) starts over;
        the finish key ends the entry."""
        assert state.collect is not None
        spec = state.collect
        if key == spec.finish_on_key:
            if self._digits and (spec.digits is None or len(self._digits) == spec.digits):
                return self._collected(state, now)
            return self._fail("no_match", now)
        if key == "*":
            self._digits = ""
        else:
            self._digits += key
            if spec.digits is not None and len(self._digits) == spec.digits:
                return self._collected(state, now)
        self._deadline = now + self._no_input_ms(state)  # inter-digit timeout
        return []

    def _collect_spoken(self, state: State, digits: str, now: int) -> list[Action]:
        """Spoken digits add to the entry like keys (a caller may say a long
        number in groups). Speech with no digits is a no-match. Without
        `digits`, the end of a spoken turn acts as the finish key."""
        assert state.collect is not None
        if not digits:
            return self._fail("no_match", now)
        self._digits += digits
        wanted = state.collect.digits
        if wanted is None or len(self._digits) == wanted:
            return self._collected(state, now)
        if len(self._digits) > wanted:
            return self._fail("no_match", now)
        self._deadline = now + self._no_input_ms(state)
        return []

    def _collected(self, state: State, now: int) -> list[Action]:
        assert state.collect is not None
        spec = state.collect
        value, self._digits = self._digits, ""
        self._slots[spec.slot] = value
        if spec.sensitive:
            self._sensitive.add(spec.slot)
        else:
            self._sensitive.discard(spec.slot)
        return [
            SlotFilled(spec.slot, value, spec.sensitive),
            *self._enter(spec.next, state.name, "collected", now),
        ]

    def _fail(self, kind: str, now: int) -> list[Action]:
        state = self._current()
        self._attempts += 1
        self._digits = ""
        if self._attempts <= self._max_retries(state):
            text = (state.no_match if kind == "no_match" else state.no_input) or state.say
            return [Transition(state.name, state.name, kind), *self._prompt(state, text, now)]
        fallback = self._fallback(state)
        if fallback is not None and fallback in self.flow.states:
            return self._enter(fallback, state.name, "fallback", now)
        self._phase = Phase.DONE
        self._deadline = None
        return [HangUp(state.name, "no_fallback")]

    def _on_transfer_failed(self, now: int) -> list[Action]:
        """Go to the transfer's on_fail, else the fallback (unless that is this
        very state: transferring again would loop), else hang up."""
        state = self._current()
        target = state.transfer.on_fail if state.transfer is not None else None
        if target is None:
            target = self._fallback(state)
        if target is None or target == state.name or target not in self.flow.states:
            self._phase = Phase.DONE
            return [HangUp(state.name, "transfer_failed")]
        return self._enter(target, state.name, "transfer_failed", now)

    # -- effective settings: the state's override, else the flow's default

    def _current(self) -> State:
        assert self._state is not None
        return self.flow.states[self._state]

    def _no_input_ms(self, state: State) -> int:
        seconds = (
            state.no_input_s if state.no_input_s is not None else self.flow.defaults.no_input_s
        )
        return round(seconds * 1000)

    def _max_retries(self, state: State) -> int:
        return (
            state.max_retries if state.max_retries is not None else self.flow.defaults.max_retries
        )

    def _fallback(self, state: State) -> str | None:
        return state.fallback if state.fallback is not None else self.flow.defaults.fallback

    def _barge_in(self, state: State) -> bool:
        return state.barge_in if state.barge_in is not None else self.flow.defaults.barge_in

    # -- persistence

    def snapshot(self) -> dict[str, Any]:
        """What a store needs to resume this call later, JSON-serialisable.

        Holds sensitive slot values in clear (the store is trusted, and a
        resumed call may need them): never log or publish a snapshot. Prompts
        in flight, retry counts and timers are not kept: a restored call
        resumes at a state boundary.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "state": self._state,
            "path": list(self._path),
            "slots": dict(self._slots),
            "sensitive_slots": sorted(self._sensitive),
            "say_id": self._last_say_id,
            "transferring": self._phase is Phase.TRANSFERRING,
        }

    @classmethod
    def restore(cls, flow: Flow, call_sid: str, snapshot: Mapping[str, Any]) -> DialogEngine:
        """An engine that continues a snapshotted call. It waits for
        CallStarted: with `resume_state` it enters that state, without it
        re-enters the saved one (Transition intent "resume"). If the snapshot
        was taken during a transfer it also takes TransferFailed.
        Raises ValueError if `snapshot` is not one of ours."""
        try:
            if snapshot["version"] != SNAPSHOT_VERSION:
                raise ValueError(
                    f"snapshot version {snapshot['version']!r} is not {SNAPSHOT_VERSION}"
                )
            state, path, slots = snapshot["state"], snapshot["path"], snapshot["slots"]
            sensitive, say_id = snapshot["sensitive_slots"], snapshot["say_id"]
            transferring = snapshot["transferring"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a dialog snapshot: {e!r}") from None
        if not (
            (state is None or isinstance(state, str))
            and isinstance(path, list)
            and all(isinstance(s, str) for s in path)
            and isinstance(slots, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items())
            and isinstance(sensitive, list)
            and all(isinstance(s, str) for s in sensitive)
            and isinstance(say_id, int)
            and isinstance(transferring, bool)
        ):
            raise ValueError("not a dialog snapshot: a field has the wrong type")
        engine = cls(flow, call_sid)
        engine._state = state
        engine._path = list(path)
        engine._slots = dict(slots)
        engine._sensitive = set(sensitive)
        engine._last_say_id = say_id
        if transferring and state is not None and state in flow.states:
            engine._phase = Phase.TRANSFERRING
        return engine
