"""The flow loader and checker: every problem with the line of its node."""

from __future__ import annotations

import io
from pathlib import Path
from textwrap import dedent

import pytest

from agent.flow import (
    Collect,
    ConferenceSpec,
    Defaults,
    FlowError,
    Intent,
    Problem,
    TransferSpec,
    VoicemailSpec,
)
from agent.flow_loader import (
    check_flow,
    check_flow_text,
    flow_check_command,
    load_flow,
    load_flow_text,
)

ACME = Path(__file__).parent.parent / "fixtures" / "flows" / "acme.yaml"


def problems(text: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in check_flow_text(dedent(text).lstrip("\n"), "t.yaml")]


def only(text: str) -> tuple[int, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- the shipped flow ---------------------------------------------------------------


def test_acme_checks_clean() -> None:
    assert check_flow(ACME) == []


def test_acme_loads_into_dataclasses() -> None:
    flow = load_flow(ACME)
    assert (flow.name, flow.voice, flow.language, flow.start) == (
        "acme-support", "Polly.Joanna", "en-US", "menu",
    )  # fmt: skip
    assert flow.path == str(ACME)
    assert flow.defaults == Defaults(
        no_input_s=6, max_retries=2, fallback="operator", barge_in=True
    )
    assert list(flow.states) == [
        "menu", "billing", "billing_done", "support", "operator", "voicemail", "goodbye",
    ]  # fmt: skip
    menu = flow.states["menu"]
    assert menu.line == 7
    assert menu.listens
    assert menu.intents[0] == Intent(
        "billing", ("billing", "bill", "invoice", "payment"), "1", "billing"
    )
    assert [i.dtmf for i in menu.intents] == ["1", "2", "0"]
    assert menu.no_match == "Sorry, I didn't catch that. Say billing, support or agent."
    assert flow.states["billing"].collect == Collect("account", 6, "#", True, "billing_done")
    assert flow.states["billing_done"].hangup
    assert flow.states["support"].conference == ConferenceSpec("support-{call_sid}", record=True)
    assert flow.states["operator"].transfer == TransferSpec("+14155550100", 20, True, "voicemail")
    assert flow.states["voicemail"].voicemail == VoicemailSpec(120, "goodbye")
    assert not flow.states["operator"].listens


def test_flow_check_command_ok() -> None:
    out = io.StringIO()
    assert flow_check_command(str(ACME), out) == 0
    assert out.getvalue() == f"{ACME}: ok (7 states)\n"


def test_flow_check_command_prints_problems_and_summary(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("start: nowhere\nstates:\n  a: {hangup: true}\n  b: {hangup: true}\n")
    out = io.StringIO()
    assert flow_check_command(str(path), out) == 1
    assert out.getvalue().splitlines() == [
        f"{path}:1: start 'nowhere' is not a state",
        f"{path}: 1 problem",
    ]


def test_flow_check_command_on_the_bad_fixture() -> None:
    path = str(ACME.parent / "bad" / "typos.yaml")
    out = io.StringIO()
    assert flow_check_command(path, out) == 1
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{path}:5", f"{path}:6", f"{path}:7", f"{path}:9", f"{path}:11", f"{path}:12", path,
    ]  # fmt: skip
    assert lines[2] == f"{path}:7: unknown key 'intens' in state 'menu' (did you mean 'intents'?)"
    assert lines[-1] == f"{path}: 6 problems"


def test_flow_check_command_unreadable_file(tmp_path: Path) -> None:
    out = io.StringIO()
    assert flow_check_command(str(tmp_path / "missing.yaml"), out) == 2
    assert out.getvalue().startswith(f"{tmp_path / 'missing.yaml'}: cannot read: ")


def test_not_utf8_is_a_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'start: a\nstates:\n  a: {say: "caf\xe9", hangup: true}\n')
    assert check_flow(path) == [Problem(str(path), 3, "not UTF-8 text")]


def test_load_flow_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("states:\n  a: {hangup: true, next: a}\n")
    with pytest.raises(FlowError) as info:
        load_flow(path)
    assert [p.line for p in info.value.problems] == [1, 2]
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)


