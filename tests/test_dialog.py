"""The dialog engine, driven event by event on a simulated media timeline."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from agent.dialog import DialogEngine, Phase
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
from agent.flow import Defaults, Flow, State
from agent.flow_loader import load_flow, load_flow_text
from agent.intents import DIGIT_PHRASES

ACME = load_flow(Path(__file__).parent.parent / "fixtures" / "flows" / "acme.yaml")
SID = "CA0123456789abcdef0123456789abcdef"
MENU_PHRASES = (
    "billing", "bill", "invoice", "payment", "support", "technical", "internet",
    "agent", "operator", "person", "representative",
)  # fmt: skip
TRANSFER = Transfer("operator", "+14155550100", 20, True, "voicemail")


class Call:
    """Feeds events to an engine at a moving `now` and keeps every action."""

    def __init__(self, flow: Flow = ACME, *, start: bool = True) -> None:
        self.engine = DialogEngine(flow, SID)
        self.now = 0
        self.actions: list[Action] = []
        if start:
            self.send(CallStarted())

    def send(self, event: Event, *, after_ms: int = 0) -> list[Action]:
        self.now += after_ms
        actions = self.engine.handle(event, self.now)
        self.actions += actions
        return actions

    @property
    def last_say(self) -> Say:
        return [a for a in self.actions if isinstance(a, Say)][-1]

    def prompt_done(self, *, after_ms: int = 2000) -> list[Action]:
        return self.send(PromptFinished(self.last_say.say_id), after_ms=after_ms)

    def barge_in(self, *, after_ms: int = 500) -> list[Action]:
        return self.send(
            PromptInterrupted(self.last_say.say_id, heard_ms=after_ms), after_ms=after_ms
        )

    def say(self, text: str, *, after_ms: int = 300) -> list[Action]:
        self.send(CallerSpeechStarted(), after_ms=after_ms)
        return self.send(CallerSpeechFinal(text, 0.9), after_ms=700)

    def press(self, keys: str, *, gap_ms: int = 300) -> list[Action]:
        out: list[Action] = []
        for key in keys:
            out += self.send(DtmfPressed(key), after_ms=gap_ms)
        return out

    def silence(self) -> list[Action]:
        """Wait out the current deadline."""
        deadline = self.engine.next_deadline()
        assert deadline is not None
        self.now = deadline
        return self.send(Tick())

    def transitions(self) -> list[Transition]:
        return [a for a in self.actions if isinstance(a, Transition)]


def flow(text: str) -> Flow:
    return load_flow_text(dedent(text).lstrip("\n"))


def kinds(actions: list[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- starting ---------------------------------------------------------------------------


def test_call_started_enters_start_says_and_listens() -> None:
    call = Call(start=False)
    actions = call.send(CallStarted())
    text = "Thanks for calling Acme. Say billing, support or agent, or press 1, 2 or 0."
    assert actions == [
        Transition(None, "menu", None),
        Say(1, "menu", text, text, "Polly.Joanna", "en-US", True, listens=True),
        Listen("menu", MENU_PHRASES, False),
    ]
    assert (call.engine.state, call.engine.path, call.engine.phase) == (
        "menu",
        ["menu"],
        Phase.PROMPTING,
    )
    assert call.engine.next_deadline() is None  # no timer while the prompt plays


def test_events_before_the_call_started_are_ignored() -> None:
    call = Call(start=False)
    for event in (DtmfPressed("1"), CallerSpeechFinal("billing", 1.0), Tick(), PromptFinished(1)):
        assert call.send(event) == []
    assert call.engine.state is None


def test_resume_state() -> None:
    call = Call(start=False)
    actions = call.send(CallStarted(resume_state="voicemail"))
    assert actions[0] == Transition(None, "voicemail", "resume")
    assert call.engine.path == ["voicemail"]


def test_unknown_resume_state_enters_start() -> None:
    call = Call(start=False)
    assert call.send(CallStarted(resume_state="nowhere"))[0] == Transition(
        None, "menu", "resume_unknown"
    )
    assert call.engine.state == "menu"


def test_a_second_call_started_is_ignored() -> None:
    call = Call()
    assert call.send(CallStarted(resume_state="goodbye")) == []


# --- the acme paths from DESIGN.md ------------------------------------------------------------


def test_dtmf_billing_account_number_then_hang_up() -> None:
    call = Call()
    call.prompt_done()
    actions = call.press("1")
    assert actions == [
        Transition("menu", "billing", "billing"),
        Say(2, "billing", "Please enter your six digit account number.",
            "Please enter your six digit account number.", "Polly.Joanna", "en-US", True, listens=True),
        Listen("billing", DIGIT_PHRASES, sensitive=True),
    ]  # fmt: skip
    call.prompt_done()
    assert call.press("12345") == []
    actions = call.press("6")
    assert actions[:2] == [
        SlotFilled("account", "123456", sensitive=True),
        Transition("billing", "billing_done", "collected"),
    ]
    assert call.last_say.text == "Thank you. Goodbye."
    assert call.prompt_done() == [HangUp("billing_done", "completed")]
    assert call.engine.finished
    assert call.engine.path == ["menu", "billing", "billing_done"]
    assert call.engine.slots == {"account": "123456"}
    assert call.engine.sensitive_slots == {"account"}


def test_speech_billing() -> None:
    call = Call()
    call.prompt_done()
    assert call.say("billing")[0] == Transition("menu", "billing", "billing")


def test_speech_agent_transfers_after_the_prompt() -> None:
    call = Call()
    call.prompt_done()
    actions = call.say("I need to talk to an agent please")
    assert kinds(actions) == ["Transition", "Say"]  # the transfer waits for its prompt
    assert actions[0] == Transition("menu", "operator", "agent")
    assert call.last_say.text == "Transferring you to an agent."
    assert call.prompt_done() == [TRANSFER]
    assert call.engine.phase is Phase.TRANSFERRING
    assert not call.engine.finished


def test_silence_three_times_reprompts_twice_then_falls_back() -> None:
    call = Call()
    call.prompt_done()
    assert call.engine.next_deadline() == call.now + 6000
    assert call.send(Tick(), after_ms=5999) == []  # not yet
    no_input = "Are you still there? Say billing, support or agent."
    for say_id in (2, 3):
        actions = call.silence()
        assert actions == [
            Transition("menu", "menu", "no_input"),
            Say(say_id, "menu", no_input, no_input, "Polly.Joanna", "en-US", True, listens=True),
            Listen("menu", MENU_PHRASES, False),
        ]
        assert call.engine.next_deadline() is None  # restarts when the re-prompt ends
        call.prompt_done()
    actions = call.silence()
    assert actions[0] == Transition("menu", "operator", "fallback")
    assert call.last_say.text == "Transferring you to an agent."
    assert call.engine.path == ["menu", "operator"]


def test_unrecognised_three_times() -> None:
    call = Call()
    call.prompt_done()
    no_match = "Sorry, I didn't catch that. Say billing, support or agent."
    for _ in range(2):
        actions = call.say("banana")
        assert actions[0] == Transition("menu", "menu", "no_match")
        assert call.last_say.text == no_match
        call.prompt_done()
    assert call.say("banana")[0] == Transition("menu", "operator", "fallback")


def test_no_input_and_no_match_share_the_attempts() -> None:
    call = Call()
    call.prompt_done()
    call.silence()
    call.prompt_done()
    call.press("7")
    call.prompt_done()
    assert call.say("")[0] == Transition("menu", "operator", "fallback")


def test_transfer_failed_goes_to_voicemail() -> None:
    call = Call()
    call.prompt_done()
    call.press("0")
    call.prompt_done()
    actions = call.send(TransferFailed("no-answer"))
    assert actions[0] == Transition("operator", "voicemail", "transfer_failed")
    assert call.last_say.text == "Please leave a message after the tone."
    assert call.prompt_done() == [Voicemail("voicemail", max_s=120, next="goodbye")]
    assert call.engine.finished
    assert call.engine.path == ["menu", "operator", "voicemail"]


def test_support_joins_the_conference() -> None:
    call = Call()
    call.prompt_done()
    assert call.say("technical support please")[0] == Transition("menu", "support", "support")
    assert call.last_say.text == "Connecting you to the support bridge."
    assert call.prompt_done() == [Conference("support", f"support-{SID}", record=True)]
    assert call.engine.finished


def test_account_number_only_in_slot_filled_value() -> None:
    call = Call()
    call.prompt_done()
    call.press("1")
    call.prompt_done()
    call.press("98")
    call.say("seven six five four")
    call.prompt_done()
    assert call.engine.finished
    secret = "987654"
    filled = [a for a in call.actions if isinstance(a, SlotFilled)]
    assert filled == [SlotFilled("account", secret, True)]
    assert filled[0].log_value == "***"
    others = [a for a in call.actions if not isinstance(a, SlotFilled)]
    assert all(secret not in repr(a) for a in others)


# --- say templates ---------------------------------------------------------------------------------

CONFIRM = """
start: ask
states:
  ask:
    say: "Your reference is {call_sid}. Enter your PIN{pin}."
    collect: {slot: pin, digits: 4, sensitive: true, next: zip}
  zip:
    collect: {slot: zip, digits: 5, next: confirm}
  confirm:
    say: "PIN {pin}, zip {zip}."
    barge_in: false
    hangup: true
