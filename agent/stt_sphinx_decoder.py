"""One pocketsphinx decoder and the grammars compiled into it: what a decoder
worker process (`agent/stt_sphinx_workers.py`) runs. Pure compute, no I/O
besides loading the model.

Each decode resets the decoder's feature state (`reinit_feat`) and decodes
the utterance in one piece (batch CMN), so the result depends only on the
audio and the phrases: any decoder gives the same answer, and replays are
deterministic whichever worker serves them. What the grammar accepts and
rejects is in `agent/sphinx_grammar.py`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.sphinx_grammar import (
    CARRIER_WORDS,
    GARBAGE_WORDS,
    PASS1_MIN_COVERAGE,
    PASS1_PENALTY,
    PASS2_MIN_COVERAGE,
    PASS2_PENALTY,
    REPLY_PENALTY,
    REPLY_WORDS,
    GrammarSpec,
    Judgement,
    Segment,
    Transition,
    digit_transitions,
    judge,
    judge_digits,
    keyword_transitions,
    normalize_phrases,
)
from media.resample import resample

log = logging.getLogger(__name__)

RATE = 8000

# A fixed low noise (±2 LSB) added before decoding: digital silence upsets
# the front end, and a fixed pattern keeps decoding deterministic.
_DITHER = np.random.default_rng(20240601).integers(-2, 3, size=RATE * 30).astype(np.int16)


class RecognizerInitError(RuntimeError):
    """The pocketsphinx model could not be loaded (a configuration problem)."""


def prepare_audio(pcm8k: npt.NDArray[np.int16]) -> bytes:
    """8 kHz telephone audio → the 16 kHz PCM the acoustic model expects."""
    n = len(pcm8k)
    reps = -(-n // len(_DITHER)) if n else 1
    dither = np.tile(_DITHER, reps)[:n]
    noisy = np.clip(pcm8k.astype(np.int32) + dither, -32768, 32767).astype(np.int16)
    return resample(noisy, RATE, 16000).tobytes()


class Recognizer:
    """One pocketsphinx Decoder and the grammars compiled into it.

    Not thread-safe: each decoder worker process owns one."""

    def __init__(self, model_dir: str | None = None, max_grammars: int = 32) -> None:
        import pocketsphinx

        base = model_dir or pocketsphinx.get_model_path()
        hmm = os.path.join(base, "en-us", "en-us")
        dictionary = os.path.join(base, "en-us", "cmudict-en-us.dict")
        if not os.path.isdir(hmm) or not os.path.isfile(dictionary):
            raise RecognizerInitError(f"no pocketsphinx en-us model under {base!r}")
        try:
            self._decoder: Any = pocketsphinx.Decoder(
                hmm=hmm, dict=dictionary, lm=None, loglevel="FATAL", seed=1
            )
        except (RuntimeError, ValueError) as exc:
            raise RecognizerInitError(f"pocketsphinx failed to load {base!r}: {exc}") from exc
        self._max_grammars = max_grammars
        self._searches: OrderedDict[str, str] = OrderedDict()  # grammar key → search name
        self._next_search = 0
        self._specs: dict[tuple[str, ...], GrammarSpec | None] = {}
        self._known: dict[str, bool] = {}
        self._garbage: dict[str, list[str]] = {}

    def knows(self, word: str) -> bool:
        if word not in self._known:
            self._known[word] = self._decoder.lookup_word(word) is not None
        return self._known[word]

    def spec_for(self, phrases: tuple[str, ...]) -> GrammarSpec | None:
        if phrases not in self._specs:
            spec, dropped = normalize_phrases(phrases, self.knows)
            if dropped:
                log.warning("sphinx: phrases with words not in the dictionary ignored: %s", dropped)
            if len(self._specs) > 256:
                self._specs.clear()
            self._specs[phrases] = spec
        return self._specs[phrases]

    def recognize(
        self, pcm8k: npt.NDArray[np.int16], phrases: tuple[str, ...], *, partial: bool
    ) -> Judgement:
        """Decode one utterance against the phrases. Partials run pass 1 only."""
        spec = self.spec_for(phrases)
        if spec is None or len(pcm8k) == 0:
            return Judgement("", 0.0, 0)
        audio = prepare_audio(pcm8k)
        if spec.digits:
            return judge_digits(self._decode(spec.key, lambda: digit_transitions(spec), audio))
        garbage = self._garbage_for(spec)
        replies = [w for w in REPLY_WORDS if w in garbage]

        def pass1() -> tuple[int, int, list[Transition]]:
            return keyword_transitions(spec, garbage, PASS1_PENALTY, replies, REPLY_PENALTY)

        def pass2() -> tuple[int, int, list[Transition]]:
            return keyword_transitions(spec, garbage, PASS2_PENALTY)

        first = judge(
            self._decode("p1:" + spec.key, pass1, audio), spec, min_coverage=PASS1_MIN_COVERAGE
        )
        if first.text or partial:
            return first
        second = judge(
            self._decode("p2:" + spec.key, pass2, audio),
            spec,
            tolerated=CARRIER_WORDS,
            min_coverage=PASS2_MIN_COVERAGE,
        )
        return second if second.text else first

    def _pronunciations(self, word: str) -> list[tuple[str, ...]]:
        found = []
        for variant in (word, *(f"{word}({i})" for i in range(2, 5))):
            phones = self._decoder.lookup_word(variant)
            if phones is None:
                break
            found.append(tuple(phones.split()))
        return found

    def _garbage_for(self, spec: GrammarSpec) -> list[str]:
        """Garbage words that cannot eat a keyword's beginning or end: a word
        sounding like the start of "invoice" ("in") would let the decoder say
        "in" + garbage instead of the keyword."""
        if spec.key in self._garbage:
            return self._garbage[spec.key]
        keys = [p for w in {w for ph in spec.phrases for w in ph} for p in self._pronunciations(w)]
        kept = []
        for word in (*CARRIER_WORDS, *GARBAGE_WORDS):
            if not self.knows(word) or any(word in phrase for phrase in spec.phrases):
                continue
            prons = self._pronunciations(word)
            if any(
                k[: len(g)] == g or k[-len(g) :] == g
                for g in prons
                for k in keys
                if len(g) < len(k)
            ):
                continue
            kept.append(word)
        if len(self._garbage) > 256:
            self._garbage.clear()
        self._garbage[spec.key] = kept
        return kept

    def _decode(
        self, key: str, build: Callable[[], tuple[int, int, list[Transition]]], audio: bytes
    ) -> list[Segment]:
        d = self._decoder
        name = self._ensure_search(key, build)
        d.activate_search(name)
        d.reinit_feat()  # forget the previous utterance's noise and CMN estimates
        d.start_utt()
        try:
            d.process_raw(audio, False, True)
        finally:
            d.end_utt()
        if d.hyp() is None:
            return []
        return [Segment(s.word, s.start_frame, s.end_frame) for s in d.seg()]

    def _ensure_search(
        self, key: str, build: Callable[[], tuple[int, int, list[Transition]]]
    ) -> str:
        if key in self._searches:
            self._searches.move_to_end(key)
            return self._searches[key]
        name = f"g{self._next_search}"
        self._next_search += 1
        start, final, transitions = build()
        fsg = self._decoder.create_fsg(name, start, final, transitions)
        self._decoder.add_fsg(name, fsg)
        self._searches[key] = name
        while len(self._searches) > self._max_grammars:
            _, old = self._searches.popitem(last=False)
            self._decoder.remove_search(old)
        return name