def test_problem_str() -> None:
    assert str(Problem("acme.yaml", 12, "oops")) == "acme.yaml:12: oops"


# --- syntax and shape ---------------------------------------------------------------------


def test_yaml_syntax_error_has_its_line() -> None:
    line, message = only(
        """
        start: a
        states:
          a: {say: "hi", hangup: true
          b: 1
        """
    )
    assert line == 4
    assert message.startswith("YAML syntax error: ")


def test_control_character_has_its_line() -> None:
    assert problems('start: a\nstates:\n  a: {say: "x\x01", hangup: true}\n') == [
        (3, "character U+0001 is not allowed in YAML")
    ]


def test_more_than_one_document() -> None:
    line, message = only("start: a\n---\nstart: b\n")
    assert line == 2
    assert "expected a single document" in message


def test_empty_file() -> None:
    assert problems("") == [(1, "the file is empty: a flow needs start and states")]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == [(1, "the flow must be a mapping of keys to values")]


def test_missing_start() -> None:
    assert problems(
        """
        states:
          a: {hangup: true}
        """
    ) == [(1, "missing 'start': name the state calls begin in")]


def test_start_names_unknown_state() -> None:
    assert only(
        """
        start: mneu
        states:
          menu: {hangup: true}
        """
    ) == (1, "start 'mneu' is not a state (did you mean 'menu'?)")


def test_missing_or_empty_states() -> None:
    assert (1, "missing 'states'") in problems("start: a\n")
    assert (2, "'states' is empty") in problems("start: a\nstates: {}\n")


# --- references and reachability ------------------------------------------------------------

REFS = """
start: menu
defaults: {fallback: DEFAULT_FALLBACK}
states:
  menu:
    say: "Hi"
    intents:
      go: {phrases: [go], next: INTENT_NEXT}
    fallback: STATE_FALLBACK
  ask:
    collect: {slot: pin, digits: 4, next: COLLECT_NEXT}
  call:
    transfer: {to: "+14155550100", on_fail: ON_FAIL}
  record:
    voicemail: {next: VOICEMAIL_NEXT}
  pass:
    next: STATE_NEXT
  done:
    hangup: true
"""
GOOD_TARGETS = {
    "DEFAULT_FALLBACK": "done",
    "INTENT_NEXT": "ask",
    "STATE_FALLBACK": "pass",
    "COLLECT_NEXT": "call",
    "ON_FAIL": "record",
    "VOICEMAIL_NEXT": "done",
    "STATE_NEXT": "done",
}


def refs_flow(**override: str) -> str:
    text = REFS
    for placeholder, target in {**GOOD_TARGETS, **override}.items():
        text = text.replace(placeholder, target)
    return text


def test_reference_flow_is_fine() -> None:
    assert problems(refs_flow()) == []


@pytest.mark.parametrize(
    ("placeholder", "line", "what"),
    [
        ("DEFAULT_FALLBACK", 2, "fallback in defaults"),
        ("INTENT_NEXT", 7, "next of intent 'go' in state 'menu'"),
        ("STATE_FALLBACK", 8, "fallback of state 'menu'"),
        ("COLLECT_NEXT", 10, "next of collect in state 'ask'"),
        ("ON_FAIL", 12, "on_fail of transfer in state 'call'"),
        ("VOICEMAIL_NEXT", 14, "next of voicemail in state 'record'"),
        ("STATE_NEXT", 16, "next of state 'pass'"),
    ],
)
def test_reference_to_unknown_state(placeholder: str, line: int, what: str) -> None:
    found = problems(refs_flow(**{placeholder: "nowhere"}))
    assert (line, f"{what} 'nowhere' is not a state") in found


def test_unreachable_state() -> None:
    assert problems(
        """
        start: a
        states:
          a: {say: "bye", hangup: true}
          orphan: {say: "never", hangup: true}
        """
    ) == [(4, "state 'orphan' is unreachable from start 'a'")]