"""


def test_say_fills_slots_and_masks_sensitive_ones_in_log_text() -> None:
    call = Call(flow(CONFIRM))
    first = call.last_say
    assert first.text == first.log_text == f"Your reference is {SID}. Enter your PIN."
    call.prompt_done()
    call.press("4321")
    call.press("94110")
    say = call.last_say
    assert (say.say_id, say.text, say.log_text) == (
        2,
        "PIN 4321, zip 94110.",
        "PIN ***, zip 94110.",
    )
    assert say.barge_in is False
    assert all("4321" not in a.log_text for a in call.actions if isinstance(a, Say))


def test_say_ids_are_never_reused() -> None:
    call = Call()
    call.prompt_done()
    call.silence()
    call.prompt_done()
    call.press("1")
    ids = [a.say_id for a in call.actions if isinstance(a, Say)]
    assert ids == [1, 2, 3]


# --- prompts, barge-in and timers --------------------------------------------------------------------


def test_barge_in_listens_at_once_without_a_timer() -> None:
    call = Call()
    assert call.barge_in() == []
    assert call.engine.phase is Phase.LISTENING
    assert call.engine.next_deadline() is None  # the caller is talking
    assert call.send(CallerSpeechFinal("billing", 0.8))[0] == Transition(
        "menu", "billing", "billing"
    )


def test_barge_in_then_nothing_recognised_reprompts() -> None:
    call = Call()
    call.barge_in()
    assert call.send(CallerSpeechFinal("", 0.0))[0] == Transition("menu", "menu", "no_match")


def test_caller_speech_suspends_the_timer() -> None:
    call = Call()
    call.prompt_done()
    call.send(CallerSpeechStarted(), after_ms=5000)
    assert call.engine.next_deadline() is None
    assert call.send(Tick(), after_ms=5000) == []  # past the old deadline: nothing
    assert call.send(CallerSpeechFinal("support", 0.9))[0] == Transition(
        "menu", "support", "support"
    )


def test_a_sound_too_short_to_be_a_turn_restarts_the_timer_without_an_attempt() -> None:
    call = Call()
    call.prompt_done()
    call.send(CallerSpeechStarted(), after_ms=3000)
    assert call.engine.next_deadline() is None
    assert call.send(CallerSpeechAbandoned(), after_ms=100) == []
    assert call.engine.next_deadline() == call.now + 6000
    assert call.send(Tick(), after_ms=6000)[0] == Transition("menu", "menu", "no_input")


def test_stale_prompt_events_are_ignored() -> None:
    call = Call()
    call.prompt_done()
    call.silence()  # re-prompt: say_id 2
    assert call.send(PromptFinished(1)) == []
    assert call.send(PromptInterrupted(1, 10)) == []
    assert call.engine.next_deadline() is None
    call.prompt_done()
    assert call.engine.next_deadline() == call.now + 6000


def test_input_while_the_prompt_plays_counts_with_barge_in() -> None:
    call = Call()
    assert call.press("2")[0] == Transition("menu", "support", "support")


QUIET = """
start: menu
defaults: {barge_in: false, fallback: bye, no_input_s: 2.5}
states:
  menu:
    say: "Press 1."
    intents: {one: {dtmf: "1", next: bye}}
  bye:
    say: "Bye."
    hangup: true
