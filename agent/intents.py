"""Matching what the caller said or pressed against a state's intents.

Pure text functions shared by the flow checker (is a phrase usable?) and the
dialog engine (which intent did the caller mean?).

Speech matches by whole words: the transcript and every phrase are lowered,
apostrophes dropped ("don't" = "dont") and split on anything that is not a
letter or a digit. A phrase matches where its words occur contiguously in the
transcript. When several intents match, the phrase that starts earliest in the
transcript wins; on a tie the phrase with more words; then the intent declared
first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Spoken digit words accepted while collecting digits ("oh" as in "four oh one").
DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}

# What a collecting state asks speech recognition to listen for.
DIGIT_PHRASES: tuple[str, ...] = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero", "oh",
)  # fmt: skip

_APOSTROPHES = re.compile(r"['\u2019]")
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> tuple[str, ...]:
    """The words of `text`, case-folded, punctuation ignored."""
    return tuple(_WORD.findall(_APOSTROPHES.sub("", text.casefold())))


def find_phrase(haystack: Sequence[str], phrase: Sequence[str]) -> int | None:
    """Index of the first contiguous occurrence of `phrase` in `haystack`."""
    n = len(phrase)
    if n == 0:
        return None
    for i in range(len(haystack) - n + 1):
        if haystack[i] == phrase[0] and tuple(haystack[i : i + n]) == tuple(phrase):
            return i
    return None


def spoken_digits(text: str) -> str:
    """The digits in a transcript, in order: digit words and numerals
    ("one two 3 oh" → "1230"); other words are ignored."""
    out: list[str] = []
    for word in words(text):
        if word in DIGIT_WORDS:
            out.append(DIGIT_WORDS[word])
        elif word.isascii() and word.isdigit():
            out.append(word)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Candidate:
    intent: str
    phrase: tuple[str, ...]
    order: int


class IntentMatcher:
    """Finds the intent a transcript or a DTMF key selects in one state."""

    def __init__(self, intents: Iterable[tuple[str, Sequence[str], str | None]]) -> None:
        """`intents`: (name, phrases, dtmf key or None), in declaration order."""
        self._candidates: list[_Candidate] = []
        self._dtmf: dict[str, str] = {}
        for order, (name, phrases, dtmf) in enumerate(intents):
            for phrase in phrases:
                phrase_words = words(phrase)
                if phrase_words:
                    self._candidates.append(_Candidate(name, phrase_words, order))
            if dtmf is not None:
                self._dtmf.setdefault(dtmf, name)

    def match_speech(self, transcript: str) -> str | None:
        """The name of the intent `transcript` selects, or None."""
        heard = words(transcript)
        best: tuple[int, int, int] | None = None
        best_name: str | None = None
        for candidate in self._candidates:
            at = find_phrase(heard, candidate.phrase)
            if at is None:
                continue
            rank = (at, -len(candidate.phrase), candidate.order)
            if best is None or rank < best:
                best, best_name = rank, candidate.intent
        return best_name

    def match_dtmf(self, key: str) -> str | None:
        """The name of the intent bound to DTMF `key`, or None."""
        return self._dtmf.get(key)
