"""Grammars for the offline recognizer, and how its results are judged. Pure: no I/O.

Theory of operation. The state's phrases ("billing", "technical support", …)
become a finite-state grammar that can also spend the audio on *garbage*: a
loop of common English words, each taken at a fixed penalty. Speech that is a
keyword costs nothing extra, so the keyword wins; speech that is something
else ("I want to order a pizza") is cheaper as garbage than forced onto a
keyword. The result is accepted only if keywords (plus, in the second pass,
the carrier words of a request such as "I need", "please") cover most of the
speech frames; otherwise the turn's text is empty and the dialog engine says
"Sorry, I didn't catch that". Two passes, measured in docs/offline-speech.md:

1. keywords + garbage at a high penalty, keywords must cover ≥ 60 % of the
   speech: single keywords and short phrases;
2. only if (1) found nothing: keywords + carrier words + garbage at a lower
   penalty, keyword and carrier words must cover ≥ 80 %: "agent please",
   "can I speak to an operator".

A state whose phrases are all digit words ("one" … "nine", "zero", "oh")
gets a digit-loop grammar instead, and the digits come out as words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DIGIT_WORDS = {
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
}
_DIGIT_VOCAB = frozenset(DIGIT_WORDS.values()) | {"oh"}

CARRIER_WORDS: tuple[str, ...] = (
    *("please", "i", "need", "want", "to", "speak", "talk", "with"),
    *("a", "an", "the", "my", "help", "can", "like"),
)
"""Words that frame a request around a keyword; tolerated in pass 2."""

REPLY_WORDS: tuple[str, ...] = ("hello", "hi", "yes", "no", "yeah", "okay")
"""Whole-utterance answers that are not keywords; a cheap path of their own."""
REPLY_PENALTY = 20.0

GARBAGE_WORDS: tuple[str, ...] = (
    *("hello", "hi", "yes", "no", "yeah", "okay", "thanks", "and", "it", "is"),
    *("you", "we", "in", "what", "time", "order", "name", "hear", "me", "cancel"),
)
"""Other short, common words: they soak up speech that is not a keyword."""

# Penalties in nats per garbage word (not scaled by the LM weight); chosen by
# measurement, see docs/offline-speech.md.
PASS1_PENALTY = 80.0
PASS1_MIN_COVERAGE = 0.6
PASS2_PENALTY = 40.0
PASS2_MIN_COVERAGE = 0.8

_WORD = re.compile(r"[a-z']+|\d")


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """What to decode against: the normalised phrases, and the pass."""

    phrases: tuple[tuple[str, ...], ...]  # each phrase as dictionary words
    digits: bool = False

    @property
    def key(self) -> str:
        body = "|".join(" ".join(p) for p in self.phrases)
        return ("digits:" if self.digits else "kw:") + body


Transition = tuple[int, int, float] | tuple[int, int, float, str]


def normalize_phrases(
    phrases: Iterable[str], known: Callable[[str], bool]
) -> tuple[GrammarSpec | None, list[str]]:
    """Phrases → a `GrammarSpec` (None if nothing is recognisable), plus the
    phrases dropped because a word is not in the pronouncing dictionary."""
    kept: list[tuple[str, ...]] = []
    dropped: list[str] = []
    for phrase in phrases:
        words = tuple(DIGIT_WORDS.get(w, w) for w in _WORD.findall(phrase.lower()))
        if not words:
            continue
        if all(known(w) for w in words):
            if words not in kept:
                kept.append(words)
        else:
            dropped.append(phrase)
    if not kept:
        return None, dropped
    digits = all(len(p) == 1 and p[0] in _DIGIT_VOCAB for p in kept)
    return GrammarSpec(tuple(kept), digits), dropped


def digit_transitions(spec: GrammarSpec) -> tuple[int, int, list[Transition]]:
    """One or more digit words: start 0 → loop state 1 → final 2."""
    words = [p[0] for p in spec.phrases]
    t: list[Transition] = [(1, 2, 1.0)]
    for w in words:
        t.append((0, 1, 1.0 / len(words), w))
        t.append((1, 1, 1.0 / len(words), w))
    return 0, 2, t


def keyword_transitions(
    spec: GrammarSpec,
    garbage: Sequence[str],
    penalty: float,
    replies: Sequence[str] = (),
    reply_penalty: float = 0.0,
) -> tuple[int, int, list[Transition]]:
    """One keyword phrase, optionally preceded and followed by garbage words
    (each at `penalty` nats); or garbage alone; or one of `replies` alone (at
    `reply_penalty`)."""
    start, final, kw, after, pre, post = 0, 1, 2, 3, 4, 5
    cost = math.exp(-penalty)
    t: list[Transition] = [
        (start, kw, 1.0),
        (start, pre, 1.0),
        (pre, kw, 1.0),
        (pre, final, 1.0),
        (after, final, 1.0),
        (after, post, 1.0),
        (post, final, 1.0),
    ]
    for loop in (pre, post):
        t.extend((loop, loop, cost, w) for w in garbage)
    t.extend((start, final, math.exp(-reply_penalty), w) for w in replies)
    next_state = 6
    for phrase in spec.phrases:
        state = kw
        for i, word in enumerate(phrase):
            if i == len(phrase) - 1:
                dest = after
            else:
                dest, next_state = next_state, next_state + 1
            t.append((state, dest, 1.0, word))
            state = dest
    return start, final, t


@dataclass(frozen=True, slots=True)
class Segment:
    word: str  # as the decoder spells it, alternates like "the(2)" included
    start_frame: int
    end_frame: int


@dataclass(frozen=True, slots=True)
class Judgement:
    text: str  # keywords heard, in order; "" when rejected
    confidence: float  # share of speech frames explained by keywords (and carriers)
    speech_frames: int


def base_word(word: str) -> str:
    return word.split("(", 1)[0]


def is_filler(word: str) -> bool:
    return word.startswith("<") or word.startswith("[")


def judge(
    segments: Sequence[Segment],
    spec: GrammarSpec,
    *,
    tolerated: Iterable[str] = (),
    min_coverage: float,
) -> Judgement:
    """Accept the keywords in `segments` if they (with `tolerated` words) cover
    at least `min_coverage` of the speech frames; else reject with empty text."""
    keyword_words = {w for p in spec.phrases for w in p}
    ok_words = set(tolerated)
    speech = covered = 0
    heard: list[str] = []
    for seg in segments:
        word = base_word(seg.word)
        if is_filler(word):
            continue
        frames = seg.end_frame - seg.start_frame + 1
        speech += frames
        if word in keyword_words:
            covered += frames
            heard.append(word)
        elif word in ok_words:
            covered += frames
    coverage = covered / speech if speech else 0.0
    if not heard or coverage < min_coverage:
        return Judgement("", round(coverage, 3), speech)
    return Judgement(" ".join(heard), round(coverage, 3), speech)


def judge_digits(segments: Sequence[Segment]) -> Judgement:
    words = [base_word(s.word) for s in segments if not is_filler(base_word(s.word))]
    speech = sum(
        s.end_frame - s.start_frame + 1 for s in segments if not is_filler(base_word(s.word))
    )
    return Judgement(" ".join(words), 1.0 if words else 0.0, speech)