def test_fallback_and_on_fail_make_states_reachable() -> None:
    # `agent` is reached only as the menu's fallback, `vm` only as on_fail.
    assert (
        problems(
            """
        start: menu
        defaults: {fallback: agent}
        states:
          menu:
            intents: {bye: {dtmf: "9", next: done}}
          agent:
            transfer: {to: "sip:desk@pbx.example.com", on_fail: vm}
          vm:
            voicemail: {next: done}
          done: {hangup: true}
        """
        )
        == []
    )


def test_default_fallback_does_not_reach_from_states_that_never_fall_back() -> None:
    found = problems(
        """
        start: a
        defaults: {fallback: agent}
        states:
          a: {say: "bye", hangup: true}
          agent: {transfer: {to: "+14155550100"}}
        """
    )
    assert found == [(5, "state 'agent' is unreachable from start 'a'")]


# --- what a state does -------------------------------------------------------------------------


def test_state_doing_more_than_one_thing() -> None:
    assert only(
        """
        start: a
        states:
          a:
            intents: {go: {phrases: [go], next: b}}
            next: b
          b: {hangup: true}
        """
    ) == (3, "state 'a' has intents and next: a state does only one of "
             "intents, collect, transfer, conference, voicemail, hangup, next")  # fmt: skip


def test_dead_end_state() -> None:
    line, message = only(
        """
        start: a
        states:
          a:
            say: "Hello?"
        """
    )
    assert line == 3
    assert message.startswith("state 'a' is a dead end")


def test_hangup_false_is_no_hangup() -> None:
    line, message = only("start: a\nstates:\n  a: {say: hi, hangup: false}\n")
    assert (line, message.split(" (")[0]) == (3, "state 'a' is a dead end")


def test_silent_next_loop() -> None:
    found = problems(
        """
        start: a
        states:
          a: {next: b}
          b: {next: a}
        """
    )
    assert found == [(3, "states a → b → a loop through next without saying anything")]


def test_next_loop_with_a_prompt_is_allowed() -> None:
    assert problems("start: a\nstates:\n  a: {say: hold on, next: b}\n  b: {next: a}\n") == []


@pytest.mark.parametrize(
    "to", ["+14155550100", "+4930123456", "sip:agent@pbx.example.com", "sip:1001@10.0.0.1:5060"]
)
def test_transfer_to_accepts_e164_and_sip(to: str) -> None:
    assert problems(f'start: a\nstates:\n  a: {{transfer: {{to: "{to}"}}}}\n') == []


@pytest.mark.parametrize(
    "to",
    ["14155550100", "+0123", "+1 415 555 0100", "+١٤١٥٥٥٥٠١٠٠", "sip:pbx.example.com", "tel:+1415"],
)
def test_transfer_to_rejects_other_addresses(to: str) -> None:
    line, message = only(f'start: a\nstates:\n  a:\n    transfer: {{to: "{to}"}}\n')
    assert line == 4
    assert message == (
        "to of transfer in state 'a' must be an E.164 number (+14155550100) "
        f"or a sip: URI (sip:user@host), not '{to}'"
    )


def test_transfer_to_with_a_trailing_newline_is_rejected() -> None:
    assert only('start: a\nstates:\n  a:\n    transfer: {to: "+14155550100\\n"}\n')[0] == 4


# --- keys and types ----------------------------------------------------------------------------------

KEYS = """
start: menu
defaults: {no_input_s: 5, TOP_DEFAULTS: 1}
TOP_LEVEL: 1
states:
  menu:
    STATE: 1
    say: "Hi"
    intents:
      go: {phrases: [go], next: ask, INTENT: 1}
      agent: {dtmf: "0", next: agent}
      room: {dtmf: "1", next: room}
  ask:
    collect: {slot: pin, digits: 4, next: vm, COLLECT: 1}
  agent:
    transfer: {to: "+14155550100", TRANSFER: 1}
  room:
    conference: {room: "r-{call_sid}", CONFERENCE: 1}
  vm:
    voicemail: {max_s: 30, VOICEMAIL: 1}
"""