"""


def test_without_barge_in_input_waits_for_the_prompt() -> None:
    call = Call(flow(QUIET))
    assert call.last_say.barge_in is False
    assert call.press("1") == []
    assert call.say("one") == []
    call.prompt_done()
    assert call.engine.next_deadline() == call.now + 2500
    assert call.press("1")[0] == Transition("menu", "bye", "one")


def test_caller_talking_over_the_end_of_a_prompt_delays_the_timer() -> None:
    call = Call(flow(QUIET))
    call.send(CallerSpeechStarted(), after_ms=100)
    call.prompt_done()
    assert call.engine.phase is Phase.LISTENING
    assert call.engine.next_deadline() is None
    assert call.send(CallerSpeechFinal("hmm", 0.5))[0] == Transition("menu", "menu", "no_match")


def test_speech_and_keys_are_ignored_where_nothing_listens() -> None:
    call = Call()
    call.prompt_done()
    call.press("0")  # to the operator: "Transferring you to an agent."
    assert call.press("1") == []
    assert call.say("billing") == []
    assert call.send(Tick(), after_ms=60_000) == []
    assert call.engine.state == "operator"


def test_interrupted_action_prompt_acts_at_once() -> None:
    call = Call()
    call.prompt_done()
    call.press("0")
    assert call.barge_in() == [TRANSFER]


def test_events_after_the_end_are_ignored() -> None:
    call = Call()
    call.prompt_done()
    call.press("2")
    call.prompt_done()
    assert call.engine.finished
    for event in (
        CallStarted(),
        DtmfPressed("1"),
        TransferFailed("busy"),
        Tick(),
        PromptFinished(3),
    ):
        assert call.send(event, after_ms=10_000) == []


# --- fallback edge cases -----------------------------------------------------------------------------

STRICT = """
start: menu
defaults: {max_retries: 0}
states:
  menu:
    say: "Press 1."
    intents: {one: {dtmf: "1", next: agent}}
  agent:
    transfer: {to: "sip:desk@pbx.example.com"}
