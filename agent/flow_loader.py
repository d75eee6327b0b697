"""Read and check a flow file into `agent.flow` dataclasses.

Loading walks PyYAML's node tree (`yaml.compose`) rather than the constructed
dict, so that every problem names the line of the node at fault and duplicate
keys, which PyYAML would silently collapse, are caught. All problems are
collected, not just the first.

Text fields (names, `say`, phrases, `next`, …) take a plain scalar as written:
`phrases: [yes, no]` means the words, not YAML 1.1 booleans. Numbers and
booleans must be real YAML numbers and booleans. A `null` value is a problem,
not a default (`finish_on_key: #` is a comment, hence null: quote the "#").

This module does no I/O except reading the flow file.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TextIO, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.flow import (
    CALL_SID,
    DEFAULT_LANGUAGE,
    DEFAULT_VOICE,
    E164,
    SIP_URI,
    Collect,
    ConferenceSpec,
    Defaults,
    Flow,
    FlowError,
    Intent,
    Problem,
    State,
    TransferSpec,
    VoicemailSpec,
)
from agent.flow_graph import silent_loops, unreachable
from agent.intents import words

_DTMF_KEY = re.compile(r"[0-9*#]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- public entry points --------------------------------------------------------


def load_flow(path: str | os.PathLike[str]) -> Flow:
    """Read and check a flow file. Raises FlowError with every problem found,
    OSError if the file cannot be read."""
    flow, problems = _parse(_read(path), os.fspath(path))
    if problems or flow is None:
        raise FlowError(problems)
    return flow


def check_flow(path: str | os.PathLike[str]) -> list[Problem]:
    """The problems of a flow file, sorted by line; empty when it is fine.
    Raises OSError if the file cannot be read."""
    return _parse(_read(path), os.fspath(path))[1]


def load_flow_text(text: str, file: str = "<flow>") -> Flow:
    """`load_flow` for YAML already in memory; `file` names it in problems."""
    flow, problems = _parse(text, file)
    if problems or flow is None:
        raise FlowError(problems)
    return flow


def check_flow_text(text: str, file: str = "<flow>") -> list[Problem]:
    """`check_flow` for YAML already in memory."""
    return _parse(text, file)[1]


def flow_check_command(path: str, out: TextIO | None = None) -> int:
    """`callstream flow check FILE`: print problems as `file:line: message`
    and a summary line. Exit code 0 when fine, 1 with problems, 2 when the file
    cannot be read."""
    out = out or sys.stdout
    try:
        data = _read(path)
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror or e}", file=out)
        return 2
    flow, problems = _parse(data, path)
    for problem in problems:
        print(problem, file=out)
    if problems or flow is None:
        n = len(problems)
        print(f"{path}: {n} problem{'s' if n != 1 else ''}", file=out)
        return 1
    n = len(flow.states)
    print(f"{path}: ok ({n} state{'s' if n != 1 else ''})", file=out)
    return 0


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _parse(data: bytes | str, file: str) -> tuple[Flow | None, list[Problem]]:
    """The flow (None if there are problems) and the problems, sorted by line."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            return None, [Problem(file, line, "not UTF-8 text")]
    else:
        text = data
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = "; ".join(part for part in (e.context, e.problem) if part)
        return None, [Problem(file, mark.line + 1 if mark else 1, f"YAML syntax error: {reason}")]
    except yaml.reader.ReaderError as e:  # a control character: no mark, a position
        line = text.count("\n", 0, e.position) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return None, [Problem(file, line, f"character U+{code:04X} is not allowed in YAML")]
    reader = _Reader(file)
    flow = reader.read_flow(root)
    problems = sorted(reader.problems, key=lambda p: p.line)
    return (None if problems else flow), problems


# --- reading the node tree --------------------------------------------------------

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"