@pytest.mark.parametrize(
    ("key", "line", "where"),
    [
        ("TOP_LEVEL", 3, "at the top level"),
        ("TOP_DEFAULTS", 2, "in defaults"),
        ("STATE", 6, "in state 'menu'"),
        ("INTENT", 9, "in intent 'go' in state 'menu'"),
        ("COLLECT", 13, "in collect in state 'ask'"),
        ("TRANSFER", 15, "in transfer in state 'agent'"),
        ("CONFERENCE", 17, "in conference in state 'room'"),
        ("VOICEMAIL", 19, "in voicemail in state 'vm'"),
    ],
)
def test_unknown_key(key: str, line: int, where: str) -> None:
    text = KEYS
    for other in (
        "TOP_LEVEL",
        "TOP_DEFAULTS",
        "STATE",
        "INTENT",
        "COLLECT",
        "TRANSFER",
        "CONFERENCE",
        "VOICEMAIL",
    ):
        text = text.replace(other, "typo_key" if other == key else f"{other.lower()}_ok")
    found = [(n, m) for n, m in problems(text) if "typo_key" in m]
    assert found == [(line, f"unknown key 'typo_key' {where}")]


def test_unknown_key_suggests_the_known_one() -> None:
    assert (4, "unknown key 'intens' in state 'a' (did you mean 'intents'?)") in problems(
        """
        start: a
        states:
          a:
            intens: {go: {phrases: [go], next: a}}
        """
    )


INTENT_TYPES = """
start: a
states:
  a:
    no_input_s: NO_INPUT_S
    max_retries: MAX_RETRIES
    barge_in: BARGE_IN
    intents:
      go: {phrases: PHRASES, dtmf: DTMF, next: b}
  b:
    collect: {slot: SLOT, digits: DIGITS, finish_on_key: FINISH, sensitive: SENSITIVE, next: c}
  c:
    transfer: {to: "+14155550100", timeout_s: TIMEOUT_S, record: RECORD}
"""
GOOD_VALUES = {
    "NO_INPUT_S": "4.5",
    "MAX_RETRIES": "0",
    "BARGE_IN": "false",
    "PHRASES": "[go, let's go]",
    "DTMF": '"#"',
    "SLOT": "pin",
    "DIGITS": "4",
    "FINISH": '"*"',
    "SENSITIVE": "true",
    "TIMEOUT_S": "15",
    "RECORD": "yes",
}


def typed_flow(**override: str) -> str:
    text = INTENT_TYPES
    for placeholder, value in {**GOOD_VALUES, **override}.items():
        text = text.replace(placeholder, value)
    return text


def test_typed_flow_is_fine() -> None:
    flow = load_flow_text(typed_flow())
    a, b = flow.states["a"], flow.states["b"]
    assert (a.no_input_s, a.max_retries, a.barge_in) == (4.5, 0, False)
    assert a.intents[0].phrases == ("go", "let's go")
    assert b.collect == Collect("pin", 4, "*", True, "c")
    assert flow.states["c"].transfer == TransferSpec("+14155550100", 15, True, None)