"""


def test_no_retries_and_no_fallback_hangs_up() -> None:
    call = Call(flow(STRICT))
    call.prompt_done()
    assert call.press("9") == [HangUp("menu", "no_fallback")]
    assert call.engine.finished


def test_transfer_without_a_prompt_happens_on_entry() -> None:
    call = Call(flow(STRICT))
    assert call.press("1") == [
        Transition("menu", "agent", "one"),
        Transfer("agent", "sip:desk@pbx.example.com", 30, False, None),
    ]


def test_transfer_failed_without_on_fail_or_fallback_hangs_up() -> None:
    call = Call(flow(STRICT))
    call.press("1")
    assert call.send(TransferFailed("busy")) == [HangUp("agent", "transfer_failed")]


def test_transfer_failed_uses_the_fallback_but_never_loops() -> None:
    text = STRICT.replace("{max_retries: 0}", "{max_retries: 0, fallback: FB}")
    call = Call(flow(text.replace("FB", "menu")))
    call.press("1")
    assert call.send(TransferFailed("busy"))[0] == Transition("agent", "menu", "transfer_failed")
    call = Call(flow(text.replace("FB", "agent")))
    call.press("1")
    assert call.send(TransferFailed("busy")) == [HangUp("agent", "transfer_failed")]


def test_transfer_failed_is_ignored_unless_transferring() -> None:
    call = Call()
    assert call.send(TransferFailed("busy")) == []


def test_reprompt_repeats_say_when_there_is_no_specific_text() -> None:
    call = Call(flow(QUIET))
    call.prompt_done()
    call.silence()
    assert call.last_say.text == "Press 1."
    assert call.last_say.say_id == 2


def test_per_state_overrides() -> None:
    call = Call(
        flow(
            """
            start: menu
            defaults: {max_retries: 5, fallback: nope, no_input_s: 9}
            states:
              menu:
                intents: {one: {dtmf: "1", next: nope}}
                max_retries: 1
                fallback: bye
                no_input_s: 0.5
              nope: {hangup: true}
              bye: {hangup: true}
            """
        )
    )
    assert call.actions == [Transition(None, "menu", None), Listen("menu", (), False)]
    assert call.engine.next_deadline() == 500  # no prompt: the timer starts at once
    call.silence()
    assert call.actions[-2:] == [Transition("menu", "menu", "no_input"), Listen("menu", (), False)]
    assert call.silence() == [Transition("menu", "bye", "fallback"), HangUp("bye", "completed")]


# --- plain next ---------------------------------------------------------------------------------------

NEXT = """
start: hello
states:
  hello:
    say: "Hello."
    next: quiet
  quiet:
    next: menu
  menu:
    say: "Press 1."
    intents: {one: {dtmf: "1", next: hello}}
