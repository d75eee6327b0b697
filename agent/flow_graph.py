"""Whole-flow checks on the flow graph: what no single YAML node can tell.

Each returns `(line, message)` pairs; the loader turns them into Problems.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.flow import Defaults, State


def successors(state: State, defaults: Defaults) -> list[str]:
    """States a call can move to from `state`."""
    out = [intent.next for intent in state.intents]
    if state.collect is not None:
        out.append(state.collect.next)
    if state.next:
        out.append(state.next)
    if state.voicemail is not None and state.voicemail.next:
        out.append(state.voicemail.next)
    if state.transfer is not None and state.transfer.on_fail:
        out.append(state.transfer.on_fail)
    fallback = state.fallback or defaults.fallback
    if fallback and (state.listens or (state.transfer is not None and not state.transfer.on_fail)):
        out.append(fallback)
    return out


def unreachable(
    start: str, states: Mapping[str, State], defaults: Defaults
) -> list[tuple[int, str]]:
    seen = {start}
    todo = [start]
    while todo:
        for target in successors(states[todo.pop()], defaults):
            if target in states and target not in seen:
                seen.add(target)
                todo.append(target)
    return [
        (state.line, f"state '{state.name}' is unreachable from start '{start}'")
        for state in states.values()
        if state.name not in seen
    ]


def silent_loops(states: Mapping[str, State]) -> list[tuple[int, str]]:
    """Plain `next` states without `say` that lead back to themselves
    would spin forever without the caller hearing anything."""
    found: list[tuple[int, str]] = []
    reported: set[str] = set()
    for first in states.values():
        chain: list[str] = []
        state: State | None = first
        while state is not None and state.only_next and not state.say and state.name not in chain:
            chain.append(state.name)
            state = states.get(state.next or "")
        if state is not None and state.name == first.name and chain and first.name not in reported:
            reported.update(chain)
            found.append(
                (
                    first.line,
                    "states "
                    + " → ".join([*chain, first.name])
                    + " loop through next without saying anything",
                )
            )
    return found