@pytest.mark.parametrize(
    ("placeholder", "value", "line", "message"),
    [
        (
            "NO_INPUT_S",
            "0",
            4,
            "no_input_s in state 'a' must be a number of seconds above 0, not '0'",
        ),
        (
            "NO_INPUT_S",
            "6s",
            4,
            "no_input_s in state 'a' must be a number of seconds above 0, not '6s'",
        ),
        (
            "NO_INPUT_S",
            ".nan",
            4,
            "no_input_s in state 'a' must be a number of seconds above 0, not '.nan'",
        ),
        (
            "MAX_RETRIES",
            "-1",
            5,
            "max_retries in state 'a' must be a whole number, 0 or more, not '-1'",
        ),
        (
            "MAX_RETRIES",
            "1.5",
            5,
            "max_retries in state 'a' must be a whole number, 0 or more, not '1.5'",
        ),
        ("BARGE_IN", "maybe", 6, "barge_in in state 'a' must be true or false"),
        (
            "PHRASES",
            "go",
            8,
            "phrases of intent 'go' in state 'a' must be a list of phrases, "
            "like [billing, pay my bill]",
        ),
        (
            "PHRASES",
            "[go, [x]]",
            8,
            "a phrase in phrases of intent 'go' in state 'a' must be text, not a list",
        ),
        (
            "PHRASES",
            "[go, '!!']",
            8,
            "phrase '!!' in phrases of intent 'go' in state 'a' has no words",
        ),
        ("PHRASES", "[]", 8, "phrases of intent 'go' in state 'a' is empty"),
        (
            "DTMF",
            '"x"',
            8,
            "dtmf of intent 'go' in state 'a' must be one key, 0-9, * or # "
            "(quoted: \"#\"), not 'x'",
        ),
        (
            "DTMF",
            '"12"',
            8,
            "dtmf of intent 'go' in state 'a' must be one key, 0-9, * or # "
            "(quoted: \"#\"), not '12'",
        ),
        ("DTMF", "[1]", 8, "dtmf of intent 'go' in state 'a' must be text, not a list"),
        (
            "SLOT",
            "my pin",
            10,
            "slot of collect in state 'b' must be a name of letters, digits and _ "
            "(not 'my pin', and not call_sid)",
        ),
        (
            "SLOT",
            "call_sid",
            10,
            "slot of collect in state 'b' must be a name of letters, digits and _ "
            "(not 'call_sid', and not call_sid)",
        ),
        (
            "DIGITS",
            "six",
            10,
            "digits of collect in state 'b' must be a whole number above 0, not 'six'",
        ),
        (
            "DIGITS",
            "0",
            10,
            "digits of collect in state 'b' must be a whole number above 0, not '0'",
        ),
        (
            "DIGITS",
            "true",
            10,
            "digits of collect in state 'b' must be a whole number above 0, not 'true'",
        ),
        (
            "FINISH",
            '"5"',
            10,
            "finish_on_key of collect in state 'b' must be \"#\" or \"*\" (quoted), not '5'",
        ),
        ("SENSITIVE", '"yes"', 10, "sensitive in collect in state 'b' must be true or false"),
        (
            "TIMEOUT_S",
            "{s: 1}",
            12,
            "timeout_s of transfer in state 'c' must be a whole number above 0, not a mapping",
        ),
        ("RECORD", "1", 12, "record in transfer in state 'c' must be true or false"),
    ],
)
def test_wrong_type(placeholder: str, value: str, line: int, message: str) -> None:
    assert problems(typed_flow(**{placeholder: value})) == [(line, message)]


def test_unquoted_hash_in_block_style() -> None:
    assert (5, "finish_on_key of collect in state 'a' has no value") in problems(
        """
        start: a
        states:
          a:
            collect:
              finish_on_key: #
              slot: pin
              next: a
        """
    )


def test_yes_and_no_are_words_not_booleans() -> None:
    flow = load_flow_text(
        """\
start: confirm
states:
  confirm:
    intents:
      yes: {phrases: [yes, yeah], next: no}
      no: {phrases: [no, nope], next: no}
  no: {hangup: true}
"""
    )
    assert [i.name for i in flow.states["confirm"].intents] == ["yes", "no"]
    assert flow.states["confirm"].intents[0].phrases == ("yes", "yeah")
    assert list(flow.states) == ["confirm", "no"]


def test_duplicate_dtmf_keys_in_a_state() -> None:
    assert only(
        """
        start: a
        states:
          a:
            intents:
              one: {dtmf: "1", next: a}
              also_one: {dtmf: "1", next: a}
        """
    ) == (6, "dtmf '1' of intent 'also_one' in state 'a' is already the key of intent 'one'")


def test_duplicate_phrase_in_two_intents() -> None:
    assert only(
        """
        start: a
        states:
          a:
            intents:
              pay: {phrases: [Pay bill], next: a}
              bill: {phrases: [bill, "pay, bill"], next: a}
        """
    ) == (6, "phrase 'pay, bill' of intent 'bill' in state 'a' is already a phrase of intent 'pay'")