"""


def test_next_state_moves_on_after_its_prompt() -> None:
    call = Call(flow(NEXT))
    assert kinds(call.actions) == ["Transition", "Say"]
    assert call.prompt_done() == [
        Transition("hello", "quiet", "next"),
        Transition("quiet", "menu", "next"),  # no prompt: straight through
        Say(2, "menu", "Press 1.", "Press 1.", "Polly.Joanna", "en-US", True, listens=True),
        Listen("menu", (), False),
    ]
    assert call.engine.path == ["hello", "quiet", "menu"]


def test_interrupting_a_next_prompt_moves_on() -> None:
    call = Call(flow(NEXT))
    assert call.barge_in()[0] == Transition("hello", "quiet", "next")


def test_path_has_no_repeats_for_reentering_a_state() -> None:
    looping = NEXT.replace("next: hello}", "next: menu}")
    call = Call(flow(looping))
    call.prompt_done()
    call.press("1")
    call.press("1")
    assert call.transitions()[-1] == Transition("menu", "menu", "one")
    assert call.engine.path == ["hello", "quiet", "menu"]


# --- collecting digits --------------------------------------------------------------------------------


def billing_call() -> Call:
    call = Call()
    call.prompt_done()
    call.press("1")
    call.prompt_done()
    return call


def test_finish_key_too_early_is_a_no_match() -> None:
    call = billing_call()
    call.press("123")
    assert call.press("#")[0] == Transition("billing", "billing", "no_match")
    assert call.last_say.text == "Please enter your six digit account number."


def test_star_starts_over() -> None:
    call = billing_call()
    call.press("99*")
    actions = call.press("123456")
    assert actions[0] == SlotFilled("account", "123456", True)


def test_other_keys_are_ignored_while_collecting() -> None:
    call = billing_call()
    deadline = call.engine.next_deadline()
    assert call.press("A", gap_ms=0) == []
    assert call.engine.next_deadline() == deadline
    assert call.press("123456")[0] == SlotFilled("account", "123456", True)


def test_each_digit_restarts_the_no_input_timer() -> None:
    call = billing_call()
    call.press("1", gap_ms=5000)
    assert call.engine.next_deadline() == call.now + 6000
    call.press("2", gap_ms=5000)
    assert call.engine.next_deadline() == call.now + 6000


def test_timeout_with_some_digits_is_a_no_match() -> None:
    call = billing_call()
    call.press("12")
    assert call.silence()[0] == Transition("billing", "billing", "no_match")
    call.prompt_done()
    assert call.silence()[0] == Transition("billing", "billing", "no_input")  # the 12 are gone
    call.prompt_done()
    assert call.silence()[0] == Transition("billing", "operator", "fallback")


def test_spoken_digits_in_groups() -> None:
    call = billing_call()
    assert call.say("one two three") == []
    assert call.engine.next_deadline() == call.now + 6000
    assert call.say("four oh six")[0] == SlotFilled("account", "123406", True)


def test_speech_without_digits_or_too_many_digits_is_a_no_match() -> None:
    call = billing_call()
    assert call.say("I don't have it")[0] == Transition("billing", "billing", "no_match")
    call.prompt_done()
    assert call.say("one two three four five six seven")[0] == Transition(
        "billing", "billing", "no_match"
    )


PIN = """
start: pin
states:
  pin:
    say: "Enter your PIN, then star."
    collect: {slot: pin, finish_on_key: "*", next: done}
  done:
    say: "Got {pin}."
    hangup: true