_TOP_KEYS = ("flow", "voice", "language", "start", "defaults", "states")
_DEFAULT_KEYS = ("no_input_s", "max_retries", "fallback", "barge_in")
_KINDS = ("intents", "collect", "transfer", "conference", "voicemail", "hangup", "next")
_STATE_KEYS = ("say", *_KINDS, "no_match", "no_input", *_DEFAULT_KEYS)
_INTENT_KEYS = ("phrases", "dtmf", "next")
_COLLECT_KEYS = ("slot", "digits", "finish_on_key", "sensitive", "next")
_TRANSFER_KEYS = ("to", "timeout_s", "record", "on_fail")
_CONFERENCE_KEYS = ("room", "record")
_VOICEMAIL_KEYS = ("max_s", "next")

_Entries = dict[str, tuple[Node, Node]]  # key -> (key node, value node)
_T = TypeVar("_T")
_Read = Callable[[Node, str], _T | None]  # reads a value node, reports problems, None if bad


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Reader:
    """Turns a composed YAML document into a Flow, collecting problems.

    Reading is done per node with the context in hand; what needs the whole
    flow (references, reachability, placeholders) is checked at the end from
    what was recorded on the way.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._refs: list[tuple[str, Node, str]] = []  # (state name, node, what refers)
        self._templates: list[tuple[str, Node, str]] = []  # (text, node, whose text)
        self._slots: dict[str, tuple[bool, str]] = {}  # slot -> (sensitive, "state 'x'")
        self._constructor = yaml.constructor.SafeConstructor()

    def report(self, node: Node, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), message))

    # -- the document

    def read_flow(self, root: Node | None) -> Flow | None:
        if root is None:
            self.problems.append(
                Problem(self.file, 1, "the file is empty: a flow needs start and states")
            )
            return None
        top = self.mapping(root, "the flow")
        if top is None:
            return None
        self.known(top, _TOP_KEYS, "at the top level")
        stem = os.path.splitext(os.path.basename(self.file))[0]
        name = self.opt(top, "flow", self.text, "flow") or stem
        voice = self.opt(top, "voice", self.text, "voice") or DEFAULT_VOICE
        language = self.opt(top, "language", self.text, "language") or DEFAULT_LANGUAGE
        defaults = self.read_defaults(top)

        states: dict[str, State] = {}
        if "states" not in top:
            self.report(root, "missing 'states'")
        else:
            key_node, node = top["states"]
            entries = self.mapping(node, "states")
            if entries == {}:
                self.report(key_node, "'states' is empty")
            for state_name, (k, v) in (entries or {}).items():
                states[state_name] = self.read_state(state_name, k, v)

        start = ""
        if "start" not in top:
            self.report(root, "missing 'start': name the state calls begin in")
        else:
            start = self.ref(top["start"][1], "start") or ""

        self.check_refs(states)
        if start in states:
            self.problems += [
                Problem(self.file, line, m) for line, m in unreachable(start, states, defaults)
            ]
        self.problems += [Problem(self.file, line, m) for line, m in silent_loops(states)]
        self.check_templates()
        return Flow(name, voice, language, start, defaults, MappingProxyType(states), self.file)

    def read_defaults(self, top: _Entries) -> Defaults:
        if "defaults" not in top:
            return Defaults()
        entries = self.mapping(top["defaults"][1], "defaults")
        if entries is None:
            return Defaults()
        self.known(entries, _DEFAULT_KEYS, "in defaults")
        base = Defaults()
        no_input_s = self.opt(entries, "no_input_s", self.seconds, "no_input_s in defaults")
        max_retries = self.opt(entries, "max_retries", self.count, "max_retries in defaults")
        barge_in = self.opt(entries, "barge_in", self.boolean, "barge_in in defaults")
        return Defaults(
            no_input_s=base.no_input_s if no_input_s is None else no_input_s,
            max_retries=base.max_retries if max_retries is None else max_retries,
            fallback=self.opt(entries, "fallback", self.ref, "fallback in defaults"),
            barge_in=base.barge_in if barge_in is None else barge_in,
        )

    def read_state(self, name: str, key_node: Node, node: Node) -> State:
        what = f"state '{name}'"
        entries = self.mapping(node, what)
        if entries is None:
            return State(name, _line(key_node))
        self.known(entries, _STATE_KEYS, f"in {what}")
        say = self.opt(entries, "say", self.template, f"say in {what}")
        no_match = self.opt(entries, "no_match", self.template, f"no_match in {what}")
        no_input = self.opt(entries, "no_input", self.template, f"no_input in {what}")
        hangup = self.opt(entries, "hangup", self.boolean, f"hangup in {what}") or False
        kinds = [k for k in _KINDS if k in entries and (k != "hangup" or hangup)]
        if len(kinds) > 1:
            self.report(
                key_node,
                f"{what} has {' and '.join(kinds)}: a state does only one of "
                "intents, collect, transfer, conference, voicemail, hangup, next",
            )
        elif not kinds:
            self.report(
                key_node,
                f"{what} is a dead end (the call would wait forever): give it "
                "intents, collect, transfer, conference, voicemail, hangup: true or next",
            )
        return State(
            name=name,
            line=_line(key_node),
            say=say,
            intents=self.opt(entries, "intents", self.read_intents, what) or (),
            no_match=no_match,
            no_input=no_input,
            collect=self.opt(entries, "collect", self.read_collect, what),
            transfer=self.opt(entries, "transfer", self.read_transfer, what),
            conference=self.opt(entries, "conference", self.read_conference, what),
            voicemail=self.opt(entries, "voicemail", self.read_voicemail, what),
            hangup=hangup,
            next=self.opt(entries, "next", self.ref, f"next of {what}"),
            no_input_s=self.opt(entries, "no_input_s", self.seconds, f"no_input_s in {what}"),
            max_retries=self.opt(entries, "max_retries", self.count, f"max_retries in {what}"),
            fallback=self.opt(entries, "fallback", self.ref, f"fallback of {what}"),
            barge_in=self.opt(entries, "barge_in", self.boolean, f"barge_in in {what}"),
        )

    def read_intents(self, node: Node, owner: str) -> tuple[Intent, ...]:
        entries = self.mapping(node, f"intents of {owner}")
        if entries == {}:
            self.report(node, f"intents of {owner} is empty")
        intents: list[Intent] = []
        by_key: dict[str, str] = {}
        by_phrase: dict[tuple[str, ...], str] = {}
        for name, (key_node, value) in (entries or {}).items():
            what = f"intent '{name}' in {owner}"
            fields = self.mapping(value, what)
            if fields is None:
                continue
            self.known(fields, _INTENT_KEYS, f"in {what}")
            phrases = self.opt(fields, "phrases", self.phrases, f"phrases of {what}") or ()
            for phrase in phrases:
                other = by_phrase.setdefault(words(phrase), name)
                if other != name:
                    self.report(
                        fields["phrases"][1],
                        f"phrase '{phrase}' of {what} is already a phrase of intent '{other}'",
                    )
            dtmf = self.opt(fields, "dtmf", self.key, f"dtmf of {what}")
            if dtmf is not None:
                other = by_key.setdefault(dtmf, name)
                if other != name:
                    self.report(
                        fields["dtmf"][1],
                        f"dtmf '{dtmf}' of {what} is already the key of intent '{other}'",
                    )
            if "phrases" not in fields and "dtmf" not in fields:
                self.report(key_node, f"{what} can never match: give it phrases, dtmf or both")
            target = self.required(fields, key_node, "next", self.ref, f"next of {what}")
            intents.append(Intent(name, phrases, dtmf, target or ""))
        return tuple(intents)

    def read_collect(self, node: Node, owner: str) -> Collect | None:
        what = f"collect in {owner}"
        fields = self.mapping(node, what)
        if fields is None:
            return None
        self.known(fields, _COLLECT_KEYS, f"in {what}")
        slot = self.required(fields, node, "slot", self.slot, f"slot of {what}") or ""
        digits = self.opt(fields, "digits", self.positive, f"digits of {what}")
        finish = self.opt(fields, "finish_on_key", self.finish_key, f"finish_on_key of {what}")
        sensitive = self.opt(fields, "sensitive", self.boolean, f"sensitive in {what}") or False
        target = self.required(fields, node, "next", self.ref, f"next of {what}") or ""
        if "digits" not in fields and "finish_on_key" not in fields:
            self.report(
                node,
                f"{what} needs digits, finish_on_key or both, "
                "else it cannot tell when the caller is done",
            )
        if slot:
            earlier = self._slots.setdefault(slot, (sensitive, owner))
            if earlier[0] != sensitive:
                self.report(
                    fields["sensitive"][1] if "sensitive" in fields else node,
                    f"slot '{slot}' is {'' if sensitive else 'not '}sensitive in {what} "
                    f"but {'' if earlier[0] else 'not '}sensitive in {earlier[1]}",
                )
        return Collect(slot, digits, finish, sensitive, target)

    def read_transfer(self, node: Node, owner: str) -> TransferSpec | None:
        what = f"transfer in {owner}"
        fields = self.mapping(node, what)
        if fields is None:
            return None
        self.known(fields, _TRANSFER_KEYS, f"in {what}")
        to = self.required(fields, node, "to", self.text, f"to of {what}") or ""
        if to and not (E164.fullmatch(to) or SIP_URI.fullmatch(to)):
            self.report(
                fields["to"][1],
                f"to of {what} must be an E.164 number "
                f"(+14155550100) or a sip: URI (sip:user@host), not '{to}'",
            )
        timeout_s = self.opt(fields, "timeout_s", self.positive, f"timeout_s of {what}")
        return TransferSpec(
            to=to,
            timeout_s=30 if timeout_s is None else timeout_s,
            record=self.opt(fields, "record", self.boolean, f"record in {what}") or False,
            on_fail=self.opt(fields, "on_fail", self.ref, f"on_fail of {what}"),
        )

    def read_conference(self, node: Node, owner: str) -> ConferenceSpec | None:
        what = f"conference in {owner}"
        fields = self.mapping(node, what)
        if fields is None:
            return None
        self.known(fields, _CONFERENCE_KEYS, f"in {what}")
        room = self.required(fields, node, "room", self.text, f"room of {what}") or ""
        for placeholder in _PLACEHOLDER.findall(room):
            if placeholder != CALL_SID:
                self.report(
                    fields["room"][1],
                    f"room of {what} may use only {{{CALL_SID}}}, not {{{placeholder}}}",
                )
        record = self.opt(fields, "record", self.boolean, f"record in {what}") or False
        return ConferenceSpec(room, record)

    def read_voicemail(self, node: Node, owner: str) -> VoicemailSpec | None:
        what = f"voicemail in {owner}"
        fields = self.mapping(node, what)
        if fields is None:
            return None
        self.known(fields, _VOICEMAIL_KEYS, f"in {what}")
        max_s = self.opt(fields, "max_s", self.positive, f"max_s of {what}")
        return VoicemailSpec(
            max_s=120 if max_s is None else max_s,
            next=self.opt(fields, "next", self.ref, f"next of {what}"),
        )

    # -- whole-flow checks

    def check_refs(self, states: Mapping[str, State]) -> None:
        for target, node, what in self._refs:
            if target not in states:
                self.report(node, f"{what} '{target}' is not a state{_suggest(target, states)}")

    def check_templates(self) -> None:
        for text, node, what in self._templates:
            for placeholder in _PLACEHOLDER.findall(text):
                if not _IDENTIFIER.fullmatch(placeholder):
                    self.report(
                        node,
                        f"{what} has a malformed placeholder {{{placeholder}}} "
                        "(placeholders are {call_sid} or {slot_name})",
                    )
                elif placeholder != CALL_SID and placeholder not in self._slots:
                    self.report(
                        node,
                        f"{what} uses {{{placeholder}}} but no state collects a slot "
                        f"'{placeholder}'{_suggest(placeholder, [*self._slots, CALL_SID])}",
                    )

    # -- node helpers: each reports what is wrong and returns None

    def mapping(self, node: Node, what: str) -> _Entries | None:
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping of keys to values")
            return None
        entries: _Entries = {}
        for key_node, value in node.value:
            if key_node.tag == _MERGE:
                self.report(
                    key_node, f"merge keys (<<) are not supported in {what}: write the keys out"
                )
            elif not isinstance(key_node, ScalarNode):
                self.report(key_node, f"keys in {what} must be plain names")
            elif key_node.value in entries:
                first = _line(entries[key_node.value][0])
                self.report(
                    key_node,
                    f"duplicate key '{key_node.value}' in {what} "
                    f"(first at line {first}; YAML would keep only this one)",
                )
            else:
                entries[key_node.value] = (key_node, value)
        return entries

    def known(self, entries: _Entries, allowed: tuple[str, ...], where: str) -> None:
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                self.report(key_node, f"unknown key '{key}' {where}{_suggest(key, allowed)}")

    def opt(self, entries: _Entries, key: str, read: _Read[_T], what: str) -> _T | None:
        """`read(value node, what)` if `key` is present, else None."""
        return read(entries[key][1], what) if key in entries else None

    def required(
        self, entries: _Entries, parent: Node, key: str, read: _Read[_T], what: str
    ) -> _T | None:
        if key not in entries:
            self.report(parent, f"missing {what}")
            return None
        return read(entries[key][1], what)

    def text(self, node: Node, what: str) -> str | None:
        if isinstance(node, MappingNode | SequenceNode):
            kind = "mapping" if isinstance(node, MappingNode) else "list"
            self.report(node, f"{what} must be text, not a {kind}")
            return None
        if node.tag == _NULL:
            self.report(node, f"{what} has no value")
            return None
        if not str(node.value).strip():
            self.report(node, f"{what} is empty")
            return None
        return str(node.value)

    def template(self, node: Node, what: str) -> str | None:
        text = self.text(node, what)
        if text is not None:
            self._templates.append((text, node, what))
        return text

    def ref(self, node: Node, what: str) -> str | None:
        name = self.text(node, what)
        if name is not None:
            self._refs.append((name, node, what))
        return name

    def slot(self, node: Node, what: str) -> str | None:
        name = self.text(node, what)
        if name is None:
            return None
        if not _IDENTIFIER.fullmatch(name) or name == CALL_SID:
            self.report(
                node,
                f"{what} must be a name of letters, digits and _ (not '{name}', "
                f"and not {CALL_SID})",
            )
            return None
        return name

    def phrases(self, node: Node, what: str) -> tuple[str, ...] | None:
        if not isinstance(node, SequenceNode):
            self.report(node, f"{what} must be a list of phrases, like [billing, pay my bill]")
            return None
        if not node.value:
            self.report(node, f"{what} is empty")
        out: list[str] = []
        for item in node.value:
            phrase = self.text(item, f"a phrase in {what}")
            if phrase is not None and not words(phrase):
                self.report(item, f"phrase '{phrase}' in {what} has no words")
            elif phrase is not None:
                out.append(phrase)
        return tuple(out)

    def key(self, node: Node, what: str) -> str | None:
        key = self.text(node, what)
        if key is not None and not _DTMF_KEY.fullmatch(key):
            self.report(node, f"{what} must be one key, 0-9, * or # (quoted: \"#\"), not '{key}'")
            return None
        return key

    def finish_key(self, node: Node, what: str) -> str | None:
        key = self.text(node, what)
        if key is not None and key not in ("#", "*"):
            self.report(node, f'{what} must be "#" or "*" (quoted), not \'{key}\'')
            return None
        return key

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return bool(self._constructor.construct_object(node))
        self.report(node, f"{what} must be true or false")
        return None

    def _number(self, node: Node) -> float | int | None:
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
            value = self._constructor.construct_object(node)
            if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
                return value
        return None

    def positive(self, node: Node, what: str) -> int | None:
        value = self._number(node)
        if isinstance(value, int) and value > 0:
            return value
        self.report(node, f"{what} must be a whole number above 0, not {_shown(node)}")
        return None

    def count(self, node: Node, what: str) -> int | None:
        value = self._number(node)
        if isinstance(value, int) and value >= 0:
            return value
        self.report(node, f"{what} must be a whole number, 0 or more, not {_shown(node)}")
        return None

    def seconds(self, node: Node, what: str) -> float | None:
        value = self._number(node)
        if value is not None and value > 0:
            return float(value)
        self.report(node, f"{what} must be a number of seconds above 0, not {_shown(node)}")
        return None


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return f"'{node.value}'"
    return "a mapping" if isinstance(node, MappingNode) else "a list"