def test_intent_needs_phrases_or_dtmf_and_next() -> None:
    assert problems(
        """
        start: a
        states:
          a:
            intents:
              mute: {}
        """
    ) == [
        (5, "intent 'mute' in state 'a' can never match: give it phrases, dtmf or both"),
        (5, "missing next of intent 'mute' in state 'a'"),
    ]


def test_collect_needs_digits_or_finish_on_key() -> None:
    assert only(
        """
        start: a
        states:
          a:
            collect: {slot: pin, next: a}
        """
    ) == (4, "collect in state 'a' needs digits, finish_on_key or both, "
             "else it cannot tell when the caller is done")  # fmt: skip


def test_slot_sensitivity_must_agree() -> None:
    assert only(
        """
        start: a
        states:
          a:
            collect: {slot: pin, digits: 4, sensitive: true, next: b}
          b:
            collect: {slot: pin, digits: 4, next: a}
        """
    ) == (6, "slot 'pin' is not sensitive in collect in state 'b' but sensitive in state 'a'")


def test_conference_room_may_only_use_call_sid() -> None:
    assert only('start: a\nstates:\n  a:\n    conference: {room: "r-{call_sid}-{account}"}\n') == (
        4,
        "room of conference in state 'a' may use only {call_sid}, not {account}",
    )


# --- placeholders ----------------------------------------------------------------------------------

PLACEHOLDERS = """
start: a
states:
  a:
    say: "Call {call_sid}."
    collect: {slot: account, digits: 6, next: b}
  b:
    say: "SAY"
    no_match: "Sorry."
    intents: {ok: {phrases: [ok], next: c}}
  c: {hangup: true}
"""


def test_placeholders_naming_collected_slots_are_fine() -> None:
    assert problems(PLACEHOLDERS.replace("SAY", "Account {account}, call {call_sid}.")) == []


def test_placeholder_naming_no_collected_slot() -> None:
    assert problems(PLACEHOLDERS.replace("SAY", "Account {acount}.")) == [
        (7, "say in state 'b' uses {acount} but no state collects a slot 'acount' "
            "(did you mean 'account'?)"),
    ]  # fmt: skip


def test_placeholders_are_checked_in_reprompts_too() -> None:
    text = PLACEHOLDERS.replace("SAY", "Hi.").replace('"Sorry."', '"Sorry {name}."')
    assert problems(text) == [
        (8, "no_match in state 'b' uses {name} but no state collects a slot 'name'")
    ]


def test_malformed_placeholder() -> None:
    assert problems(PLACEHOLDERS.replace("SAY", "Press {1}.")) == [
        (
            7,
            "say in state 'b' has a malformed placeholder {1} (placeholders are {call_sid} or {slot_name})",
        ),
    ]


# --- duplicate keys and other YAML traps ------------------------------------------------------------


def test_duplicate_keys_are_reported_at_the_second() -> None:
    found = problems(
        """
        start: a
        start: b
        states:
          a: {say: "one", hangup: true}
          b:
            say: "two"
            say: "again"
            hangup: true
          a: {say: "three", hangup: true}
        """
    )
    assert (
        2,
        "duplicate key 'start' in the flow (first at line 1; YAML would keep only this one)",
    ) in found
    assert (
        7,
        "duplicate key 'say' in state 'b' (first at line 6; YAML would keep only this one)",
    ) in found
    assert (
        9,
        "duplicate key 'a' in states (first at line 4; YAML would keep only this one)",
    ) in found


def test_merge_keys_are_refused() -> None:
    found = problems(
        """
        start: a
        states:
          a:
            <<: {say: "hi"}
            hangup: true
        """
    )
    assert found == [(4, "merge keys (<<) are not supported in state 'a': write the keys out")]


def test_all_problems_are_reported_in_line_order() -> None:
    found = problems(
        """
        start: menu
        states:
          menu:
            say: "Hi {who}"
            intens: {}
            intents:
              a: {dtmf: "1", next: nowhere}
              b: {dtmf: "1", next: menu}
          spare:
            transfer: {to: "555"}
        """
    )
    assert [line for line, _ in found] == [4, 5, 7, 8, 9, 10]
    assert len(found) == 6