"""


def test_finish_key_without_a_digit_count() -> None:
    call = Call(flow(PIN))
    call.prompt_done()
    assert call.press("*")[0] == Transition("pin", "pin", "no_match")  # nothing entered
    call.prompt_done()
    actions = call.press("0042*")
    assert actions[:2] == [SlotFilled("pin", "0042", False), Transition("pin", "done", "collected")]
    assert call.last_say.log_text == "Got 0042."


def test_spoken_turn_finishes_a_collect_without_digit_count() -> None:
    call = Call(flow(PIN))
    call.prompt_done()
    assert call.say("seven seven")[0] == SlotFilled("pin", "77", False)


# --- snapshot and restore ---------------------------------------------------------------------------------


def test_snapshot_is_json_and_restores_at_a_state_boundary() -> None:
    call = billing_call()
    call.press("123456")
    snapshot = json.loads(json.dumps(call.engine.snapshot()))
    assert snapshot["slots"] == {"account": "123456"}  # the store is trusted
    engine = DialogEngine.restore(ACME, SID, snapshot)
    assert (engine.state, engine.path, engine.phase) == (
        "billing_done",
        call.engine.path,
        Phase.IDLE,
    )
    assert engine.sensitive_slots == {"account"}
    actions = engine.handle(CallStarted(), 0)
    assert actions[0] == Transition("billing_done", "billing_done", "resume")
    assert isinstance(actions[1], Say)
    assert actions[1].say_id == call.last_say.say_id + 1
    assert engine.path == ["menu", "billing", "billing_done"]


def test_restore_during_a_transfer_takes_transfer_failed() -> None:
    call = Call()
    call.prompt_done()
    call.press("0")
    call.prompt_done()
    engine = DialogEngine.restore(ACME, SID, call.engine.snapshot())
    assert engine.phase is Phase.TRANSFERRING
    assert engine.handle(TransferFailed("busy"), 0)[0] == Transition(
        "operator", "voicemail", "transfer_failed"
    )


def test_restore_then_resume_elsewhere() -> None:
    call = Call()
    call.prompt_done()
    call.press("0")
    call.prompt_done()
    engine = DialogEngine.restore(ACME, SID, call.engine.snapshot())
    actions = engine.handle(CallStarted(resume_state="voicemail"), 0)
    assert actions[0] == Transition("operator", "voicemail", "resume")
    assert engine.path == ["menu", "operator", "voicemail"]


@pytest.mark.parametrize(
    "snapshot",
    [
        {},
        {"version": 99},
        {"version": 1, "state": "menu", "path": "menu", "slots": {}, "sensitive_slots": [],
         "say_id": 1, "transferring": False},
        {"version": 1, "state": "menu", "path": [], "slots": {"a": 1}, "sensitive_slots": [],
         "say_id": 1, "transferring": False},
    ],
)  # fmt: skip
def test_restore_rejects_what_is_not_a_snapshot(snapshot: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="snapshot"):
        DialogEngine.restore(ACME, SID, snapshot)


def test_read_only_views_are_copies() -> None:
    call = billing_call()
    call.press("123456")
    call.engine.slots["account"] = "x"
    call.engine.path.append("x")
    assert call.engine.slots == {"account": "123456"}
    assert call.engine.path == ["menu", "billing", "billing_done"]


def test_same_events_same_actions() -> None:
    def run() -> list[Action]:
        call = Call()
        call.prompt_done()
        call.silence()
        call.say("pay my invoice")
        call.press("123456")
        return call.actions

    assert run() == run()


# --- flows built by hand skip the checker: the engine still never hangs ----------------------------


def hand_built(*states: State) -> Flow:
    return Flow("hand", "Polly.Joanna", "en-US", states[0].name, Defaults(),
                {s.name: s for s in states}, "<hand>")  # fmt: skip


def test_dead_end_state_hangs_up() -> None:
    call = Call(hand_built(State("limbo", 1, say="Hmm.")))
    assert call.prompt_done() == [HangUp("limbo", "dead_end")]


def test_silent_next_loop_raises() -> None:
    with pytest.raises(RuntimeError, match="loop"):
        Call(hand_built(State("a", 1, next="b"), State("b", 2, next="a")))
